"""Virtual-disk writers over a ``BlockSource``: VHDX, VHD, qcow2, VMDK and sparse raw.

``make_writer`` validates the options for the source (one-line ``UsageError`` otherwise) and returns
the format's ``Writer``; ``Feed`` reads the source's non-zero data for it.  Each writer is ours, from
the format's specification (cited in its module; digests in ``shared/reference/``).
"""

from __future__ import annotations

from ..errors import UsageError
from .base import ExportOptions, Writer
from .feed import Feed, FeedStats, Unit
from .sink import Sink

# The names the engine takes; what each is for is said by the command line (cli/export.py).
FORMATS = ("vhdx", "vhdx-fixed", "vhd", "vhd-fixed", "qcow2", "vmdk", "vmdk-stream", "raw")

__all__ = ["FORMATS", "ExportOptions", "Feed", "FeedStats", "Sink", "Unit", "Writer", "make_writer"]


def make_writer(source_size: int, sector_size: int, opts: ExportOptions) -> Writer:
    """The writer of ``opts.format`` for a source of ``source_size`` bytes; options checked here."""
    from .qcow2 import Qcow2Writer
    from .raw import RawWriter
    from .vhd import VhdWriter
    from .vhdx import VhdxWriter
    from .vmdk import VmdkWriter

    fmt = opts.format
    if fmt not in FORMATS:
        raise UsageError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    if opts.azure and fmt not in ("vhd", "vhd-fixed"):
        raise UsageError(f"--azure makes a fixed VHD; it does not apply to --format {fmt}")
    if opts.compress and fmt != "qcow2":
        raise UsageError(f"--compress applies to qcow2 only (vmdk-stream is always compressed), not {fmt}")
    if opts.logical_sector is not None and not fmt.startswith("vhdx"):
        raise UsageError(f"--logical-sector applies to VHDX only, not to {fmt}")
    if opts.block_size is not None and fmt in ("raw", "vhd-fixed"):
        raise UsageError(f"--block-size does not apply to {fmt}")
    if fmt.startswith("vhdx"):
        return VhdxWriter(source_size, sector_size, opts, fixed=fmt == "vhdx-fixed")
    if fmt.startswith("vhd"):
        return VhdWriter(source_size, sector_size, opts, fixed=fmt == "vhd-fixed" or opts.azure)
    if fmt == "qcow2":
        return Qcow2Writer(source_size, sector_size, opts)
    if fmt.startswith("vmdk"):
        return VmdkWriter(source_size, sector_size, opts, stream=fmt == "vmdk-stream")
    return RawWriter(source_size, sector_size, opts)
