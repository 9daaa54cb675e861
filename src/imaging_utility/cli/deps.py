"""What to install when a Python dependency is missing: one line instead of a traceback.

Every feature's dependencies are installed with the package (``pip install imaging-utility``), so a
missing module means a partial installation (a distribution package left one out, a hand-made venv, a
standalone build missing a hidden import).  The system library libfuse3 is reported by ``serve/fuse.py``.
"""

from __future__ import annotations

# top-level module -> the PyPI distribution that provides it (Debian's python3-* packages are too old
# for the versions pyproject.toml requires, so the hint is pip's)
PYPI_NAMES = {
    "zstandard": "zstandard",
    "blake3": "blake3",
    "rich": "rich",
    "textual": "textual",
    "mfusepy": "mfusepy",
    "wsgidav": "WsgiDAV",
    "cheroot": "cheroot",
}


def missing_module_message(error: ModuleNotFoundError, command: str | None = None) -> str:
    """``No module named 'cheroot'`` → a line naming the pip package that brings it."""
    module = error.name or str(error)
    top = module.split(".")[0]
    needs = f"the '{command}' command needs" if command else "this needs"
    if top == "imaging_utility":
        return (f"{needs} the module {module}, which is missing from this installation: reinstall "
                "imaging-utility (pip install --force-reinstall imaging-utility)")
    package = ".".join(module.split(".")[:2]) if top == "dissect" else PYPI_NAMES.get(top, top)
    return (f"{needs} the Python module '{module}', which is not installed: pip install {package} "
            "(a complete installation brings every feature: pip install imaging-utility)")
