"""Read-only NBD server (``server.py``) over the wire structures in ``c_nbd.py``."""

from __future__ import annotations

from .server import NbdServer

__all__ = ["NbdServer"]
