"""Linux swap made by mkswap: detected with its label and UUID, used-only keeps the signature page only."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest

from conftest import cli, need_tools
from imaging_utility.blocks import BytesSource
from imaging_utility.devices.source import FileSource
from imaging_utility.errors import UnsupportedError
from imaging_utility.filesystems import allocation_map, detect

MiB = 1 << 20
UUID = "0badc0de-1234-4321-8765-0123456789ab"


def _mkswap(path: Path, size: int, *opts: str) -> None:
    need_tools("mkswap")
    with open(path, "wb") as f:
        f.write(b"\xa5" * size)  # not zeros: a map that keeps too little would show
    subprocess.run(["mkswap", "-L", "myswap", "-U", UUID, *opts, str(path)], check=True, capture_output=True)


@pytest.mark.parametrize("page", [4096, 8192, 65536])
def test_mkswap_signature_page_only(tmp_path: Path, page: int) -> None:
    path = tmp_path / "swap.raw"
    _mkswap(path, 8 * MiB, *(["-p", str(page)] if page != 4096 else []))
    with FileSource(str(path)) as src:
        info, amap = allocation_map(src)
    assert (info.type, info.label, info.serial, info.cluster_size) == ("swap", "myswap", UUID, page)
    assert info.volume_size == 8 * MiB
    assert [(e.offset, e.length) for e in amap] == [(0, page)]


def test_swap_in_a_larger_partition_keeps_the_tail(tmp_path: Path) -> None:
    path = tmp_path / "swap.raw"
    _mkswap(path, 4 * MiB)
    data = path.read_bytes() + b"\x5a" * MiB  # a partition larger than the swap area
    _info, amap = allocation_map(BytesSource(data))
    assert [(e.offset, e.length) for e in amap] == [(0, 4096), (4 * MiB, MiB)]


def test_big_endian_header_and_bad_ones(tmp_path: Path) -> None:
    page = bytearray(4096)
    page[4086:] = b"SWAPSPACE2"
    struct.pack_into(">III", page, 1024, 1, 255, 0)
    info = detect(BytesSource(bytes(page) + bytes(255 * 4096)))
    assert info is not None and info.type == "swap" and info.volume_size == MiB and info.label is None
    struct.pack_into(">I", page, 1024, 2)  # version 2 does not exist
    with pytest.raises(UnsupportedError, match="header version"):
        detect(BytesSource(bytes(page)))
    struct.pack_into("<III", page, 1024, 1, 0x7FFFFFFF, 0)  # more pages than the source holds
    with pytest.raises(UnsupportedError, match="truncated"):
        allocation_map(BytesSource(bytes(page) + bytes(4096)))
    page[4086:] = b"S1SUSPEND\0"  # a hibernation image: not plain swap, so kept in full by callers
    assert detect(BytesSource(bytes(page))) is None


def test_ls_on_swap_says_it_holds_no_files(tmp_path: Path) -> None:
    path = tmp_path / "swap.raw"
    _mkswap(path, 4 * MiB)
    err = cli("ls", path, check=4).stderr
    assert "Linux swap: it holds no files" in err and err.count("\n") == 1
