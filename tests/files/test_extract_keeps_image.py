"""``extract --overwrite`` into the directory that holds the image, from a filesystem that has a file of
the image's name: that one entry fails (exit 3) and the image stays whole, by whatever name it is reached
(the image itself, or a hard link to it); everything else is extracted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import fsbuild
from conftest import cli, need_tools


@pytest.mark.parametrize("name_in_dest", ["the image", "a hard link to it"])
def test_overwrite_never_replaces_the_image_being_read(name_in_dest: str, tmp_path: Path) -> None:
    need_tools("mke2fs", "debugfs")
    files = tmp_path / "files"
    files.mkdir()
    (files / "vol.img.zst").write_bytes(b"a file inside the filesystem")
    (files / "other.txt").write_bytes(b"other")
    fsbuild.make_ext(tmp_path / "vol.raw", 16, files)
    out = tmp_path / "out"
    out.mkdir()
    image = out / "vol.img.zst" if name_in_dest == "the image" else tmp_path / "vol.img.zst"
    cli("image", tmp_path / "vol.raw", image)
    if name_in_dest == "a hard link to it":
        os.link(image, out / "vol.img.zst")
    kept = image.read_bytes()
    proc = cli("extract", "--overwrite", image, "/", out, check=3)
    assert "the image being read has that name in the destination; not replaced" in proc.stderr
    assert image.read_bytes() == kept and (out / "vol.img.zst").read_bytes() == kept
    assert (out / "other.txt").read_bytes() == b"other"
    cli("verify", image)
