"""NBD fixed-newstyle negotiation: the greeting, then options until EXPORT_NAME, GO or ABORT.

Spec: NetworkBlockDevice/nbd ``doc/proto.md`` ("Handshake", "Option types"); digest in
``reference/nbd-protocol.md``.  Every length and count a client sends is capped (``MAX_OPTION_LENGTH``,
``MAX_OPTIONS``) before anything is allocated for it.
"""

from __future__ import annotations

import struct
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from . import c_nbd as c

if TYPE_CHECKING:
    from .server import NbdServer

MAX_OPTION_LENGTH = 64 * 1024
MAX_OPTIONS = 4096
META_CONTEXT_ID = 1


class Disconnect(Exception):
    """End this connection (EOF, protocol violation, or a reply that cannot be completed)."""


class Negotiation(ABC):
    """The handshake half of a connection; the connection supplies ``send``/``recv`` and the state below."""

    server: NbdServer
    structured: bool
    meta_export: str | None

    @abstractmethod
    def send(self, *parts: bytes | bytearray | memoryview) -> None: ...

    @abstractmethod
    def recv(self, n: int) -> bytes: ...

    def handshake(self) -> str | None:
        """Negotiate; return the export to serve, or None when the client aborted."""
        self.send(c.c_server_greeting.pack(c.NBDMAGIC, c.IHAVEOPT,
                                           c.NBD_FLAG_FIXED_NEWSTYLE | c.NBD_FLAG_NO_ZEROES))
        (cflags,) = c.c_client_flags.unpack(self.recv(4))
        if cflags & ~(c.NBD_FLAG_C_FIXED_NEWSTYLE | c.NBD_FLAG_C_NO_ZEROES):
            raise Disconnect(f"unknown client flags {cflags:#x}")
        no_zeroes = bool(cflags & c.NBD_FLAG_C_NO_ZEROES)
        for _ in range(MAX_OPTIONS):
            magic, opt, length = c.c_option.unpack(self.recv(c.c_option.size))
            if magic != c.IHAVEOPT:
                raise Disconnect(f"bad option magic {magic:#x}")
            if length > MAX_OPTION_LENGTH:
                raise Disconnect(f"option {opt} data of {length} bytes is too long")
            data = self.recv(length)
            if opt == c.NBD_OPT_EXPORT_NAME:
                export = data.decode("utf-8", "replace")
                if export not in self.server.exports:
                    raise Disconnect(f"unknown export {export!r} (EXPORT_NAME cannot report errors)")
                size = self.server.exports[export].size
                pad = b"" if no_zeroes else bytes(c.EXPORT_NAME_PADDING)
                self.send(c.c_export_name_reply.pack(size, self.server.transmission_flags(self.structured)),
                          pad)
                return export
            if opt == c.NBD_OPT_ABORT:
                try:
                    self.reply(opt, c.NBD_REP_ACK)
                except OSError:
                    pass
                return None
            name = self.option(opt, data)
            if name is not None:
                return name
        raise Disconnect("too many options")

    def reply(self, opt: int, rtype: int, data: bytes = b"") -> None:
        self.send(c.c_option_reply.pack(c.REPLY_MAGIC, opt, rtype, len(data)), data)

    def option(self, opt: int, data: bytes) -> str | None:
        """Answer one option with its final reply; returns the export name after a successful GO."""
        if opt == c.NBD_OPT_LIST:
            if data:
                self.reply(opt, c.NBD_REP_ERR_INVALID, b"LIST takes no data")
                return None
            for name in self.server.exports:
                raw = name.encode()
                self.reply(opt, c.NBD_REP_SERVER, c.c_u32.pack(len(raw)) + raw)
            self.reply(opt, c.NBD_REP_ACK)
            return None
        if opt == c.NBD_OPT_STRUCTURED_REPLY:
            if data:
                self.reply(opt, c.NBD_REP_ERR_INVALID, b"STRUCTURED_REPLY takes no data")
                return None
            self.structured = True
            self.reply(opt, c.NBD_REP_ACK)
            return None
        if opt in (c.NBD_OPT_INFO, c.NBD_OPT_GO):
            return self.info_or_go(opt, data)
        if opt in (c.NBD_OPT_LIST_META_CONTEXT, c.NBD_OPT_SET_META_CONTEXT):
            self.meta_context(opt, data)
            return None
        self.reply(opt, c.NBD_REP_ERR_UNSUP, f"option {opt} is not supported".encode())
        return None

    def info_or_go(self, opt: int, data: bytes) -> str | None:
        if len(data) < 6:
            self.reply(opt, c.NBD_REP_ERR_INVALID, b"INFO/GO data too short")
            return None
        (namelen,) = c.c_u32.unpack_from(data)
        if namelen > len(data) - 6:
            self.reply(opt, c.NBD_REP_ERR_INVALID, b"export name length out of range")
            return None
        name = data[4:4 + namelen].decode("utf-8", "replace")
        (count,) = c.c_u16.unpack_from(data, 4 + namelen)
        if len(data) != 6 + namelen + 2 * count:
            self.reply(opt, c.NBD_REP_ERR_INVALID, b"information request count does not match length")
            return None
        requests = {c.c_u16.unpack_from(data, 6 + namelen + 2 * i)[0] for i in range(count)}
        source = self.server.exports.get(name)
        if source is None:
            self.reply(opt, c.NBD_REP_ERR_UNKNOWN, f"no export named {name!r}".encode())
            return None
        flags = self.server.transmission_flags(self.structured)
        self.reply(opt, c.NBD_REP_INFO, c.c_info_export.pack(c.NBD_INFO_EXPORT, source.size, flags))
        if c.NBD_INFO_NAME in requests:
            self.reply(opt, c.NBD_REP_INFO, c.c_info_type.pack(c.NBD_INFO_NAME) + name.encode())
        description = self.server.descriptions.get(name)
        if c.NBD_INFO_DESCRIPTION in requests and description:
            self.reply(opt, c.NBD_REP_INFO, c.c_info_type.pack(c.NBD_INFO_DESCRIPTION) + description.encode())
        if c.NBD_INFO_BLOCK_SIZE in requests:
            self.reply(opt, c.NBD_REP_INFO, c.c_info_block_size.pack(
                c.NBD_INFO_BLOCK_SIZE, 1, c.PREFERRED_BLOCK, c.MAX_PAYLOAD))
        self.reply(opt, c.NBD_REP_ACK)
        return name if opt == c.NBD_OPT_GO else None

    def meta_context(self, opt: int, data: bytes) -> None:
        queries = _parse_meta_request(data)
        if queries is None:
            self.reply(opt, c.NBD_REP_ERR_INVALID, b"malformed meta context request")
            return None
        name, wanted = queries
        if opt == c.NBD_OPT_SET_META_CONTEXT and not self.structured:
            self.reply(opt, c.NBD_REP_ERR_INVALID, b"SET_META_CONTEXT needs STRUCTURED_REPLY first")
            return None
        if name not in self.server.exports:
            self.reply(opt, c.NBD_REP_ERR_UNKNOWN, f"no export named {name!r}".encode())
            return None
        if opt == c.NBD_OPT_LIST_META_CONTEXT:
            match = not wanted or any(q in (b"base:", c.BASE_ALLOCATION) for q in wanted)
        else:
            match = c.BASE_ALLOCATION in wanted
            self.meta_export = name if match else None
        if match:
            ctx_id = META_CONTEXT_ID if opt == c.NBD_OPT_SET_META_CONTEXT else 0
            self.reply(opt, c.NBD_REP_META_CONTEXT, c.c_u32.pack(ctx_id) + c.BASE_ALLOCATION)
        self.reply(opt, c.NBD_REP_ACK)
        return None


def _parse_meta_request(data: bytes) -> tuple[str, list[bytes]] | None:
    """(export name, queries) from LIST/SET_META_CONTEXT data, or None if the lengths do not add up."""
    try:
        (namelen,) = c.c_u32.unpack_from(data)
        name = data[4:4 + namelen].decode("utf-8", "replace")
        pos = 4 + namelen
        (count,) = c.c_u32.unpack_from(data, pos)
        pos += 4
        queries: list[bytes] = []
        for _ in range(count):
            (qlen,) = c.c_u32.unpack_from(data, pos)
            if pos + 4 + qlen > len(data):
                return None
            queries.append(data[pos + 4:pos + 4 + qlen])
            pos += 4 + qlen
    except struct.error:  # truncated data
        return None
    return (name, queries) if pos == len(data) and 4 + namelen <= len(data) else None
