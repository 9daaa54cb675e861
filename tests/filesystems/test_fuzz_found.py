"""Inputs the fuzz harnesses found (fuzz/crashes/filesystems), rebuilt from real volumes: each must end
in one line and a documented exit code, never a traceback or a hang."""

from __future__ import annotations

import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import need_tools
from imagetools import run_cli


def test_exfat_root_chain_that_loops_is_an_error_not_a_hang(tmp_path: Path) -> None:
    need_tools("mkfs.exfat")
    vol = tmp_path / "exfat.raw"
    vol.write_bytes(bytes(8 << 20))
    subprocess.run(["mkfs.exfat", str(vol)], check=True, capture_output=True)
    raw = bytearray(vol.read_bytes())
    fat_offset, _, _, _, root = struct.unpack_from("<IIIII", raw, 80)
    bps = 1 << raw[108]
    struct.pack_into("<I", raw, fat_offset * bps + 4 * root, root)  # the root's chain points to itself
    vol.write_bytes(raw)
    started = time.monotonic()
    code, _, err = run_cli("ls", vol)
    assert code == 8 and "exfat root directory: cluster chain loops" in err and len(err.strip().splitlines()) == 1
    assert time.monotonic() - started < 60


def test_file_whose_data_lies_past_a_truncated_volume_is_reported(tmp_path: Path) -> None:
    need_tools("mkfs.fat", "mcopy")
    vol = tmp_path / "fat.raw"
    subprocess.run(["mkfs.fat", "-C", "-F", "12", str(vol), "2048"], check=True, capture_output=True)
    (tmp_path / "small.txt").write_bytes(b"kept\n")
    (tmp_path / "big.bin").write_bytes(bytes(range(256)) * 4000)
    for name in ("small.txt", "big.bin"):
        subprocess.run(["mcopy", "-i", str(vol), str(tmp_path / name), f"::{name.upper()}"], check=True)
    with open(vol, "r+b") as fh:
        fh.truncate(200 * 1024)  # the FAT and root survive, most of BIG.BIN's clusters do not
    code, _, err = run_cli("extract", vol, "/", tmp_path / "out")
    assert code == 3, err
    assert "BIG.BIN" in err.upper() and "outside the volume" in err and "Traceback" not in err
    assert (tmp_path / "out" / "SMALL.TXT").read_bytes() == b"kept\n"


def test_ext_claiming_far_more_groups_than_the_source_holds_fails_at_once(tmp_path: Path) -> None:
    need_tools("mkfs.ext4")
    vol = tmp_path / "ext.raw"
    vol.write_bytes(bytes(4 << 20))
    subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "1024", "-O", "^metadata_csum,^64bit", str(vol)],
                   check=True, capture_output=True)
    with open(vol, "r+b") as f:
        f.seek(1024 + 4)  # s_blocks_count_lo: 4 GiB of 1 KiB blocks
        f.write(struct.pack("<I", 4 << 20))
        f.seek(1024 + 32)  # s_blocks_per_group 8: 524,288 groups in 16,384 descriptor blocks
        f.write(struct.pack("<I", 8))
    for command in (["ls", vol], ["image", "--used-only", vol, tmp_path / "x.img.zst"]):
        started = time.monotonic()
        code, _, err = run_cli(*command)
        assert code == 4 and "past the end of the source" in err and len(err.strip().splitlines()) == 1, err
        assert time.monotonic() - started < 30


def test_ntfs_attribute_that_dissect_reads_whole_is_bounded(tmp_path: Path) -> None:
    """The $MFT record's $STANDARD_INFORMATION made non-resident and sparse, claiming 2**61 bytes: dissect
    read it whole (9.9 GB and 20 s for the fuzz input).  Now it is refused before a byte is read: one line,
    under a 1 GiB address-space limit, and used-only imaging (which does not need it) is unaffected."""
    import resource
    import sys

    need_tools("mkntfs")
    vol = tmp_path / "ntfs.raw"
    vol.write_bytes(bytes(16 << 20))
    subprocess.run(["mkntfs", "-F", "-Q", "-q", str(vol)], check=True, capture_output=True)
    raw = bytearray(vol.read_bytes())
    cluster = struct.unpack_from("<H", raw, 11)[0] * raw[13]
    mft = struct.unpack_from("<Q", raw, 48)[0] * cluster
    at = mft + struct.unpack_from("<H", raw, mft + 20)[0]  # the first attribute: $STANDARD_INFORMATION
    assert struct.unpack_from("<II", raw, at) == (0x10, 0x60)
    huge = 1 << 61
    struct.pack_into("<IIBBHHH", raw, at, 0x10, 0x60, 1, 0, 0x40, 0, 0)  # non-resident, runlist at 0x40
    struct.pack_into("<QQHH4xQQQ", raw, at + 0x10, 0, huge // cluster - 1, 0x40, 0, huge, huge, huge)
    raw[at + 0x40 : at + 0x4A] = bytes([0x08]) + (huge // cluster).to_bytes(8, "little") + b"\0"  # one sparse run
    vol.write_bytes(raw)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "imaging_utility", "ls", str(vol)], capture_output=True,
                          text=True, preexec_fn=limit, timeout=120)
    assert proc.returncode == 8, proc.stderr
    assert proc.stderr.count("\n") == 1 and "the $STANDARD_INFORMATION of an MFT record claims" in proc.stderr
    assert time.monotonic() - started < 60
    code, _, err = run_cli("image", "--used-only", vol, tmp_path / "x.img")
    assert code == 0, err



def _edit_root_index_buffer(vol: Path, edit: Callable[[bytearray, int, int], None], torn: bool = False) -> None:
    """Apply ``edit(raw, block, first_entry)`` to the first index buffer of a fresh mkntfs volume's root
    (where its entries are), with the buffer's update sequence undone before and redone after; ``torn``:
    then the last sector's check value is spoiled, as a write torn in the middle leaves it."""
    raw = bytearray(vol.read_bytes())
    cluster = struct.unpack_from("<H", raw, 11)[0] * raw[13]
    rec = struct.unpack_from("<Q", raw, 48)[0] * cluster + 5 * (1 << -struct.unpack_from("<b", raw, 64)[0])
    pos = rec + struct.unpack_from("<H", raw, rec + 0x14)[0]
    while struct.unpack_from("<I", raw, pos)[0] != 0xA0:  # $INDEX_ALLOCATION
        pos += struct.unpack_from("<I", raw, pos + 4)[0]
    runs = pos + struct.unpack_from("<H", raw, pos + 0x20)[0]
    nlen, olen = raw[runs] & 0x0F, raw[runs] >> 4
    block = int.from_bytes(raw[runs + 1 + nlen : runs + 1 + nlen + olen], "little") * cluster
    assert raw[block : block + 4] == b"INDX"
    usa_ofs, usa_count = struct.unpack_from("<HH", raw, block + 4)
    for j in range(1, usa_count):
        raw[block + j * 512 - 2 : block + j * 512] = raw[block + usa_ofs + 2 * j : block + usa_ofs + 2 * j + 2]
    edit(raw, block, block + 0x18 + struct.unpack_from("<I", raw, block + 0x18)[0])
    for j in range(1, usa_count):
        raw[block + usa_ofs + 2 * j : block + usa_ofs + 2 * j + 2] = raw[block + j * 512 - 2 : block + j * 512]
        raw[block + j * 512 - 2 : block + j * 512] = raw[block + usa_ofs : block + usa_ofs + 2]
    if torn:
        end = block + (usa_count - 1) * 512
        raw[end - 2 : end] = bytes(b ^ 0xFF for b in raw[end - 2 : end])
    vol.write_bytes(raw)


def _mkntfs(tmp_path: Path) -> Path:
    need_tools("mkntfs")
    vol = tmp_path / "ntfs.raw"
    with open(vol, "wb") as f:
        f.truncate(8 << 20)
    subprocess.run(["mkntfs", "-F", "-Q", str(vol)], check=True, capture_output=True)
    return vol


def test_ntfs_index_entry_of_length_zero_is_damage(tmp_path: Path) -> None:
    """An index entry whose Length is 0: dissect took it for the end of the node, so the directory listed
    short, with exit 0.  Now listing it is one line, exit 8."""
    vol = _mkntfs(tmp_path)

    def zero_length(raw: bytearray, _block: int, first: int) -> None:
        assert not struct.unpack_from("<I", raw, first + 12)[0] & 2  # a real entry, not the end marker
        struct.pack_into("<H", raw, first + 8, 0)

    _edit_root_index_buffer(vol, zero_length)
    code, _, err = run_cli("ls", vol, "/")
    assert code == 8 and len(err.strip().splitlines()) == 1 and "has length 0" in err, err


def test_ntfs_index_node_naming_itself_ends_the_search(tmp_path: Path) -> None:
    """The end entry of the root's index buffer made a node that names that buffer itself (VCN 0):
    dissect's search descended forever, so used-only imaging hung in its hibernation lookup (fuzz input
    kept in fuzz/crashes/filesystems) when our own lookup left the index undecided.  Now the search gives
    up on the damaged index at once."""
    vol = _mkntfs(tmp_path)

    def self_node(raw: bytearray, block: int, first: int) -> None:
        pos = first
        while not struct.unpack_from("<I", raw, pos + 12)[0] & 2:  # to the end entry
            pos += struct.unpack_from("<H", raw, pos + 8)[0]
        assert struct.unpack_from("<H", raw, pos + 8)[0] == 16
        struct.pack_into("<HHI", raw, pos + 8, 24, 0, 3)  # length 24, flags END | NODE, then VCN 0
        struct.pack_into("<Q", raw, pos + 16, 0)
        total, allocated = struct.unpack_from("<II", raw, block + 0x1C)
        assert total + 8 <= allocated
        struct.pack_into("<I", raw, block + 0x1C, total + 8)

    _edit_root_index_buffer(vol, self_node)
    from dissect.ntfs.exceptions import BrokenIndexError

    from imaging_utility.filesystems.dissect_ntfs import NTFS

    started = time.monotonic()
    with open(vol, "rb") as fh, pytest.raises(BrokenIndexError, match="reached twice"):
        NTFS(fh).mft.get("hiberfil.sys")  # the lookup that used-only falls back to
    code, _, err = run_cli("image", "--used-only", vol, tmp_path / "x.img")
    assert code in (0, 4) and "Traceback" not in err, err
    assert time.monotonic() - started < 30
