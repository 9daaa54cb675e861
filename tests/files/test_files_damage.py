"""A chunk that fails its checksum: ``ls --damaged`` names the files it holds, as ``extract`` finds them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import fsbuild
from conftest import cli
from files.filehelpers import MiB, need
from imagetools import damage_chunk
from imaging_utility.devices.source import FileSource
from imaging_utility.filesystems.tree import open_tree

CHUNK = 64 * 1024


def test_damaged_counts_chunks_that_fail_their_checksum(tmp_path: Path) -> None:
    need("ext")
    src = tmp_path / "src"
    src.mkdir()
    (src / "large.bin").write_bytes(os.urandom(2 * MiB))
    (src / "small.txt").write_text("small\n")
    vol = tmp_path / "vol.raw"
    fsbuild.random_image(vol, 16)
    fsbuild._run("mke2fs", "-q", "-F", "-t", "ext4", "-E", "nodiscard", "-d", src, vol)
    with FileSource(str(vol)) as source:
        foff, disk, _n = open_tree(source).data_runs("/large.bin")[0]
    img = tmp_path / "vol.img"
    cli("image", "--chunk-size", "64K", vol, img)
    chunk = (disk + 3 * CHUNK) // CHUNK  # a chunk in the middle of large.bin
    damage_chunk(img, chunk)

    found = json.loads(cli("ls", "--damaged", "--json", img).stdout)
    lost = (chunk * CHUNK - disk + foff, CHUNK)
    assert found == [{"path": "/large.bin", "cause": "corrupt", "lost": [{"offset": lost[0], "length": lost[1]}],
                      "lost_bytes": CHUNK}]
    human = cli("ls", "--damaged", img)
    assert human.stdout.startswith(f"/large.bin\t{CHUNK} bytes lost at file offsets {lost[0]}+{CHUNK} (in image")
    assert "1 image chunk(s) of this volume fail their checksums" in human.stderr
    # extract agrees: that file fails (naming the chunk and where its frame is), the rest is written
    proc = cli("extract", img, "/", tmp_path / "out", check=3)
    assert f"chunk {chunk} (source bytes {chunk * CHUNK}-" in proc.stderr and f"of {img})" in proc.stderr
    assert (tmp_path / "out" / "small.txt").read_text() == "small\n"
