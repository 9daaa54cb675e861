"""The command line's parser: every command module's ``register``, argparse tuned for a fast start.

Each command lives in its own module with ``register(subparsers, parent)`` and ``run(args) -> int``;
``COMMANDS`` lists them in ``--help`` order.  Building the parser imports every command module, so a
command module imports at its top only what its arguments need (argparse, ``errors``, ``output``) and
everything else inside ``run``, so that ``--help`` loads no dependency
(tests/release/test_release_version.py checks it).  The man page and the shell completions are generated
from this parser (``docgen.py``).
"""

from __future__ import annotations

import argparse
import difflib
import functools
import importlib
import shutil
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from ..errors import EXIT_USAGE
from ._source_args import rewrite_set_dir

COMMANDS = ["image", "backup_disk", "info", "verify", "restore", "export", "ls", "extract", "serve", "mount",
            "webdav", "gui", "completion"]



# Options of the original Windows tool, which took everything as options.
_ORIGINAL_OPTIONS = {
    "--in": "the image is the first argument here (e.g. 'imaging-utility ls IMAGE PATH')",
    "--out": "the destination is the last argument here (e.g. 'imaging-utility image SOURCE DEST')",
    "--out-dir": "the destination is the last argument here (e.g. 'imaging-utility extract IMAGE PATH DEST')",
    "--path": "paths inside the image are arguments here (e.g. 'imaging-utility extract IMAGE /Users/ann DEST')",
    "--device": "the device is the first argument here (e.g. 'imaging-utility image /dev/sdb sdb.img.zst')",
    "--all-blocks": "every byte is imaged unless --used-only is given",
}


# argparse asks gettext for its headings each time a parser is made, and gettext searches the locale
# directories afresh on every call: 300 searches for our 100 parsers, about 10 ms of every start-up.  The
# message catalogue cannot change during a run, so each message is looked up once.
setattr(argparse, "_", functools.lru_cache(maxsize=256)(vars(argparse)["_"]))  # noqa: B010  (not in the stubs)


@functools.cache
def _help_width() -> int:
    """What argparse's formatter computes on each of the ~1,100 times a parser build creates one."""
    return shutil.get_terminal_size().columns - 2


class _Parser(argparse.ArgumentParser):
    def _get_formatter(self) -> argparse.HelpFormatter:
        return self.formatter_class(prog=self.prog, width=_help_width())  # type: ignore[call-arg]

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {self._explain(message)}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)

    def _explain(self, message: str) -> str:
        """argparse's message, with a suggestion for a mistyped option."""
        if not message.startswith("unrecognized arguments: "):
            return message
        words = message.removeprefix("unrecognized arguments: ").split()
        option = next((w.split("=", 1)[0] for w in words if w.startswith("-") and w != "-"), None)
        if option is None:
            return f"unexpected argument(s): {' '.join(words)}"
        if option in _ORIGINAL_OPTIONS:
            return f"unknown option {option}: {_ORIGINAL_OPTIONS[option]}"
        close = difflib.get_close_matches(option, list(self._option_string_actions), n=2, cutoff=0.7)
        if close:
            return f"unknown option {option}; did you mean {' or '.join(close)}?"
        return f"unknown option {option} (see '{self.prog} --help')"


def common_options() -> argparse.ArgumentParser:
    """Options every command takes (``--verbose``, ``--log-file``)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("-v", "--verbose", action="store_true", help="tracebacks and debug log on stderr")
    p.add_argument("--log-file", metavar="PATH", help="append a debug log to PATH")
    s3 = p.add_argument_group("s3:// images (credentials from AWS_* variables or ~/.aws/credentials)")
    s3.add_argument("--profile", metavar="NAME", help="AWS profile of ~/.aws/credentials and ~/.aws/config")
    s3.add_argument("--endpoint-url", metavar="URL",
                    help="S3 endpoint, e.g. http://127.0.0.1:8333 (default: AWS_ENDPOINT_URL or AWS)")
    return p


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, ModuleType]]:
    parser = _Parser(
        prog="imaging-utility",
        description="Compressed, verifiable, random-access, resumable disk images.",
        epilog="Run 'imaging-utility COMMAND --help' for a command's options and examples. "
               "Options may come before or after the arguments.",
    )
    parser.add_argument("--version", action=VersionAction,
                        help="print the version of the tool, the image format, zstd and Python, then exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="tracebacks and debug log on stderr")
    parser.add_argument("--log-file", metavar="PATH", help="append a debug log to PATH")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    modules: dict[str, ModuleType] = {}
    parent = common_options()
    for name in COMMANDS:
        mod = importlib.import_module(f".{name}", __package__)
        for cmd in mod.register(sub, parent):
            modules[cmd] = mod
    return parser, modules


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Each command's own parser, by name."""
    for action in parser._actions:  # argparse offers no public accessor
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def parse(argv: list[str]) -> tuple[argparse.Namespace, ModuleType]:
    """``argv`` → (arguments, command module).  Options before the command are the global ones
    (``-v``, ``--log-file``, ``--version``, ``--help``); a command takes its options and arguments in
    any order.  Usage errors exit 2 with the usage of the command they concern."""
    parser, modules = build_parser()
    commands = _commands(parser)
    argv = rewrite_set_dir(argv, commands)
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "-":
        i += 2 if argv[i] == "--log-file" else 1
    top = parser.parse_args(argv[:i])
    if i >= len(argv):
        parser.error("give a COMMAND (see 'imaging-utility --help')")
    name, rest = argv[i], argv[i + 1 :]
    if name not in commands:
        parser.error(unknown_command(name, list(commands)))
    args = commands[name].parse_intermixed_args(rest)
    args.command = name
    args.verbose = bool(getattr(args, "verbose", False) or top.verbose)
    args.log_file = getattr(args, "log_file", None) or top.log_file
    return args, modules[name]


def unknown_command(name: str, commands: list[str]) -> str:
    """The error for an unknown command: where the original tool's name went, or the close matches."""
    from .original import pointer

    hint = pointer(name, commands)
    if hint:
        return f"'{name}' is a command of the original Windows tool; here: {hint}"
    close = difflib.get_close_matches(name, commands, n=3, cutoff=0.5)
    if close:
        return f"unknown command '{name}'; did you mean {' or '.join(close)}?"
    return f"unknown command '{name}'; the commands are: {', '.join(commands)}"


class VersionAction(argparse.Action):
    """Like argparse's ``version`` action, but computes the lines (importing zstandard) only when given."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        from .version import version_lines

        sys.stdout.write("\n".join(version_lines()) + "\n")
        parser.exit()
