"""Fuzz the NTFS, ext2/3/4, FAT12/16/32 and exFAT parsers: allocation maps and file trees.

Input: a byte choosing a real volume from ``fuzz/bases`` (``filesystems.txt``; bit 7: recompute the
exFAT boot checksum and ext4 descriptor checksums after patching), a byte choosing its
length (0-127: whole; 128-255: cut to that many 128ths), then patch records (``_common.patches``)
laid over it.  Each input maps the volume's allocation (used-only imaging) and walks its tree as
``ls``/``extract`` do: list every directory, open and read
every file and stream, up to a bound.
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports():
    from _common import BASES, PatchedSource, base_image, fix_filesystem, fuzz_main, patches, walk_files

    from imaging_utility.errors import Error
    from imaging_utility.filesystems import allocation_map, tree_ext, tree_fat, tree_ntfs  # noqa: F401  (imported lazily)
    from imaging_utility.filesystems.tree import open_tree

NAMES = (BASES / "filesystems.txt").read_text().split()


def TestOneInput(data: bytes) -> None:
    if len(data) < 2:
        return
    base = base_image(NAMES[(data[0] & 0x7F) % len(NAMES)])
    size = len(base) if data[1] < 128 else len(base) * (data[1] - 127) // 128
    source = PatchedSource(base, size, patches(data[2:], size))
    if data[0] & 0x80:
        fix_filesystem(source)
    try:
        allocation_map(source)
    except Error:
        pass
    try:
        walk_files(open_tree(source))
    except Error:
        pass


if __name__ == "__main__":
    fuzz_main(TestOneInput, __file__)
