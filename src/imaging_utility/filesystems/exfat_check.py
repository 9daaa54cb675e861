"""Do an exFAT volume's directories agree with its Allocation Bitmap?  The exFAT counterpart of
``fat_check``: a stream whose clusters the bitmap marks free holds data a used-only image would drop.

Every directory is walked once (by its first cluster) from the root.  For each entry set in use (a File
entry, its Stream Extension, its File Name entries; spec §6.3, §7.4–§7.7) whose stream has clusters
(AllocationPossible, a DataLength), and for each other secondary entry of the set with an allocation
of its own (Vendor Allocation, §7.9), every cluster must be marked in use: a NoFatChain stream's run, or
each cluster of a chained stream's FAT chain (exFAT writers chain only fragmented files, so this follows
few chains).  A chain or directory that cannot be read (out of the volume, a directory over 256 MiB)
refuses the volume as other damage does.  An entry set without
its Stream Extension is skipped, as readers skip it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator

from ..blocks import BlockSource, read_at
from .exfat import DIR_ENTRY_SIZE, ENTRY_END, MAX_ROOT_BYTES, ExfatBoot, _fail, _Volume, entry_sets

ENTRY_STREAM = 0xC0
ENTRY_NAME = 0xC1
ATTR_DIRECTORY = 0x10
SECONDARY = -1  # in place of a File entry's attributes: the allocation of another secondary entry of the set
ALLOCATION_POSSIBLE = 0x01
NO_FAT_CHAIN = 0x02
STREAM = struct.Struct("<BBxB16xIQ")  # EntryType, GeneralSecondaryFlags, NameLength, FirstCluster, DataLength
Dir = tuple[int, int, bool]  # first cluster, DataLength, NoFatChain


def unmapped_stream(source: BlockSource, boot: ExfatBoot, covered: Callable[[int, int], bool]) -> str | None:
    """``None`` when every stream's clusters are in use as far as checked, else which file is not.
    ``covered(first, end)``: whether clusters ``[first, end)`` are all marked used."""
    vol = _Volume(source, boot)
    stack: list[tuple[str, Dir | None]] = [("", None)]  # None: the root
    seen: set[int] = set()
    limit = boot.cluster_count + 2
    while stack:
        path, where = stack.pop()
        entries = (raw for _off, _t, raw in vol.root_entries()) if where is None else _entries(vol, path, *where)
        for name, attributes, flags, first, length in _entry_sets(entries):
            child = f"{path}/{name}"
            if not flags & ALLOCATION_POSSIBLE or not length or not 2 <= first < limit:
                continue  # no clusters, or none inside the volume
            if flags & NO_FAT_CHAIN:
                runs = [(first, min(first + -(-length // boot.cluster_size), limit))]
            else:
                runs = [(boot.cluster_of(off), boot.cluster_of(off) + n // boot.cluster_size)
                        for off, n in vol.extents(first, length, f"file {child}")]
            if not all(covered(lo, hi) for lo, hi in runs):
                kind = ("entry set of" if attributes == SECONDARY
                        else "directory" if attributes & ATTR_DIRECTORY else "file")
                return (f"its {kind} {child} has clusters from {first} that the Allocation Bitmap marks free "
                        "(written without its bitmap, or damaged; run fsck.exfat)")
            if attributes != SECONDARY and attributes & ATTR_DIRECTORY and first not in seen:
                seen.add(first)
                stack.append((child, (first, length, bool(flags & NO_FAT_CHAIN))))
    return None


def _entries(vol: _Volume, path: str, first: int, length: int, contiguous: bool) -> Iterator[bytes]:
    """The 32-byte entries of a subdirectory, up to its end marker."""
    boot = vol.boot
    if length > MAX_ROOT_BYTES:
        raise _fail(f"its directory {path} claims {length} bytes (at most {MAX_ROOT_BYTES})")
    what = f"directory {path}"
    if contiguous:
        if first - 2 + -(-length // boot.cluster_size) > boot.cluster_count:
            raise _fail(f"the {what} runs past the cluster heap")
        extents = [(boot.cluster_offset(first), length)]
    else:
        extents = vol.extents(first, length, what)
    for off, n in extents:
        if off + n > vol.source.size:
            return  # a truncated source: the map refuses the volume itself, naming where it ends
        data = read_at(vol.source, off, n)
        for pos in range(0, n - DIR_ENTRY_SIZE + 1, DIR_ENTRY_SIZE):
            if data[pos] == ENTRY_END:
                return
            yield data[pos : pos + DIR_ENTRY_SIZE]


def _entry_sets(entries: Iterator[bytes]) -> Iterator[tuple[str, int, int, int, int]]:
    """``(name, attributes, stream flags, first cluster, data length)`` of each whole File entry set in use
    (``exfat.entry_sets``; a set cut short is skipped, as readers skip it)."""
    for _at, data in entry_sets(enumerate(entries)):
        if len(data) == DIR_ENTRY_SIZE * (data[1] + 1):
            yield from _one_set([data[i : i + DIR_ENTRY_SIZE] for i in range(0, len(data), DIR_ENTRY_SIZE)])


def _one_set(entries: list[bytes]) -> Iterator[tuple[str, int, int, int, int]]:
    """The stream, then every other secondary entry with an allocation of its own (a Vendor Allocation
    entry, 0xE1, or any benign secondary with AllocationPossible set: spec §6.4.2, the generic template's
    FirstCluster and DataLength); those are named ``NAME [entry 0xE1]``, with ``SECONDARY`` as attributes."""
    if len(entries) < 2 or entries[1][0] != ENTRY_STREAM:
        return
    attributes = int.from_bytes(entries[0][4:6], "little")
    _t, flags, name_length, first, length = STREAM.unpack(entries[1])
    name = b"".join(e[2:32] for e in entries[2:] if e[0] == ENTRY_NAME)[: 2 * name_length]
    text = name.decode("utf-16-le", "replace")
    yield text, attributes, flags, first, length
    for raw in entries[2:]:
        kind, flags, _n, first, length = STREAM.unpack(raw)
        if kind != ENTRY_NAME and flags & ALLOCATION_POSSIBLE:
            yield f"{text} [entry {kind:#04x}]", SECONDARY, flags, first, length
