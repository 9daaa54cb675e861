"""Fuzz the MBR (with extended chains) and GPT parsers, and the LDM database of Windows dynamic disks.

Input: a flags byte (bit 0: 4096-byte sectors; bit 1: recompute the GPT CRC-32s after patching, so
mutations get past them), ``u32`` disk size in sectors minus one, then patch
records (``_common.patches``) laid over an all-zero disk of that size (at most 64 MiB).  A dynamic disk's
database is parsed, each volume readable from the disk is read through its pieces; every disk is planned as
used-only imaging plans it (an Intel RST member's metadata at its end included), and its volumes are named
and read as ``serve-proxy`` and ``mount`` offer them.
"""

from __future__ import annotations

import logging
import struct

import atheris

with atheris.instrument_imports():
    from _common import PatchedSource, fix_gpt, fuzz_main, patches

    from imaging_utility.errors import Error
    from imaging_utility.ops.diskmap import plan_disk
    from imaging_utility.ops.volumes import named_volumes
    from imaging_utility.partitions.ldm import read_ldm
    from imaging_utility.partitions.ldm_source import LdmVolumeSource
    from imaging_utility.partitions.table import partition_source, read_partitions

MAX_SECTORS = (64 << 20) // 512


def TestOneInput(data: bytes) -> None:
    if len(data) < 5:
        return
    sector = 4096 if data[0] & 1 else 512
    size = (struct.unpack_from("<I", data, 1)[0] % MAX_SECTORS + 1) * 512
    source = PatchedSource(b"", size, patches(data[5:], size), sector)
    if data[0] & 2:
        fix_gpt(source)
    try:
        table = read_partitions(source)
        for part in table.partitions:
            part.describe()
            window = partition_source(source, part.number, table)
            window.readinto_at(0, bytearray(min(512, window.size)))
        if any(p.dynamic for p in table.partitions):
            db = read_ldm(source, table)
            for vol in db.volumes if db is not None else ():
                if vol.why_not is None:
                    volume = LdmVolumeSource(source, vol)
                    volume.readinto_at(0, bytearray(min(4096, volume.size)))
                    volume.extents(0, volume.size)
        plan_disk(source, table)
        for named in named_volumes(source, table).values():
            named.readinto_at(0, bytearray(min(512, named.size)))
    except Error:
        pass


if __name__ == "__main__":
    logging.disable(logging.WARNING)  # the servers' "not offered" lines, once per input
    fuzz_main(TestOneInput, __file__)
