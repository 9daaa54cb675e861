"""Extended attributes read from XFS and Btrfs (``xfs_attr``, ``BtrfsBackend.xattrs``) against what the
kernel lists on a mount of the same volume, in every form XFS keeps them: short-form in the inode, local
values in a leaf block, a node over several leaves, remote values (blocks of their own), and POSIX ACLs
converted from XFS's own format.  ``trusted.SGI_ACL_*`` (XFS's ACLs under their raw names) is left out,
as ``cp -a`` leaves it out."""

from __future__ import annotations

import os
import random
import subprocess
from pathlib import Path

import pytest

from conftest import cli, need_root, need_tools
from files import metatrees as mt
from imaging_utility.devices.source import FileSource
from imaging_utility.filesystems.tree import open_tree

FILES = {
    "short": {"user.a": b"1"},  # XFS: in the inode
    "leaf": {f"user.leaf{i}": bytes([i]) * 900 for i in range(3)},  # a leaf block, values local to it
    "node": {f"user.attr{i:04d}": bytes([i % 251]) * (i % 300) for i in range(600)},  # leaves under a node
    "remote": {"user.huge": random.Random(5).randbytes(15000), "user.mid": b"m" * 2500},  # values in own blocks
    "labels": {"security.selinux": b"system_u:object_r:etc_t:s0\0", "trusted.t": b"root only"},
}


def _kernel_list(path: Path) -> dict[str, bytes]:
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in os.listxattr(path, follow_symlinks=False)
            if not n.startswith("trusted.SGI_")}


@pytest.mark.parametrize("kind", ["xfs", "btrfs"])
def test_xattrs_equal_what_the_kernel_lists(kind: str, tmp_path: Path) -> None:
    need_root()
    need_tools(f"mkfs.{kind}", "setfacl")
    vol = tmp_path / f"{kind}.raw"
    with open(vol, "wb") as f:
        f.truncate(320 << 20)
    subprocess.run([f"mkfs.{kind}", "-f", "-q", vol], check=True, capture_output=True)
    with mt.kernel_mount(vol) as m:
        for name, attrs in FILES.items():
            (m / name).write_bytes(name.encode())
            for key, value in attrs.items():
                os.setxattr(m / name, key, value)
        if kind == "xfs":  # Btrfs keeps a value in one tree item: at most a node's room (about 16 KiB)
            os.setxattr(m / "remote", "user.bigger", random.Random(6).randbytes(65536))
        (m / "acl").mkdir()
        subprocess.run(["setfacl", "-m", "u:1234:rw,g:55:r,m:rw", m / "short"], check=True)
        subprocess.run(["setfacl", "-d", "-m", "u:99:rx", m / "acl"], check=True)
    with mt.kernel_mount(vol, read_only=True) as m:
        want = {name: _kernel_list(m / name) for name in [*FILES, "acl"]}
    assert "system.posix_acl_access" in want["short"] and "system.posix_acl_default" in want["acl"]
    with FileSource(str(vol)) as src:
        tree = open_tree(src)
        got = {name: dict(tree.xattrs("/" + name)) for name in want}
    for name, attrs in want.items():
        assert got[name] == attrs, name
    img = tmp_path / "vol.img"
    cli("image", "--used-only", vol, img)  # the same through a used-only image
    out = tmp_path / "out"
    cli("extract", img, "/short", out)
    assert _kernel_list(out / "short").get("system.posix_acl_access") == want["short"]["system.posix_acl_access"]
