"""Inputs the fuzz harnesses found (fuzz/crashes/filesystems), rebuilt from real volumes: each must end
in one line and a documented exit code, never a traceback or a hang."""

from __future__ import annotations

import struct
import subprocess
import time
from pathlib import Path

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
