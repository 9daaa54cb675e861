"""Interrupted uploads: kill -9 and --resume, --abort, the S3 server stopped mid-upload and restarted,
the server gone while reading; many machines imaging into one bucket at once."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import need_tools
from imagetools import mixed_bytes, write_source
from imaging_utility.format import c_image as c
from storage.s3helpers import download, iu, one_line_error, popen, same_image_content
from storage.s3server import S3Server

MiB = 1 << 20


@pytest.fixture(scope="module")
def noisy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 MiB that compress little: an image of 5 parts of 8 MiB."""
    rng = __import__("random").Random(11)
    return write_source(tmp_path_factory.mktemp("s3resume") / "noisy.raw", rng.randbytes(40 * MiB))


def _parts(server: S3Server, bucket: str, key: str) -> int:
    uploads = [u for u in server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])
               if u["Key"] == key]
    if not uploads:
        return 0
    return len(server.client().list_parts(Bucket=bucket, Key=key, UploadId=uploads[-1]["UploadId"])
               .get("Parts", []))


def _start_and_wait_for_parts(server: S3Server, src: Path, url: str, parts: int) -> subprocess.Popen[str]:
    bucket, key = url[5:].split("/", 1)
    proc = popen(server, "image", "--max-throughput", "10M", src, url)
    deadline = time.monotonic() + 120
    while _parts(server, bucket, key) < parts:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no parts uploaded"
        time.sleep(0.1)
    return proc


def _exists(server: S3Server, bucket: str, key: str) -> bool:
    try:
        server.client().head_object(Bucket=bucket, Key=key)
        return True
    except Exception:
        return False


def test_kill_9_mid_upload_then_resume_gives_the_same_object(s3server: S3Server, noisy: Path,
                                                             tmp_path: Path) -> None:
    bucket = s3server.bucket("iu-resume")
    url = f"s3://{bucket}/host/noisy.img.zst"
    proc = _start_and_wait_for_parts(s3server, noisy, url, 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert not _exists(s3server, bucket, "host/noisy.img.zst")  # the object appears only when complete
    record = s3server.client().get_object(Bucket=bucket, Key="host/noisy.img.zst.iu-resume")["Body"].read()
    listing = iu(s3server, "info", f"s3://{bucket}/").stdout
    assert "unfinished upload" in listing and "host/noisy.img.zst" in listing
    unfinished = iu(s3server, "verify", url, check=4)
    assert "--resume" in one_line_error(unfinished)
    refused = iu(s3server, "image", noisy, url, check=9)
    assert "--resume" in one_line_error(refused)
    received = s3server.bytes_received(bucket)
    iu(s3server, "image", "--resume", noisy, url)
    uploaded_again = s3server.bytes_received(bucket) - received
    got = download(s3server, bucket, "host/noisy.img.zst", tmp_path / "resumed.img.zst")
    assert got.read_bytes()[: len(record)] == record  # the first run's header, byte for byte
    iu(s3server, "image", noisy, tmp_path / "local.img.zst")
    same_image_content(got, tmp_path / "local.img.zst")
    assert uploaded_again <= got.stat().st_size - 2 * 8 * MiB + MiB  # the parts kept were not sent again
    assert not s3server.client().list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert not _exists(s3server, bucket, "host/noisy.img.zst.iu-resume")
    need_tools("zstd")
    assert subprocess.run(["zstd", "-dc", str(got)], capture_output=True, check=True).stdout == noisy.read_bytes()


def test_split_upload_resumed_after_its_first_object_is_finished(s3server: S3Server, noisy: Path,
                                                                  tmp_path: Path) -> None:
    """--split-size: the finished object KEY.001 is checked as a whole (its multipart ETag) and kept,
    the upload of KEY.002 is continued."""
    bucket = s3server.bucket("iu-split-resume")
    url = f"s3://{bucket}/s.img.zst"
    proc = popen(s3server, "image", "--max-throughput", "10M", "--split-size", "20M", noisy, url)
    deadline = time.monotonic() + 120
    while not (_exists(s3server, bucket, "s.img.zst.001") and _parts(s3server, bucket, "s.img.zst.002") >= 1):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    first = s3server.client().head_object(Bucket=bucket, Key="s.img.zst.001")["ETag"]
    iu(s3server, "image", "--resume", "--split-size", "20M", noisy, url)
    assert s3server.client().head_object(Bucket=bucket, Key="s.img.zst.001")["ETag"] == first  # not re-sent
    keys = sorted(o["Key"] for o in s3server.client().list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == ["s.img.zst.001", "s.img.zst.002", "s.img.zst.003"][: len(keys)] and len(keys) >= 2
    joined = tmp_path / "joined.img.zst"
    joined.write_bytes(b"".join(s3server.client().get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys))
    iu(s3server, "image", noisy, tmp_path / "local.img.zst")
    same_image_content(joined, tmp_path / "local.img.zst")


def test_abort_discards_an_abandoned_upload(s3server: S3Server, noisy: Path) -> None:
    bucket = s3server.bucket("iu-abort")
    url = f"s3://{bucket}/gone.img.zst"
    proc = _start_and_wait_for_parts(s3server, noisy, url, 1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    out = iu(s3server, "image", "--abort", noisy, url).stdout
    assert "gone.img.zst" in out and "upload" in out
    assert not s3server.client().list_multipart_uploads(Bucket=bucket).get("Uploads")
    assert not s3server.client().list_objects_v2(Bucket=bucket).get("Contents")
    nothing = iu(s3server, "image", "--abort", noisy, url, check=4)
    assert "nothing to discard" in one_line_error(nothing)
    iu(s3server, "image", noisy, url)
    finished = iu(s3server, "image", "--abort", noisy, url, check=9)
    assert "finished image" in one_line_error(finished)


def test_server_stopped_mid_upload_and_mid_read_then_restarted(s3server: S3Server, noisy: Path,
                                                               tmp_path: Path) -> None:
    """One outage for both: the upload fails (exit 6, one line) and continues with --resume once the
    server is back; a reader's GET is retried, then fails with a clear error."""
    from imaging_utility.errors import TargetIOError
    from imaging_utility.image.reader import open_image
    from imaging_utility.storage import s3client

    bucket = s3server.bucket("iu-outage")
    small = write_source(tmp_path / "small.raw", noisy.read_bytes()[: 24 * MiB])  # beyond one read-ahead
    iu(s3server, "image", "--chunk-size", "256K", small, f"s3://{bucket}/read.img.zst")
    url = f"s3://{bucket}/outage.img.zst"
    saved = {k: os.environ.get(k) for k in s3server.env}
    os.environ.update(s3server.env)
    s3client.configure()
    attempts: list[int] = []
    try:
        s3client.client().meta.events.register("before-send.s3.GetObject", lambda **kw: attempts.append(1))
        with open_image(f"s3://{bucket}/read.img.zst", readahead=0) as reader:
            assert reader.read(0, 4096) == small.read_bytes()[:4096]
            proc = _start_and_wait_for_parts(s3server, noisy, url, 2)
            s3server.stop()
            try:
                _, err = proc.communicate(timeout=180)
                assert proc.returncode == 6, err
                assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
                before = len(attempts)
                middle = min((i for i in range(reader.chunk_count) if not reader.is_zero_chunk(i)),
                             key=lambda i: abs(reader.chunk_offsets[i] - reader.image_bytes // 2))
                with pytest.raises(TargetIOError, match="cannot reach the S3 endpoint"):
                    reader.read(middle * reader.chunk_size, 4096)
                assert len(attempts) - before >= 2  # the GET was tried again before giving up
            finally:
                s3server.start()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        s3client.configure()
    iu(s3server, "image", "--resume", noisy, url)
    got = download(s3server, bucket, "outage.img.zst", tmp_path / "outage.img.zst")
    iu(s3server, "image", noisy, tmp_path / "local.img.zst")
    same_image_content(got, tmp_path / "local.img.zst")
    offline = iu(s3server, "restore", url, tmp_path / "x.raw",
                 env={"AWS_ENDPOINT_URL": f"http://127.0.0.1:{_closed_port()}", "AWS_MAX_ATTEMPTS": "2"}, check=6)
    assert "cannot reach the S3 endpoint" in one_line_error(offline)


def _closed_port() -> int:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return int(port)


def test_eight_machines_image_into_one_bucket_at_once(s3server: S3Server, tmp_path: Path) -> None:
    need_tools("zstd")
    bucket = s3server.bucket("iu-fleet")
    sources = [write_source(tmp_path / f"host{i}.raw", mixed_bytes(6 * MiB, seed=100 + i)) for i in range(8)]
    procs = [popen(s3server, "image", "--threads", "1", src, f"s3://{bucket}/host{i}/disk.img.zst")
             for i, src in enumerate(sources)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    listing = iu(s3server, "info", f"s3://{bucket}/").stdout
    for i, src in enumerate(sources):
        got = download(s3server, bucket, f"host{i}/disk.img.zst", tmp_path / f"got{i}.img.zst")
        assert got.read_bytes()[:4] == c.HEADER_MAGIC.to_bytes(4, "little")
        assert subprocess.run(["zstd", "-dc", str(got)], capture_output=True, check=True).stdout == \
            src.read_bytes()
        assert f"s3://{bucket}/host{i}/disk.img.zst" in listing
