"""imaging-utility: compressed, verifiable, random-access, resumable disk images."""

from __future__ import annotations

__version__ = "0.1.0"
