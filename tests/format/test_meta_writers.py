"""The META schema (spec §3.4) accepts every key the tool writes, and refuses the same keys of a wrong type.

Whole-disk images (``image --used-only DISK``, ``backup-disk``) add ``disk`` to the header and
``partition_digests`` to the trailer; a used-only swap volume has ``filesystem.type`` ``swap``; an image
streamed to standard output is an ordinary image.  Each is written by the real command from real
filesystems (mkfs.ext4, mkswap, mkfs.fat, sgdisk) and read back by ``info`` and ``verify``.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from craft import Crafted

from conftest import cli, need_tools
from imaging_utility.errors import CorruptImageError
from imaging_utility.format.metaframe import Trailer
from imaging_utility.format.schema import check_header_meta, check_trailer_meta

MiB = 1 << 20


def _disk(tmp_path: Path) -> Path:
    """A 64 MiB GPT disk file: ext4, swap and FAT16 partitions."""
    need_tools("sgdisk", "mkfs.ext4", "mkswap", "mkfs.fat")
    disk = tmp_path / "disk.raw"
    with open(disk, "wb") as f:
        f.truncate(64 * MiB)
    subprocess.run(["sgdisk", "-n1:2048:+20M", "-t1:8300", "-n2:0:+8M", "-t2:8200", "-n3:0:+16M", "-t3:0700",
                    str(disk)], check=True, capture_output=True)
    for start, size, mkfs in ((1, 20, ["mkfs.ext4", "-q", "-F"]), (21, 8, ["mkswap", "-q"]),
                              (29, 16, ["mkfs.fat", "-F", "16"])):
        part = tmp_path / f"p{start}"
        with open(part, "wb") as f:
            f.truncate(size * MiB)
        subprocess.run([*mkfs, str(part)], check=True, capture_output=True)
        with open(disk, "r+b") as f:
            f.seek(start * MiB)
            f.write(part.read_bytes())
        part.unlink()
    return disk


def _metas(image: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    crafted = Crafted.of(image)
    return crafted.header.meta, crafted.trailer.meta


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("meta-writers")
    disk = _disk(tmp)
    out = {"disk": tmp / "d.img.zst", "set": tmp / "set", "stdout": tmp / "s.img.zst", "swap": tmp / "w.img.zst"}
    cli("image", "--used-only", "--hash", "sha256,blake3", disk, out["disk"])
    cli("backup-disk", disk, out["set"])
    with open(out["stdout"], "wb") as f:
        subprocess.run([*cli_argv(), "image", str(disk), "-"], stdout=f, check=True)
    swap = tmp / "swap.raw"
    with open(swap, "wb") as f:
        f.truncate(8 * MiB)
    subprocess.run(["mkswap", "-q", str(swap)], check=True)
    cli("image", "--used-only", swap, out["swap"])
    return out


def cli_argv() -> list[str]:
    import sys

    return [sys.executable, "-m", "imaging_utility"]


@pytest.mark.parametrize("kind", ["disk", "set", "stdout", "swap"])
def test_every_key_written_is_accepted(written: dict[str, Path], kind: str) -> None:
    target = written[kind]
    info = json.loads(cli("info", "--json", target).stdout)
    cli("verify", target)
    image = target / "disk.img.zst" if kind == "set" else target
    header, trailer = _metas(image)
    check_header_meta(header, "used_only" in header)
    check_trailer_meta(trailer)
    if kind in ("disk", "set"):
        assert {"disk", "used_only"} <= header.keys() and "partition_digests" in trailer
        assert [p["number"] for p in header["disk"]["partitions"]] == [1, 2, 3]
        assert header["used_only"]["filesystem"] == {"type": "gpt disk"}
        assert {p["filesystem"]["type"] for p in header["disk"]["partitions"]} == {"ext4", "swap", "fat16"}
    if kind == "swap":
        assert header["used_only"]["filesystem"]["type"] == "swap"
    if kind != "set":
        assert info["format_version"] == "1.0"


@pytest.mark.parametrize(("path", "value"), [
    (("disk",), []), (("disk", "version"), "1"), (("disk", "partitions"), {}),
    (("disk", "partitions"), [{"number": 1}]), (("disk", "partitions", 0, "start"), -1),
    (("disk", "partitions", 0, "filesystem"), "ext4"), (("disk", "table"), []),
    (("disk", "table", "ebrs"), ["x"]), (("disk", "warnings"), "none"), (("disk", "used_bytes"), None),
])
def test_disk_keys_of_the_wrong_type_are_refused(written: dict[str, Path], path: tuple[Any, ...],
                                                 value: object, tmp_path: Path) -> None:
    header, _ = _metas(written["disk"])
    _set(header, path, value)
    with pytest.raises(CorruptImageError, match="META key disk"):
        check_header_meta(header, True)
    bad = Crafted.of(written["disk"])
    bad.edit_header_meta(disk=header["disk"])
    code, _, err = _run("info", bad.write(tmp_path / "img"))
    assert code == 8 and "META key disk" in err and err.count("\n") == 1


@pytest.mark.parametrize("value", [[], {"1": "x"}, {"1": {"blake3": "XY"}}, {"1": {"sha256": "ab"}}])
def test_partition_digests_of_the_wrong_type_are_refused(written: dict[str, Path], value: object) -> None:
    _, trailer = _metas(written["disk"])
    with pytest.raises(CorruptImageError, match="META"):
        Trailer.decode(Trailer(64 * MiB, 64, {**trailer, "partition_digests": value},
                               frame_crcs=b"\0" * 4 * 64).encode()[8:])


def _set(obj: Any, path: tuple[Any, ...], value: object) -> None:
    for key in path[:-1]:
        obj = obj[key]
    obj[path[-1]] = value


def _run(*args: Any) -> tuple[int, str, str]:
    from craft import run_cli

    return run_cli(*args)
