"""NBD wire constants and structures (all big-endian).

Spec: NetworkBlockDevice/nbd ``doc/proto.md`` (commit 89ba7b5); digest in ``reference/nbd-protocol.md``.
"""

from __future__ import annotations

import struct

# --- handshake ------------------------------------------------------------------------------------
NBDMAGIC = 0x4E42444D41474943  # "NBDMAGIC"
IHAVEOPT = 0x49484156454F5054  # "IHAVEOPT"
REPLY_MAGIC = 0x0003E889045565A9

NBD_FLAG_FIXED_NEWSTYLE = 1 << 0
NBD_FLAG_NO_ZEROES = 1 << 1
NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0
NBD_FLAG_C_NO_ZEROES = 1 << 1

c_server_greeting = struct.Struct(">QQH")  # NBDMAGIC, IHAVEOPT, handshake flags
c_client_flags = struct.Struct(">I")
c_option = struct.Struct(">QII")  # IHAVEOPT, option, length
c_option_reply = struct.Struct(">QIII")  # REPLY_MAGIC, option, reply type, length
c_export_name_reply = struct.Struct(">QH")  # size, transmission flags (then 124 zeroes unless NO_ZEROES)
EXPORT_NAME_PADDING = 124

NBD_OPT_EXPORT_NAME = 1
NBD_OPT_ABORT = 2
NBD_OPT_LIST = 3
NBD_OPT_STARTTLS = 5
NBD_OPT_INFO = 6
NBD_OPT_GO = 7
NBD_OPT_STRUCTURED_REPLY = 8
NBD_OPT_LIST_META_CONTEXT = 9
NBD_OPT_SET_META_CONTEXT = 10

NBD_REP_ACK = 1
NBD_REP_SERVER = 2
NBD_REP_INFO = 3
NBD_REP_META_CONTEXT = 4
NBD_REP_FLAG_ERROR = 1 << 31
NBD_REP_ERR_UNSUP = NBD_REP_FLAG_ERROR | 1
NBD_REP_ERR_POLICY = NBD_REP_FLAG_ERROR | 2
NBD_REP_ERR_INVALID = NBD_REP_FLAG_ERROR | 3
NBD_REP_ERR_PLATFORM = NBD_REP_FLAG_ERROR | 4
NBD_REP_ERR_TLS_REQD = NBD_REP_FLAG_ERROR | 5
NBD_REP_ERR_UNKNOWN = NBD_REP_FLAG_ERROR | 6
NBD_REP_ERR_SHUTDOWN = NBD_REP_FLAG_ERROR | 7
NBD_REP_ERR_BLOCK_SIZE_REQD = NBD_REP_FLAG_ERROR | 8
NBD_REP_ERR_TOO_BIG = NBD_REP_FLAG_ERROR | 9

NBD_INFO_EXPORT = 0
NBD_INFO_NAME = 1
NBD_INFO_DESCRIPTION = 2
NBD_INFO_BLOCK_SIZE = 3
c_info_export = struct.Struct(">HQH")  # NBD_INFO_EXPORT, size, transmission flags
c_info_block_size = struct.Struct(">HIII")  # NBD_INFO_BLOCK_SIZE, minimum, preferred, maximum
c_info_type = struct.Struct(">H")
c_u16 = struct.Struct(">H")
c_u32 = struct.Struct(">I")

# --- transmission flags ---------------------------------------------------------------------------
NBD_FLAG_HAS_FLAGS = 1 << 0
NBD_FLAG_READ_ONLY = 1 << 1
NBD_FLAG_SEND_FLUSH = 1 << 2
NBD_FLAG_SEND_FUA = 1 << 3
NBD_FLAG_ROTATIONAL = 1 << 4
NBD_FLAG_SEND_TRIM = 1 << 5
NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6
NBD_FLAG_SEND_DF = 1 << 7
NBD_FLAG_CAN_MULTI_CONN = 1 << 8
NBD_FLAG_SEND_RESIZE = 1 << 9
NBD_FLAG_SEND_CACHE = 1 << 10
NBD_FLAG_SEND_FAST_ZERO = 1 << 11

# --- requests and replies -------------------------------------------------------------------------
NBD_REQUEST_MAGIC = 0x25609513
NBD_SIMPLE_REPLY_MAGIC = 0x67446698
NBD_STRUCTURED_REPLY_MAGIC = 0x668E33EF
c_request = struct.Struct(">IHHQQI")  # magic, command flags, type, cookie, offset, length
c_simple_reply = struct.Struct(">IIQ")  # magic, error, cookie
c_structured_reply = struct.Struct(">IHHQI")  # magic, flags, type, cookie, payload length

NBD_CMD_READ = 0
NBD_CMD_WRITE = 1
NBD_CMD_DISC = 2
NBD_CMD_FLUSH = 3
NBD_CMD_TRIM = 4
NBD_CMD_CACHE = 5
NBD_CMD_WRITE_ZEROES = 6
NBD_CMD_BLOCK_STATUS = 7

NBD_CMD_FLAG_FUA = 1 << 0
NBD_CMD_FLAG_NO_HOLE = 1 << 1
NBD_CMD_FLAG_DF = 1 << 2
NBD_CMD_FLAG_REQ_ONE = 1 << 3
NBD_CMD_FLAG_FAST_ZERO = 1 << 4

NBD_REPLY_FLAG_DONE = 1 << 0
NBD_REPLY_TYPE_NONE = 0
NBD_REPLY_TYPE_OFFSET_DATA = 1
NBD_REPLY_TYPE_OFFSET_HOLE = 2
NBD_REPLY_TYPE_BLOCK_STATUS = 5
NBD_REPLY_TYPE_ERROR = (1 << 15) | 1
NBD_REPLY_TYPE_ERROR_OFFSET = (1 << 15) | 2
c_offset = struct.Struct(">Q")  # OFFSET_DATA prefix
c_offset_hole = struct.Struct(">QI")  # offset, hole size
c_error_chunk = struct.Struct(">IH")  # error, message length (then message)
c_block_status_extent = struct.Struct(">II")  # extent length, status flags (after a u32 context id)

NBD_STATE_HOLE = 1 << 0
NBD_STATE_ZERO = 1 << 1
BASE_ALLOCATION = b"base:allocation"

# errno values on the wire (fixed by the spec, not the host's errno)
NBD_EPERM = 1
NBD_EIO = 5
NBD_ENOMEM = 12
NBD_EINVAL = 22
NBD_ENOSPC = 28
NBD_EOVERFLOW = 75
NBD_ENOTSUP = 95
NBD_ESHUTDOWN = 108

# --- limits ---------------------------------------------------------------------------------------
MAX_PAYLOAD = 32 * 1024 * 1024  # largest READ served; advertised as the block-size maximum
PREFERRED_BLOCK = 4096
MAX_EXTENT = 0xFFFFFFFF & ~0xFFF  # u32 extent length, kept 4 KiB aligned
