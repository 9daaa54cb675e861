"""What wsgidav sees of a ``FileTree``: names as WebDAV shows them, path resolution, a read-only provider.

wsgidav answers OPTIONS (and authentication) through this provider; GET, HEAD and PROPFIND are answered
by ``webdav.ReadOnlyGate`` from the tree itself.  Only files and directories are served.
"""

from __future__ import annotations

import mimetypes
import posixpath
import re
from typing import Any

from wsgidav.dav_provider import DAVCollection, DAVNonCollection, DAVProvider

from ..errors import CorruptImageError, NotFoundError
from ..filesystems.tree import Entry, FileTree

SERVED_TYPES = ("file", "dir")

_NOT_XML = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")


def dav_name(name: str) -> str:
    """``name`` with characters XML cannot carry (C0 controls, DEL, lone surrogates) written as ``%XX``."""
    return _NOT_XML.sub(lambda m: f"%{ord(m.group()):02X}", name)


def resolve(tree: FileTree, path: str) -> Entry | None:
    """The entry a WebDAV path names (components as ``dav_name`` shows them), or ``None``."""
    cur = tree.stat("/")
    for comp in FileTree.normalize(path).split("/"):
        if not comp:
            continue
        if cur.type != "dir":
            return None
        try:
            cur = tree.stat(posixpath.join(cur.path, comp))
            continue
        except NotFoundError:
            pass
        found = next((e for e in tree.iterdir(cur.path) if dav_name(e.name) == comp), None)
        if found is None:
            return None
        cur = found
    return cur


class _File(DAVNonCollection):  # type: ignore[misc]
    """What wsgidav sees of a file: enough for OPTIONS (GET and PROPFIND are answered by the gate)."""

    def __init__(self, path: str, environ: dict[str, Any], entry: Entry) -> None:
        super().__init__(path, environ)
        self.entry = entry

    def get_content_length(self) -> int:
        return self.entry.size

    def get_content_type(self) -> str:
        return mimetypes.guess_type(self.entry.name)[0] or "application/octet-stream"

    def get_etag(self) -> str | None:
        return None

    def support_etag(self) -> bool:
        return False

    def support_ranges(self) -> bool:
        return True

    def get_content(self) -> Any:
        raise NotImplementedError("GET is answered by ReadOnlyGate")


class _Dir(DAVCollection):  # type: ignore[misc]
    def __init__(self, path: str, environ: dict[str, Any], entry: Entry) -> None:
        super().__init__(path, environ)
        self.entry = entry

    def get_member_names(self) -> list[str]:
        return []  # PROPFIND is answered by ReadOnlyGate, streamed


class TreeProvider(DAVProvider):  # type: ignore[misc]
    """A read-only wsgidav provider over a ``FileTree`` (for OPTIONS); only files and directories."""

    def __init__(self, tree: FileTree) -> None:
        super().__init__()
        self.tree = tree

    def is_readonly(self) -> bool:
        return True

    def get_resource_inst(self, path: str, environ: dict[str, Any]) -> Any:
        self._count_get_resource_inst += 1
        try:
            entry = resolve(self.tree, path)
        except CorruptImageError:
            return None
        if entry is None or entry.type not in SERVED_TYPES:
            return None
        return (_Dir if entry.type == "dir" else _File)(path, environ, entry)
