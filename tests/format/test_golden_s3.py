"""Format 1.0 on S3: the golden vectors read byte-exact from objects, and the spec's refusals hold there.

The layout checks run over any stored image (``storage.BlobReader``), so an image in a bucket meets the
same rules as a file: a wrong META type is exit 8, a split set whose last parts are gone says so, and a
second ``image`` onto an S3 DEST that another run is writing is refused (S3 has no file locks: the first
run's resume record stands in for one).
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from pathlib import Path
from typing import Any

import pytest
from craft import Crafted
from golden_lib import image_paths

from storage.s3helpers import iu, one_line_error, popen
from storage.s3server import S3Server

EXPECTED: dict[str, Any] = json.loads((Path(__file__).parent / "golden" / "expected.json").read_text())


@pytest.fixture(scope="module")
def bucket(s3server: S3Server) -> str:
    name = s3server.bucket("iu-golden")
    client = s3server.client()
    for name_ in EXPECTED:
        for path in image_paths(name_):
            client.put_object(Bucket=name, Key=f"golden/{path.name}", Body=path.read_bytes())
    return name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_golden_vectors_read_byte_exact_from_s3(s3server: S3Server, bucket: str, name: str, tmp_path: Path) -> None:
    exp = EXPECTED[name]
    url = f"s3://{bucket}/golden/{image_paths(name)[0].name}"
    info = json.loads(iu(s3server, "info", "--json", url).stdout)
    assert info["format_version"] == "1.0" and info["layout_bytes"] == exp["layout"]
    assert info["digests"] == exp["trailer"]["meta"]["digests"]
    iu(s3server, "restore", url, tmp_path / "out.raw")  # every chunk checked as it is decoded
    assert hashlib.sha256((tmp_path / "out.raw").read_bytes()).hexdigest() == exp["source_sha256"]


def test_meta_of_the_wrong_type_is_exit_8_on_s3(s3server: S3Server, bucket: str, tmp_path: Path) -> None:
    crafted = Crafted.of(image_paths("full-64k-sha256")[0])
    crafted.edit_header_meta(level="x")
    s3server.client().put_object(Bucket=bucket, Key="bad/level.img", Body=crafted.image())
    for cmd in ("info", "verify"):
        proc = iu(s3server, cmd, f"s3://{bucket}/bad/level.img", check=8)
        assert "META key level has a wrong type" in one_line_error(proc)


def test_split_set_missing_its_last_part_on_s3(s3server: S3Server, bucket: str) -> None:
    first = image_paths("split-64k-md5")[0]
    s3server.client().put_object(Bucket=bucket, Key=f"cut/{first.name}", Body=first.read_bytes())
    proc = iu(s3server, "info", f"s3://{bucket}/cut/split-64k-md5.img", check=8)
    assert "are missing" in one_line_error(proc)


def test_second_image_onto_an_s3_dest_being_written_is_refused(s3server: S3Server, tmp_path: Path) -> None:
    src = tmp_path / "src.raw"
    src.write_bytes(random.Random(7).randbytes(12 << 20))
    bucket = s3server.bucket("iu-twice")
    dest = f"s3://{bucket}/one.img.zst"
    first = popen(s3server, "image", "--max-throughput", "4M", src, dest)
    try:
        deadline = time.monotonic() + 60
        while not s3server.client().list_objects_v2(Bucket=bucket, Prefix="one.img.zst.iu-resume").get("Contents"):
            assert first.poll() is None and time.monotonic() < deadline, "the first run never started its upload"
            time.sleep(0.1)
        second = iu(s3server, "image", src, dest, check=9)
        assert "already exists" in one_line_error(second)
        assert first.poll() is None  # the refusal did not touch the first run
    finally:
        first.communicate(timeout=120)
    assert first.returncode == 0
    got = tmp_path / "got.raw"
    iu(s3server, "restore", dest, got)
    assert got.read_bytes() == src.read_bytes()
