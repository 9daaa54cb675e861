"""The XFS / Btrfs / LVM2 volumes the tests share, each built once per session (see ``lfsbuild``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lfsbuild
import pytest

import fsbuild
from conftest import need_root, need_tools


@dataclass(frozen=True)
class Case:
    id: str
    kind: str  # xfs / btrfs
    size_mib: int
    opts: tuple[str, ...] = ()
    small: int = 0  # one-block files written and half deleted (deep free-space B+trees)


CASES = [
    Case("xfs-v5", "xfs", 64),
    Case("xfs-v4", "xfs", 64, ("-m", "crc=0")),  # built by mkfs -p: this kernel has no v4 support
    Case("xfs-rmap-reflink-8ag", "xfs", 128, ("-m", "rmapbt=1,reflink=1", "-d", "agcount=8")),
    Case("xfs-1k-2ag-deep", "xfs", 64, ("-b", "size=1024", "-d", "agcount=2", "-m", "reflink=0"), small=1200),
    Case("xfs-nrext64", "xfs", 64, ("-i", "nrext64=1")),  # large extent counters (xfsprogs 5.19+)
    Case("btrfs-default", "btrfs", 128),
    Case("btrfs-single", "btrfs", 128, ("-m", "single", "-d", "single")),
    Case("btrfs-mixed-dup", "btrfs", 160, ("-M", "-m", "dup", "-d", "dup")),  # data dup: min 229 MiB unmixed
    Case("btrfs-mixed", "btrfs", 64, ("-M",)),
    Case("btrfs-4k-nodes-deep", "btrfs", 128, ("-n", "4096", "-m", "single"), small=1500),
    Case("btrfs-xxhash-64k-nodes", "btrfs", 128, ("--csum", "xxhash", "-n", "65536")),  # not crc32c
]
BY_ID = {c.id: c for c in CASES}


@dataclass
class Volume:
    path: Path
    expected: dict[str, str]
    case: Case

    def read_files(self, path: Path | None = None) -> dict[str, str]:
        """The files of this volume (or of a copy at ``path``): a kernel mount, or dissect.xfs for v4."""
        if self.case.id == "xfs-v4":
            return lfsbuild.read_tree_dissect(path or self.path)
        return lfsbuild.read_tree(path or self.path)


def require(kind: str) -> None:
    need_root()
    need_tools(*lfsbuild.TOOLS[kind])


# Built once per test process: each test module imports these fixtures, which pytest then treats as
# separate (per-module) fixtures, so the volumes themselves are cached here.
_BUILT: dict[str, object] = {}


def _base(factory: pytest.TempPathFactory) -> Path:
    base = factory.getbasetemp() / "lfsvolumes"
    base.mkdir(exist_ok=True)
    return base


@pytest.fixture(scope="session")
def tree_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if "tree" not in _BUILT:
        tree = _base(tmp_path_factory) / "tree"
        fsbuild.make_tree(tree, large_mib=2)
        os.symlink("hello.txt", tree / "link-to-hello")
        _BUILT["tree"] = tree
    return _BUILT["tree"]  # type: ignore[return-value]


@pytest.fixture(scope="session")
def volume(tmp_path_factory: pytest.TempPathFactory, tree_dir: Path) -> Callable[[str], Volume]:
    """``volume(case_id)``: the case's aged volume, built once per test process."""
    root = _base(tmp_path_factory)

    def get(case_id: str) -> Volume:
        if case_id not in _BUILT:
            case = BY_ID[case_id]
            require(case.kind)
            path = root / f"{case.id}.img"
            if case.id == "xfs-v4":
                expected = lfsbuild.make_xfs_v4(path, case.size_mib, tree_dir)
            else:
                build = lfsbuild.make_xfs if case.kind == "xfs" else lfsbuild.make_btrfs
                expected = build(path, case.size_mib, tree_dir, case.opts, small=case.small)
            _BUILT[case_id] = Volume(path, expected, case)
        return _BUILT[case_id]  # type: ignore[return-value]

    return get


@pytest.fixture(scope="session")
def lvm_volume(tmp_path_factory: pytest.TempPathFactory, tree_dir: Path) -> lfsbuild.LvmVolume:
    if "lvm" not in _BUILT:
        require("lvm")
        _BUILT["lvm"] = lfsbuild.make_lvm(_base(tmp_path_factory) / "pv.img", 160, tree_dir)
    return _BUILT["lvm"]  # type: ignore[return-value]
