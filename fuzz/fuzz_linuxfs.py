"""Fuzz the XFS (v5 and v4), Btrfs, LVM2, Linux swap and MD member parsers: allocation maps and file trees.

Input: a byte choosing a real volume from ``fuzz/bases`` (``linuxfs.txt``; bit 7: recompute the
checksums the parsers check after patching — the XFS superblock, AGFs and free-space B+tree blocks,
Btrfs superblocks and tree blocks, the LVM2 label, metadata-area headers and metadata text, an MD
superblock; inside an MD member only its superblock's), a byte
choosing its length (0-127: whole; 128-255: cut to that many 128ths), then patch records
``u32 offset, u8 length - 1, bytes`` laid over it.  These volumes are mostly empty, so an offset with
bit 31 set lands in one of the base's metadata blocks (bits 16-30 choose the block, bits 0-11 the place
in it): every 4 KiB block in use that is neither zero nor file data written by ``make_seeds.py``.  Each
input maps the volume's allocation (used-only imaging, LVs included) and walks its trees as
``ls``/``extract`` do: the default Btrfs subvolume and the top one, every LV's filesystem; list every
directory, open and read every file, up to a bound.
"""

from __future__ import annotations

import functools
import itertools
import struct

import atheris

with atheris.instrument_imports():
    from _common import BASES, PatchedSource, _read, fuzz_main, walk_files

    from imaging_utility.crc32c import crc32c
    from imaging_utility.errors import Error
    from imaging_utility.filesystems import allocation_map, btrfs, lvm, tree_btrfs, tree_xfs, xfs  # noqa: F401
    from imaging_utility.filesystems.c_lvm import calc_crc
    from imaging_utility.filesystems.lvm_source import logical_volumes
    from imaging_utility.filesystems.tree import open_tree

import zstandard

NAMES = (BASES / "linuxfs.txt").read_text().split()
MAX_LVS = 4
XFS_AB3B = b"AB3B"
XFS_SBLOCK_CRC = 52
BTRFS_SUPERS = (64 << 10, 64 << 20)


@functools.cache
def base_image(name: str) -> bytes:
    return zstandard.ZstdDecompressor().decompress((BASES / f"{name}.zst").read_bytes(),
                                                    max_output_size=128 << 20)


@functools.cache
def _hot(name: str) -> tuple[int, ...]:
    """Offsets of the base's 4 KiB blocks that hold metadata: in use (by its allocation map), neither zero
    nor the seed files' bytes."""
    raw = base_image(name)
    zero, filler = bytes(4096), b"f" * 4096
    used = {o for e in allocation_map(PatchedSource(raw, len(raw), []))[1]
            for o in range(e.offset // 4096 * 4096, e.offset + e.length, 4096)}
    return tuple(o for o in sorted(used)
                 if raw[o : o + 4096] not in (zero, filler) and b" fuzz seed file " not in raw[o : o + 4096])


def patches(name: str, data: bytes, size: int) -> list[tuple[int, bytes]]:
    hot = _hot(name)
    out = []
    pos = 0
    while pos + 5 <= len(data) and size:
        off, n = struct.unpack_from("<IB", data, pos)
        pos += 5
        if off >> 31 and hot:
            off = hot[(off >> 16 & 0x7FFF) % len(hot)] + (off & 0xFFF)
        out.append((off % size, data[pos : pos + n + 1]))
        pos += n + 1
    return out


@functools.cache
def _blocks(name: str) -> tuple[int, tuple[int, ...]]:
    """The block size and the offsets of the base's checksummed blocks: XFS free-space B+tree blocks, or
    Btrfs tree blocks (by their filesystem id), found once by a scan."""
    raw = base_image(name)
    if raw[:4] == b"XFSB":
        bs = struct.unpack_from(">I", raw, 4)[0]
        return bs, tuple(o for o in range(0, len(raw), bs) if raw[o : o + 4] == XFS_AB3B)
    sb = BTRFS_SUPERS[0]
    if raw[sb + 64 : sb + 72] == b"_BHRfS_M":
        fsid, nodesize = raw[sb + 32 : sb + 48], struct.unpack_from("<I", raw, sb + 148)[0]
        return nodesize, tuple(o for o in range(0, len(raw) - nodesize + 1, 4096)
                               if raw[o + 32 : o + 48] == fsid and o not in BTRFS_SUPERS)
    return 0, ()


def _touched(source: PatchedSource, offset: int, n: int) -> bool:
    return any(o < offset + n and offset < o + len(p) for o, p in source._patches)


def _set_crc32c(source: PatchedSource, offset: int, n: int, crc_at: int, xfs_style: bool) -> None:
    if offset + n > source.size:
        return
    data = bytearray(_read(source, offset, n))
    if xfs_style:  # over the whole buffer with the field zeroed
        data[crc_at : crc_at + 4] = bytes(4)
        crc = crc32c(bytes(data))
    else:  # Btrfs: over everything after the 32-byte checksum field
        crc = crc32c(bytes(data[32:]))
    source.add_patch(offset + crc_at, crc.to_bytes(4, "little"))


def fix_xfs(name: str, source: PatchedSource) -> None:
    head = _read(source, 0, 512)
    if head[:4] != b"XFSB" or struct.unpack_from(">H", head, 100)[0] & 0xF != 5:
        return
    bs, agblocks, agcount = struct.unpack_from(">I", head, 4)[0], *struct.unpack_from(">II", head, 84)
    sect = struct.unpack_from(">H", head, 102)[0]
    if not (bs and sect in (512, 1024, 2048, 4096)):
        return
    base_bs, nodes = _blocks(name)
    for off in nodes:
        if _touched(source, off, base_bs):
            _set_crc32c(source, off, base_bs, XFS_SBLOCK_CRC, True)
    for ag in range(min(agcount, 64)):
        _set_crc32c(source, ag * agblocks * bs + sect, sect, 216, True)  # AGF
    _set_crc32c(source, 0, sect, 224, True)  # the superblock last: its fields may have moved the AGFs


def fix_btrfs(name: str, source: PatchedSource) -> None:
    nodesize, nodes = _blocks(name)
    for off in nodes:
        if _touched(source, off, nodesize):
            _set_crc32c(source, off, nodesize, 0, False)
    for off in BTRFS_SUPERS:
        _set_crc32c(source, off, 4096, 0, False)


def fix_lvm(source: PatchedSource) -> None:
    for sector in range(4):
        sec = bytearray(_read(source, sector * 512, 512))
        if sec[:8] == b"LABELONE":
            break
    else:
        return
    pvh = struct.unpack_from("<I", sec, 20)[0]
    if not 32 <= pvh <= 512 - 40:
        return
    pos, lists = pvh + 40, []
    for _ in range(2):  # the data areas, then the metadata areas, each list ended by a zero pair
        areas = []
        while pos + 16 <= 512:
            off, size = struct.unpack_from("<QQ", sec, pos)
            pos += 16
            if not off and not size:
                break
            areas.append(off)
        lists.append(areas)
    for off in lists[1][:4]:
        if off + 512 > source.size:
            continue
        hdr = bytearray(_read(source, off, 512))
        if hdr[4:20] != b" LVM2 x[5A%r0N*>":
            continue
        rel, length = struct.unpack_from("<QQ", hdr, 40)
        if 0 < length <= 1 << 20 and off + rel + length <= source.size:
            struct.pack_into("<I", hdr, 56, calc_crc(_read(source, off + rel, length)))
        struct.pack_into("<I", hdr, 0, calc_crc(bytes(hdr[4:])))
        source.add_patch(off, bytes(hdr))
    struct.pack_into("<I", sec, 16, calc_crc(bytes(sec[20:])))
    source.add_patch(sector * 512, bytes(sec))


def fix_md(source: PatchedSource) -> None:
    for at in (4096, 0, ((source.size // 512 - 16) & ~7) * 512):
        if at < 0 or at + 256 > source.size:
            continue
        sb = bytearray(_read(source, at, 256))
        if struct.unpack_from("<II", sb) != (0xA92B4EFC, 1):
            continue
        length = min(256 + 2 * struct.unpack_from("<I", sb, 220)[0], 4096, source.size - at)
        sb = bytearray(_read(source, at, length))
        sb[216:220] = bytes(4)
        total = sum(struct.unpack_from(f"<{length // 4}I", sb)) + (sb[-2] | sb[-1] << 8 if length % 4 else 0)
        source.add_patch(at + 216, (((total & 0xFFFFFFFF) + (total >> 32)) & 0xFFFFFFFF).to_bytes(4, "little"))
        return


def _walk(source: PatchedSource, subvolume: str | None = None, data_sums: bool = True) -> None:
    tree = open_tree(source, subvolume)
    if not data_sums:  # as if the damage had its data checksums rewritten: the decoders behind them are reached
        tree.backend.sums = None
    walk_files(tree)


def _try(fn: object, *args: object) -> None:
    try:
        fn(*args)  # type: ignore[operator]
    except Error:
        pass


def TestOneInput(data: bytes) -> None:
    if len(data) < 2:
        return
    name = NAMES[(data[0] & 0x7F) % len(NAMES)]
    base = base_image(name)
    size = len(base) if data[1] < 128 else len(base) * (data[1] - 127) // 128
    source = PatchedSource(base, size, patches(name, data[2:], size))
    if data[0] & 0x80:
        if name.startswith("xfs"):
            fix_xfs(name, source)
        elif name.startswith("btrfs"):
            fix_btrfs(name, source)
        elif name == "lvm":
            fix_lvm(source)
        elif name.startswith("md"):
            fix_md(source)
    _try(allocation_map, source)
    if name.endswith("lvm"):
        try:
            lvs = logical_volumes(source)
        except Error:
            return
        for lv in itertools.islice(lvs.values(), MAX_LVS):
            _try(_walk, lv)
    elif name != "swap":
        fixed = bool(data[0] & 0x80)
        _try(_walk, source, None, not fixed)
        if name.startswith("btrfs"):
            _try(_walk, source, "5", not fixed)


if __name__ == "__main__":
    fuzz_main(TestOneInput, __file__)
