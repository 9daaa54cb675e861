"""The LVM2 text metadata format: ``key = value``, ``name { ... }`` sections, ``[ ... ]`` lists.

Spec: lvmteam/lvm2 ``lib/config/config.c`` (the tokenizer and grammar shared with ``lvm.conf``)
and ``lib/format_text/export.c`` (what a volume group's metadata holds).  Values are strings
(``"..."`` with ``\\"`` and ``\\\\`` escapes), integers, floats and lists of them; ``#`` starts a
comment.  Parsed into nested dicts.  Nesting depth and list lengths are bounded, and every syntax
error names the line it is on.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

__all__ = ["MetadataSyntaxError", "parse"]

MAX_DEPTH = 16

_TOKEN = re.compile(
    r"""(?P<space>[ \t\r\n]+)|(?P<comment>\#[^\n]*)|(?P<str>"(?:[^"\\]|\\.)*")|(?P<word>[A-Za-z0-9_.+\-]+)"""
    r"""|(?P<punct>[{}\[\]=,])""",
    re.S,
)


class MetadataSyntaxError(ValueError):
    pass


def _tokens(text: str) -> Iterator[tuple[str, str, int]]:
    pos, line = 0, 1
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise MetadataSyntaxError(f"unexpected character {text[pos]!r} on line {line}")
        kind = m.lastgroup or ""
        if kind not in ("space", "comment"):
            yield kind, m.group(), line
        line += m.group().count("\n")
        pos = m.end()


class _Parser:
    """Recursive descent with one token of lookahead; tokens are produced as they are needed."""

    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.line = 0
        self.next: tuple[str, str, int] | None = None
        self._advance()

    def _advance(self) -> None:
        self.next = next(self.toks, None)
        if self.next is not None:
            self.line = self.next[2]

    def peek(self) -> tuple[str, str, int]:
        return self.next if self.next is not None else ("end", "", self.line)

    def take(self, value: str | None = None) -> tuple[str, str, int]:
        tok = self.peek()
        if tok[0] == "end" or (value is not None and tok[1] != value):
            want = repr(value) if value else "more"
            raise MetadataSyntaxError(f"expected {want} but found {tok[1]!r} on line {tok[2]}")
        self._advance()
        return tok

    def section(self, depth: int, closing: bool) -> dict[str, Any]:
        if depth > MAX_DEPTH:
            raise MetadataSyntaxError(f"sections nest deeper than {MAX_DEPTH} on line {self.peek()[2]}")
        out: dict[str, Any] = {}
        while True:
            kind, value, line = self.peek()
            if kind == "end":
                if closing:
                    raise MetadataSyntaxError("a section is not closed before the end of the text")
                return out
            if value == "}" and closing:
                self._advance()
                return out
            if kind not in ("word", "str"):
                raise MetadataSyntaxError(f"expected a name but found {value!r} on line {line}")
            self._advance()
            name = _unquote(value) if kind == "str" else value
            nxt = self.take()
            if nxt[1] == "{":
                out[name] = self.section(depth + 1, True)
            elif nxt[1] == "=":
                out[name] = self.value()
            else:
                raise MetadataSyntaxError(f"expected '=' or '{{' after {name!r} on line {nxt[2]}")

    def value(self) -> Any:
        kind, value, line = self.take()
        if kind == "str":
            return _unquote(value)
        if kind == "word":
            return _number(value, line)
        if value != "[":
            raise MetadataSyntaxError(f"expected a value but found {value!r} on line {line}")
        items: list[Any] = []
        while self.peek()[1] != "]":
            if items:
                self.take(",")
                if self.peek()[1] == "]":
                    break
            kind, value, line = self.take()
            if kind == "str":
                items.append(_unquote(value))
            elif kind == "word":
                items.append(_number(value, line))
            else:
                raise MetadataSyntaxError(f"expected a list item but found {value!r} on line {line}")
        self.take("]")
        return items


def _unquote(token: str) -> str:
    return re.sub(r"\\(.)", r"\1", token[1:-1], flags=re.S)


def _number(word: str, line: int) -> int | float:
    try:
        return int(word)
    except ValueError:
        pass
    try:
        return float(word)
    except ValueError:
        raise MetadataSyntaxError(f"{word!r} on line {line} is neither a number nor a string") from None


def parse(text: str) -> dict[str, Any]:
    """The metadata text as nested dicts; ``MetadataSyntaxError`` (a ``ValueError``) names the bad line."""
    return _Parser(text).section(0, False)
