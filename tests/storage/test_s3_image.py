"""``image`` into S3 (full, used-only, split) against a real SeaweedFS; listing; one-line errors."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import need_tools
from fsbuild import make_ext, make_tree
from imagetools import mixed_bytes, write_source
from storage.s3helpers import download, iu, one_line_error, same_image_content
from storage.s3server import RO_ACCESS, RO_SECRET, S3Server

MiB = 1 << 20


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_source(tmp_path_factory.mktemp("s3src") / "disk.raw", mixed_bytes(24 * MiB, seed=5))


def test_image_to_s3_equals_local_image_and_zstd_reads_it(s3server: S3Server, source: Path,
                                                           tmp_path: Path) -> None:
    need_tools("zstd")
    bucket = s3server.bucket("iu-full")
    out = iu(s3server, "image", "--chunk-size", "256K", source, f"s3://{bucket}/hosts/a/disk.img.zst").stdout
    assert f"s3://{bucket}/hosts/a/disk.img.zst" in out
    iu(s3server, "image", "--chunk-size", "256K", source, tmp_path / "local.img.zst")
    got = download(s3server, bucket, "hosts/a/disk.img.zst", tmp_path / "s3.img.zst")
    same_image_content(got, tmp_path / "local.img.zst")
    raw = subprocess.run(["zstd", "-dc", str(got)], capture_output=True, check=True).stdout
    assert raw == source.read_bytes()
    # no resume record left behind, nothing unfinished
    keys = [o["Key"] for o in s3server.client().list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert keys == ["hosts/a/disk.img.zst"]
    assert not s3server.client().list_multipart_uploads(Bucket=bucket).get("Uploads")
    # the commands read it in place
    assert "OK" in iu(s3server, "verify", f"s3://{bucket}/hosts/a/disk.img.zst").stdout
    info = iu(s3server, "info", f"s3://{bucket}/hosts/a/disk.img.zst").stdout
    assert "24.00 MiB" in info


def test_used_only_image_to_s3_equals_local(s3server: S3Server, tmp_path: Path) -> None:
    need_tools("mkfs.ext4")
    files = tmp_path / "files"
    make_tree(files, large_mib=2)
    vol = tmp_path / "ext4.raw"
    make_ext(vol, 48, files)
    bucket = s3server.bucket("iu-used")
    iu(s3server, "image", "--used-only", vol, f"s3://{bucket}/ext4.img.zst")
    iu(s3server, "image", "--used-only", vol, tmp_path / "local.img.zst")
    same_image_content(download(s3server, bucket, "ext4.img.zst", tmp_path / "s3.img.zst"),
                       tmp_path / "local.img.zst")
    listing = iu(s3server, "ls", "-l", f"s3://{bucket}/ext4.img.zst").stdout
    assert "large" in listing or len(listing.splitlines()) > 2


def test_split_size_makes_separate_objects_read_as_one(s3server: S3Server, source: Path, tmp_path: Path) -> None:
    need_tools("zstd")
    bucket = s3server.bucket("iu-split")
    iu(s3server, "image", "--split-size", "2M", source, f"s3://{bucket}/split/disk.img.zst")
    keys = sorted(o["Key"] for o in s3server.client().list_objects_v2(Bucket=bucket)["Contents"])
    assert keys[0] == "split/disk.img.zst.001" and len(keys) >= 2
    assert all(k.startswith("split/disk.img.zst.") for k in keys)
    parts = [download(s3server, bucket, k, tmp_path / Path(k).name) for k in keys]
    joined = b"".join(p.read_bytes() for p in parts)
    assert subprocess.run(["zstd", "-dc"], input=joined, capture_output=True, check=True).stdout == \
        source.read_bytes()
    restored = tmp_path / "restored.raw"
    iu(s3server, "restore", f"s3://{bucket}/split/disk.img.zst", restored)
    assert restored.read_bytes() == source.read_bytes()
    listing = iu(s3server, "info", f"s3://{bucket}/").stdout
    assert f"s3://{bucket}/split/disk.img.zst " in listing and f"{len(keys)} parts" in listing


def test_info_lists_images_under_a_prefix(s3server: S3Server, source: Path) -> None:
    bucket = s3server.bucket("iu-fleet-list")
    for host in ("alpha", "beta"):
        iu(s3server, "image", source, f"s3://{bucket}/{host}/disk.img.zst")
    s3server.client().put_object(Bucket=bucket, Key="alpha/notes.txt", Body=b"not an image")
    out = iu(s3server, "info", f"s3://{bucket}/").stdout
    assert f"s3://{bucket}/alpha/disk.img.zst" in out and f"s3://{bucket}/beta/disk.img.zst" in out
    assert "notes.txt" not in out and str(source) in out and "created" in out
    import json

    listing = json.loads(iu(s3server, "info", "--json", f"s3://{bucket}/beta/").stdout)
    assert [e["name"] for e in listing["entries"]] == [f"s3://{bucket}/beta/disk.img.zst"]
    assert listing["entries"][0]["source_size"] == source.stat().st_size


def test_errors_are_one_line_with_their_exit_codes(s3server: S3Server, source: Path, tmp_path: Path) -> None:
    bucket = s3server.bucket("iu-errors")
    iu(s3server, "image", source, f"s3://{bucket}/ok.img.zst")
    missing = iu(s3server, "info", f"s3://{bucket}/nothing.img.zst", check=4)
    assert "not found" in one_line_error(missing)
    no_bucket = iu(s3server, "verify", "s3://iu-no-such-bucket/x.img.zst", check=4)
    assert "iu-no-such-bucket" in one_line_error(no_bucket)
    wrong = iu(s3server, "info", f"s3://{bucket}/ok.img.zst", check=5,
               env={"AWS_SECRET_ACCESS_KEY": "wrong-secret"})
    assert "denied" in one_line_error(wrong)
    read_only = iu(s3server, "image", source, f"s3://{bucket}/new.img.zst", check=5,
                   env={"AWS_ACCESS_KEY_ID": RO_ACCESS, "AWS_SECRET_ACCESS_KEY": RO_SECRET})
    assert "denied" in one_line_error(read_only)
    # the read-only identity reads fine
    iu(s3server, "info", f"s3://{bucket}/ok.img.zst",
       env={"AWS_ACCESS_KEY_ID": RO_ACCESS, "AWS_SECRET_ACCESS_KEY": RO_SECRET})
    exists = iu(s3server, "image", source, f"s3://{bucket}/ok.img.zst", check=9)
    assert "already exists" in one_line_error(exists)
    iu(s3server, "image", "--force", source, f"s3://{bucket}/ok.img.zst")
    prefix = iu(s3server, "restore", f"s3://{bucket}/", tmp_path / "x.raw", check=2)
    assert "prefix" in one_line_error(prefix)


def test_profile_and_endpoint_options(s3server: S3Server, source: Path, tmp_path: Path) -> None:
    bucket = s3server.bucket("iu-profile")
    creds = Path(s3server.env["AWS_SHARED_CREDENTIALS_FILE"])
    creds.write_text(f"[backup]\naws_access_key_id = {s3server.env['AWS_ACCESS_KEY_ID']}\n"
                     f"aws_secret_access_key = {s3server.env['AWS_SECRET_ACCESS_KEY']}\n")
    env = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_ENDPOINT_URL": ""}
    iu(s3server, "image", "--profile", "backup", "--endpoint-url", s3server.endpoint, source,
       f"s3://{bucket}/p.img.zst", env=env)
    no_creds = iu(s3server, "info", "--endpoint-url", s3server.endpoint, f"s3://{bucket}/p.img.zst", check=5,
                  env={**env, "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")})
    assert "credentials" in one_line_error(no_creds)
    unknown = iu(s3server, "info", "--profile", "nope", f"s3://{bucket}/p.img.zst", check=2, env=env)
    assert "nope" in one_line_error(unknown)
