"""imaging-utility: compressed, verifiable, random-access, resumable disk images."""

from __future__ import annotations

try:  # written by setuptools-scm from the git tags when the package is built or installed
    from ._version import __version__ as __version__
except ImportError:  # a source tree that was never built or installed
    __version__ = "0.2.0.dev0+unknown"
