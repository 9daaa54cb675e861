"""Terminal GUI (Textual): a consumer of progress events, like the CLI bar and ``--json`` (DESIGN §8)."""
