"""Sizes as people write them and read them: ``parse_size("4G")``, ``human_bytes(1536)``."""

from __future__ import annotations

import re

from .errors import UsageError

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtpe]?)(i?b?)\s*$", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}


def parse_size(text: str, what: str = "size") -> int:
    """``"4G"``, ``"4GiB"``, ``"650M"``, ``"1.5T"``, ``"4096"`` → bytes.  K/M/G/T/P are powers of 1024
    (with or without ``iB``); ``kB``/``MB``/``GB``/``TB`` are powers of 1000."""
    m = _SIZE_RE.match(text)
    if not m:
        raise UsageError(f"invalid {what} {text!r}: use a number with an optional K/M/G/T suffix, e.g. 4G")
    number, unit, suffix = m.groups()
    decimal = suffix.lower() == "b" and unit != ""
    value = float(number) * (1000 if decimal else 1024) ** _POWERS[unit.lower()]
    if value != int(value):
        raise UsageError(f"invalid {what} {text!r}: not a whole number of bytes")
    return int(value)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} PiB"


def format_size(n: int) -> str:
    """The shortest spelling ``parse_size`` reads back as exactly ``n``: ``1048576`` → ``"1M"``."""
    for unit, power in (("T", 4), ("G", 3), ("M", 2), ("K", 1)):
        if n and n % 1024**power == 0:
            return f"{n // 1024**power}{unit}"
    return str(n)
