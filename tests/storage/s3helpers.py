"""Helpers for the S3 tests: the CLI against the test endpoint, objects downloaded, images compared."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from imagetools import data_frames
from imaging_utility.image.reader import open_image
from storage.s3server import S3Server


def iu(server: S3Server, *args: str | os.PathLike[str], check: int | None = 0, timeout: float = 300,
       env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``imaging-utility ARGS`` as a real process with the test endpoint's credentials."""
    proc = subprocess.run([sys.executable, "-m", "imaging_utility", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **server.env, **(env or {})})
    if check is not None and proc.returncode != check:
        raise AssertionError(f"exit {proc.returncode} (expected {check}) for {args}\n"
                             f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def popen(server: S3Server, *args: str | os.PathLike[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "imaging_utility", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **server.env})


def download(server: S3Server, bucket: str, key: str, path: Path) -> Path:
    body = server.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    path.write_bytes(body)
    return path


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The error a failed run printed: exactly one line, no traceback."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1, proc.stderr
    return lines[0]


def same_image_content(a: Path | str, b: Path | str) -> None:
    """Two images hold the same data frames and whole-image digests (headers differ in time and path)."""
    assert data_frames(a) == data_frames(b)
    with open_image(str(a)) as ra, open_image(str(b)) as rb:
        assert ra.trailer.meta["digests"] == rb.trailer.meta["digests"]
        assert ra.size == rb.size and ra.chunk_count == rb.chunk_count
