"""The CLI as users run it: exit codes, one-line errors, signals, kill -9 + resume, full target, loop device."""

from __future__ import annotations

import json
import os
import random
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import cli, need_root, need_tools
from imagetools import data_frames, file_sha256, mixed_bytes
from imaging_utility.image.reader import open_image


def _one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cli")
    src = d / "disk.raw"
    src.write_bytes(mixed_bytes(24 << 20, 5, region=256 * 1024))
    return src


def test_image_info_verify_restore_json(tmp_path: Path, source: Path) -> None:
    img = tmp_path / "disk.img.zst"
    out = json.loads(cli("image", "--json", "--hash", "sha256,blake3,md5", source, img).stdout)
    assert out["digests"]["sha256"] == file_sha256(source)
    assert set(out["digests"]) == {"sha256", "blake3", "md5"}
    info = json.loads(cli("info", "--json", img).stdout)
    assert info["source_size"] == source.stat().st_size
    assert info["source"]["path"] == str(source)
    assert info["digests"] == out["digests"]
    human = cli("info", img).stdout
    assert "sha256" in human and "layout" in human
    rep = json.loads(cli("verify", "--json", img).stdout)
    assert rep["ok"] and rep["chunks_checked"] == info["chunk_count"]
    q = cli("verify", "--quick", "--samples", "10", "--seed", "42", img).stdout
    assert "seed 42" in q and "% probability" in q
    cli("restore", "--verify", img, tmp_path / "back.raw")
    assert file_sha256(tmp_path / "back.raw") == file_sha256(source)
    assert subprocess.run(["cmp", str(source), str(tmp_path / "back.raw")]).returncode == 0


def test_exit_codes_and_one_line_errors(tmp_path: Path, source: Path) -> None:
    img = tmp_path / "x.img"
    assert "not found" in _one_line_error(cli("image", tmp_path / "missing", img, check=4))
    assert "directory" in _one_line_error(cli("image", tmp_path, img, check=4))
    cli("image", source, img)
    assert "--force" in _one_line_error(cli("image", source, img, check=9))
    cli("image", "--force", "--chunk-size", "256K", source, img)
    assert "exists" in _one_line_error(cli("restore", img, source, check=9))
    cli("image", "--chunk-size", "1000", source, tmp_path / "y.img", check=2)
    cli("image", "--hash", "sha1", source, tmp_path / "y.img", check=2)
    cli("image", "--level", "99", source, tmp_path / "y.img", check=2)
    cli("image", "--nonsense", source, tmp_path / "y.img", check=2)
    # truncated and garbage images: exit 8, one line
    raw = img.read_bytes()
    (tmp_path / "trunc.img").write_bytes(raw[: len(raw) // 2])
    for cmd in ("info", "verify"):
        assert "--resume" in _one_line_error(cli(cmd, tmp_path / "trunc.img", check=8))
    (tmp_path / "garbage.img").write_bytes(os.urandom(100_000))
    _one_line_error(cli("verify", tmp_path / "garbage.img", check=8))
    _one_line_error(cli("restore", tmp_path / "garbage.img", tmp_path / "out.raw", check=8))
    _one_line_error(cli("info", tmp_path / "nothing.img", check=4))


def test_flipped_byte_fails_verify_with_chunk_and_offset(tmp_path: Path, source: Path) -> None:
    img = tmp_path / "x.img"
    cli("image", "--chunk-size", "256K", source, img)
    info = json.loads(cli("info", "--json", img).stdout)
    assert info["chunk_count"] == 96
    raw = bytearray(img.read_bytes())
    flipped = len(raw) // 3
    raw[flipped] ^= 0x55
    img.write_bytes(raw)
    proc = cli("verify", img, check=8)
    # the message names the chunk's source bytes and where its frame lies in the image file
    m = re.search(r"FAILED chunk (\d+) \(source bytes (\d+)-(\d+); its frame at byte (\d+) of (\S+)\)", proc.stderr)
    assert m, proc.stderr
    chunk, start, end, frame_at = (int(m.group(i)) for i in range(1, 5))
    assert (start, end) == (chunk * 256 * 1024, (chunk + 1) * 256 * 1024 - 1) and m.group(5) == str(img)
    with open_image(str(img)) as reader:
        assert reader.chunk_offsets[chunk] == frame_at <= flipped < frame_at + reader.chunk_csizes[chunk]


def test_unreadable_source_exit_5(tmp_path: Path, source: Path) -> None:
    if os.geteuid() == 0:
        need_tools("setpriv")
        work = Path(tempfile.mkdtemp(prefix="iu-perm-"))
        work.chmod(0o777)
        src = work / "secret.raw"
        src.write_bytes(b"x" * 4096)
        src.chmod(0o000)
        proc = subprocess.run(
            ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
             sys.executable, "-m", "imaging_utility", "image", str(src), str(work / "o.img")],
            capture_output=True, text=True, timeout=60,
        )
    else:
        src = tmp_path / "secret.raw"
        src.write_bytes(b"x" * 4096)
        src.chmod(0o000)
        proc = cli("image", src, tmp_path / "o.img", check=None)
    assert proc.returncode == 5, proc.stderr
    assert "permission denied" in _one_line_error(proc)


def _start(args: list[str]) -> subprocess.Popen[str]:
    """The CLI as a child process; ``PYTHONFAULTHANDLER``: a SIGABRT prints every thread's stack."""
    return subprocess.Popen([sys.executable, "-m", "imaging_utility", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONFAULTHANDLER": "1"})


def _stderr_within(proc: subprocess.Popen[str], timeout: float) -> str:
    """The child's standard error once it exits; if it has not within ``timeout``, fail with where each of
    its threads is (a hang must be diagnosable from a CI log)."""
    try:
        return proc.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        _, err = proc.communicate(timeout=30)
        pytest.fail(f"still running {timeout} s after the signal; its threads:\n{err}")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_exits_130_and_resumes(tmp_path: Path, source: Path, sig: signal.Signals) -> None:
    ref = tmp_path / "ref.img"
    cli("image", "--chunk-size", "64K", "--threads", "1", source, ref)
    img = tmp_path / "i.img"
    proc = _start(["image", "--chunk-size", "64K", "--threads", "1", str(source), str(img)])
    _wait_for_growth(img)
    proc.send_signal(sig)
    err = _stderr_within(proc, 60)
    if proc.returncode == 0:
        pytest.fail("imaging finished before the signal; make the source larger")
    assert proc.returncode == 130, err
    assert "resume with --resume" in err
    cli("image", "--resume", "--chunk-size", "64K", "--threads", "1", source, img)
    assert data_frames(img) == data_frames(ref)


def _wait_for_growth(path: Path, minimum: int = 200_000, timeout: float = 30) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists() and path.stat().st_size >= minimum:
            return
        time.sleep(0.005)
    raise AssertionError(f"{path} did not grow")


def test_kill_9_at_random_points_then_resume_identical(tmp_path: Path, source: Path) -> None:
    args = ["--chunk-size", "64K", "--threads", "2", "--split-size", "3M"]
    cli("image", *args, source, tmp_path / "ref.img")
    total = sum(p.stat().st_size for p in tmp_path.glob("ref.img.0*"))
    img = tmp_path / "k.img"
    rng = random.Random(1234)
    kills = 0
    targets = sorted(rng.uniform(0.05, 0.9) * total for _ in range(4))
    for i, target in enumerate(targets):
        proc = _start(["image", *args, *(["--resume"] if i else []), str(source), str(img)])
        while proc.poll() is None and sum(p.stat().st_size for p in tmp_path.glob("k.img.0*")) < target:
            time.sleep(0.001)
        if proc.poll() is not None:
            break
        proc.kill()
        proc.wait()
        kills += 1
    cli("image", *args, "--resume", source, img)
    assert kills >= 2
    assert data_frames(img) == data_frames(tmp_path / "ref.img")
    ref = json.loads(cli("info", "--json", tmp_path / "ref.img").stdout)
    got = json.loads(cli("info", "--json", img).stdout)
    assert got["digests"] == ref["digests"]
    cli("verify", img)


def _limit_fsize(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_target_full_exit_7_then_resume(tmp_path: Path, source: Path) -> None:
    img = tmp_path / "full.img"
    proc = subprocess.run(
        [sys.executable, "-m", "imaging_utility", "image", "--chunk-size", "64K", str(source), str(img)],
        capture_output=True, text=True, preexec_fn=lambda: _limit_fsize(2 << 20), timeout=120,
    )
    assert proc.returncode == 7, proc.stderr
    assert "--resume" in _one_line_error(proc)
    assert img.stat().st_size <= 2 << 20
    cli("image", "--chunk-size", "64K", "--resume", source, img)
    cli("image", "--chunk-size", "64K", source, tmp_path / "ref.img")
    assert data_frames(img) == data_frames(tmp_path / "ref.img")


def test_loop_device_image_and_restore(tmp_path: Path, source: Path, loopdev: object) -> None:
    need_root()
    dev = loopdev(source)  # type: ignore[operator]
    img = tmp_path / "loop.img"
    out = json.loads(cli("image", "--json", "--hash", "sha256", dev, img).stdout)
    assert out["digests"]["sha256"] == file_sha256(source)
    info = json.loads(cli("info", "--json", img).stdout)
    assert info["source"]["kind"] == "block-device"
    target_file = tmp_path / "target.raw"
    with open(target_file, "wb") as fh:
        fh.truncate(source.stat().st_size)
    target = loopdev(target_file)  # type: ignore[operator]
    cli("restore", img, target, check=9)  # no --yes and no terminal: refused
    cli("restore", "--yes", img, target)
    assert subprocess.run(["cmp", str(source), target]).returncode == 0
    small = tmp_path / "small.raw"
    with open(small, "wb") as fh:
        fh.truncate(1 << 20)
    small_dev = loopdev(small)  # type: ignore[operator]
    assert "larger device" in _one_line_error(cli("restore", "--yes", img, small_dev, check=9))


def test_verbose_traceback_and_log_file(tmp_path: Path) -> None:
    proc = cli("--version", check=0)
    assert proc.stdout.startswith("imaging-utility ")
    log = tmp_path / "run.log"
    proc = cli("image", "--verbose", "--log-file", log, tmp_path / "missing", tmp_path / "x.img", check=4)
    assert "Traceback" in proc.stderr and "source not found" in proc.stderr
    assert "source not found" in log.read_text()
    quiet = cli("image", tmp_path / "missing", tmp_path / "x.img", check=4)
    assert "Traceback" not in quiet.stderr


def test_default_digest_and_sha256_computed_later(tmp_path: Path, source: Path) -> None:
    import blake3

    img = tmp_path / "d.img"
    out = json.loads(cli("image", "--json", source, img).stdout)
    assert out["digests"] == {"blake3": blake3.blake3(source.read_bytes()).hexdigest()}
    rep = json.loads(cli("verify", "--json", "--hash", "sha256", img).stdout)
    assert rep["ok"] and rep["digests"]["sha256"]["actual"] == file_sha256(source)
    assert rep["digests"]["sha256"]["expected"] is None and rep["digests"]["blake3"]["ok"]
    human = cli("verify", "--hash", "sha256,md5", img).stdout
    assert file_sha256(source) in human and "not stored" in human
    cli("verify", "--quick", "--hash", "sha256", img, check=2)
