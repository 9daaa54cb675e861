"""``serve-proxy`` and ``mount`` as real processes; FUSE + loop mounts of NTFS (ntfs-3g) and ext4."""

# ruff: noqa: F811  (pytest fixtures are imported from serve_helpers and requested by name)
from __future__ import annotations

import os
import re
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from serve_helpers import gpt_disk, part_bytes  # noqa: F401  (fixtures)

from conftest import need_root, need_tools

_IMAGES: dict[tuple[str, bool], Path] = {}


def _image(disk_path: Path, corrupt_at: int | None = None) -> Path:
    """A real image of the test disk (64 KiB chunks), made once; optionally with the chunk holding
    byte ``corrupt_at`` damaged (one flipped byte inside its frame)."""
    key = (str(disk_path), corrupt_at is not None)
    if key not in _IMAGES:
        img = disk_path.with_name("disk.img" if corrupt_at is None else "corrupt.img")
        subprocess.run([sys.executable, "-m", "imaging_utility", "image", "--force", "--chunk-size", "64K",
                        str(disk_path), str(img)], check=True, capture_output=True)
        if corrupt_at is not None:
            from imaging_utility.image.reader import open_image

            with open_image(str(img)) as reader:
                index = corrupt_at // reader.chunk_size
                pos = reader.chunk_offsets[index] + reader.chunk_csizes[index] // 2
            raw = bytearray(img.read_bytes())
            raw[pos] ^= 0xFF
            img.write_bytes(raw)
        _IMAGES[key] = img
    return _IMAGES[key]


def _cli(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """The real CLI; a test disk's raw path is replaced by a real image of it."""
    corrupt = (env or {}).get("IU_TEST_CORRUPT")
    argv = [str(_image(a, int(corrupt.split(":")[0]) if corrupt else None))
            if isinstance(a, Path) and a.name == "disk.raw" else str(a) for a in args]
    return subprocess.Popen([sys.executable, "-m", "imaging_utility", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait(10)


def _serving(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r" at (\S+) ", line)
    assert match, (line, proc.stderr.read() if proc.poll() is not None and proc.stderr else "")
    return match.group(1)


def test_serve_proxy_nbd_exports_partitions_and_stops_on_sigint(gpt_disk, procs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    need_tools("nbdinfo", "nbdcopy")
    proc = _cli("serve-proxy", gpt_disk.path, "--port", "0")
    procs.append(proc)
    uri = _serving(proc)
    listing = subprocess.run(["nbdinfo", "--list", uri], capture_output=True, text=True, check=True).stdout
    assert all(f'export="{n}"' in listing for n in ("", "p1", "p2"))
    subprocess.run(["nbdcopy", uri + "p2", tmp_path / "p2.raw"], check=True)
    assert (tmp_path / "p2.raw").read_bytes() == part_bytes(gpt_disk, 2)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 0


def test_serve_proxy_partition_window_warning_and_errors(gpt_disk, procs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    need_tools("nbdcopy")
    proc = _cli("serve-proxy", gpt_disk.path, "--partition", "1", "--host", "0.0.0.0", "--port", "0")
    procs.append(proc)
    uri = _serving(proc).replace("0.0.0.0", "127.0.0.1")
    subprocess.run(["nbdcopy", uri, tmp_path / "p1.raw"], check=True, timeout=60)
    assert (tmp_path / "p1.raw").read_bytes() == part_bytes(gpt_disk, 1)
    proc.terminate()
    proc.wait(10)
    assert proc.stderr is not None and "not loopback" in proc.stderr.read()

    sock = tmp_path / "w.sock"
    proc = _cli("serve-proxy", gpt_disk.path, "--offset", "1M", "--length", "64K", "--socket", sock)
    procs.append(proc)
    assert _serving(proc) == f"nbd+unix:///?socket={sock}"
    subprocess.run(["nbdcopy", f"nbd+unix:///?socket={sock}", tmp_path / "w.raw"], check=True)
    assert (tmp_path / "w.raw").read_bytes() == gpt_disk.path.read_bytes()[1 << 20:(1 << 20) + 65536]
    proc.terminate()
    proc.wait(10)

    bad = _cli("serve-proxy", gpt_disk.path, "--partition", "9", "--port", "0")
    _out, err = bad.communicate(timeout=30)
    assert bad.returncode == 4 and err.count("\n") == 1 and "available: 1: " in err, err
    bad = _cli("serve-proxy", gpt_disk.path, "--offset", "1G", "--port", "0")
    _out, err = bad.communicate(timeout=30)
    assert bad.returncode == 2, err
    for args in (["--processes", "0"], ["--processes", "65"], ["--protocol", "imdproxy", "--processes", "2"]):
        bad = _cli("serve-proxy", gpt_disk.path, "--port", "0", *args)
        _out, err = bad.communicate(timeout=30)
        assert bad.returncode == 2 and err.count("\n") == 1 and "--processes" in err, (args, err)


def test_serve_proxy_used_only_image_shows_holes(gpt_disk, procs, tmp_path) -> None:  # type: ignore[no-untyped-def]
    need_tools("nbdinfo", "nbdcopy", "qemu-img")
    part = tmp_path / "p2.raw"
    part.write_bytes(part_bytes(gpt_disk, 2))
    img = tmp_path / "p2.img"
    subprocess.run([sys.executable, "-m", "imaging_utility", "image", "--used-only", "--chunk-size", "64K",
                    str(part), str(img)], check=True, capture_output=True)
    proc = _cli("serve-proxy", img, "--port", "0")
    procs.append(proc)
    uri = _serving(proc)
    listing = subprocess.run(["nbdinfo", "--list", uri], capture_output=True, text=True, check=True).stdout
    assert 'export=""' in listing
    nbd_map = subprocess.run(["nbdinfo", "--map", uri], capture_output=True, text=True, check=True).stdout
    assert "hole,zero" in nbd_map and "data" in nbd_map
    subprocess.run(["nbdcopy", uri, tmp_path / "copy.raw"], check=True, timeout=60)
    restored = tmp_path / "restored.raw"
    subprocess.run([sys.executable, "-m", "imaging_utility", "restore", str(img), str(restored)], check=True,
                   capture_output=True)
    subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", str(tmp_path / "copy.raw"), str(restored)],
                   check=True, capture_output=True)
    # the holes are the filesystem's free space: the mounted-back volume has the same files
    for name, content in gpt_disk.files.items():
        out = subprocess.run(["debugfs", "-R", f"cat /{name}", str(tmp_path / "copy.raw")], capture_output=True,
                             check=True).stdout
        assert out == content
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 0


def test_serve_proxy_imdproxy(gpt_disk, procs) -> None:  # type: ignore[no-untyped-def]
    import socket

    proc = _cli("serve-proxy", gpt_disk.path, "--protocol", "imdproxy", "--port", "0")
    procs.append(proc)
    host, port = _serving(proc).rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(struct.pack("<Q", 1))
        size, _align, flags = struct.unpack("<QQQ", s.recv(24, socket.MSG_WAITALL))
        assert (size, flags) == (gpt_disk.path.stat().st_size, 1)
        s.sendall(struct.pack("<QQQ", 2, 512, 512))
        assert struct.unpack("<QQ", s.recv(16, socket.MSG_WAITALL)) == (0, 512)
        assert s.recv(512, socket.MSG_WAITALL) == gpt_disk.path.read_bytes()[512:1024]  # GPT header
    proc.terminate()
    assert proc.wait(10) == 0


def _wait_mount(path: Path, proc: subprocess.Popen[str] | None = None, present: bool = True) -> None:
    deadline = time.monotonic() + 20
    while os.path.ismount(path) != present:
        if proc is not None and proc.poll() is not None and present:
            raise AssertionError(f"mount process exited {proc.returncode}: {proc.stderr and proc.stderr.read()}")
        assert time.monotonic() < deadline, f"{path} mounted={not present} after 20 s"
        time.sleep(0.05)


@pytest.fixture
def mounts() -> Iterator[list[Path]]:
    """Mount points to clean up (innermost last): loop mounts are umounted, FUSE ones fusermount3 -u."""
    made: list[Path] = []
    yield made
    for path in reversed(made):
        if os.path.ismount(path):
            subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)
            subprocess.run(["fusermount3", "-u", "-z", str(path)], check=False, capture_output=True)


def test_fuse_mount_and_loop_mount_ntfs_and_ext4(gpt_disk, mounts, tmp_path) -> None:  # type: ignore[no-untyped-def]
    need_root()
    need_tools("fusermount3", "ntfs-3g", "mount", "umount")
    fuse_dir, ntfs_dir, ext_dir = tmp_path / "fuse", tmp_path / "ntfs", tmp_path / "ext"
    for d in (fuse_dir, ntfs_dir, ext_dir):
        d.mkdir()
    mounts.append(fuse_dir)
    bg = _cli("mount", gpt_disk.path, fuse_dir)  # background: returns once the mount is live
    out, err = bg.communicate(timeout=60)
    assert bg.returncode == 0, err
    assert "mounted at" in out and os.path.ismount(fuse_dir)
    assert sorted(os.listdir(fuse_dir)) == ["disk.raw", "p1.raw", "p2.raw"]
    assert (fuse_dir / "disk.raw").read_bytes() == gpt_disk.path.read_bytes()
    assert (fuse_dir / "p2.raw").read_bytes() == part_bytes(gpt_disk, 2)
    with pytest.raises(OSError):
        open(fuse_dir / "disk.raw", "r+b")  # noqa: SIM115
    mounts.append(ntfs_dir)
    subprocess.run(["mount", "-t", "ntfs-3g", "-o", "ro,loop", str(fuse_dir / "p1.raw"), str(ntfs_dir)],
                   check=True, capture_output=True)
    mounts.append(ext_dir)
    subprocess.run(["mount", "-o", "ro,loop", str(fuse_dir / "p2.raw"), str(ext_dir)], check=True,
                   capture_output=True)
    for d in (ntfs_dir, ext_dir):
        for name, content in gpt_disk.files.items():
            assert (d / name).read_bytes() == content, f"{d / name} differs"
    subprocess.run(["umount", str(ext_dir)], check=True)
    subprocess.run(["umount", str(ntfs_dir)], check=True)
    subprocess.run(["fusermount3", "-u", str(fuse_dir)], check=True)
    _wait_mount(fuse_dir, present=False)


def test_fuse_foreground_sigterm_unmounts_and_eio(gpt_disk, procs, mounts, tmp_path) -> None:  # type: ignore[no-untyped-def]
    need_root()
    need_tools("fusermount3")
    mnt = tmp_path / "fg"
    mnt.mkdir()
    mounts.append(mnt)
    proc = _cli("mount", gpt_disk.path, mnt, "-f", "--partition", "2",
                env={"IU_TEST_CORRUPT": f"{4 << 20}:65536"})
    procs.append(proc)
    _wait_mount(mnt, proc)
    assert sorted(os.listdir(mnt)) == ["disk.raw", "p2.raw"]
    with open(mnt / "disk.raw", "rb") as f:
        assert f.read(65536) == gpt_disk.path.read_bytes()[:65536]
        f.seek(4 << 20)
        with pytest.raises(OSError) as info:
            f.read(4096)
        assert info.value.errno == 5  # EIO for the corrupt chunk only
        f.seek(8 << 20)
        assert len(f.read(4096)) == 4096
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    assert not os.path.ismount(mnt)


def test_webdav_and_nbd_stop_cleanly_on_every_signal(gpt_disk, procs) -> None:  # type: ignore[no-untyped-def]
    """A signal that arrives while the server is busy stops it cleanly, every time (a ``KeyboardInterrupt``
    raised inside cheroot's worker queue used to leave the process hanging on exit, about one WebDAV stop in
    seven: 19 of them miss it about one time in twenty)."""
    need_tools("curl", "nbdinfo")
    signals = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    for i in range(22):
        sig = signals[i % len(signals)]
        if i % 6 == 5:
            proc = _cli("serve-proxy", gpt_disk.path, "--port", "0")
            procs.append(proc)
            uri = _serving(proc)
            subprocess.run(["nbdinfo", "--size", uri + "p2"], capture_output=True, check=True)
        else:
            proc = _cli("webdav", gpt_disk.path, "--partition", "2", "--port", "0")
            procs.append(proc)
            url = _serving(proc).rstrip(";")
            got = subprocess.run(["curl", "-sf", url + "hello.txt"], capture_output=True, check=True)
            assert got.stdout == gpt_disk.files["hello.txt"]
        proc.send_signal(sig)
        assert proc.wait(10) == 0, (i, sig)
        assert proc.stderr is not None and "imaging-utility: stopped" in proc.stderr.read()


def test_a_server_that_will_not_stop_is_ended(tmp_path: Path) -> None:
    """A stop that hangs past the deadline, or a second signal, ends the process with exit 130."""
    script = tmp_path / "hang.py"
    script.write_text(
        "import sys, threading, time\n"
        "from imaging_utility.cli import _serving\n"
        "_serving.STOP_DEADLINE = float(sys.argv[1])\n"
        "done = threading.Event()\n"
        "def serve():\n"
        "    print('serving', flush=True)\n"
        "    done.wait()\n"
        "_serving.serve_until_signalled(serve, lambda: time.sleep(3600))\n")
    for deadline, signals in ((1.0, (signal.SIGTERM,)), (60.0, (signal.SIGTERM, signal.SIGINT))):
        proc = subprocess.Popen([sys.executable, str(script), str(deadline)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None and proc.stdout.readline() == "serving\n"
            for sig in signals:
                proc.send_signal(sig)
                time.sleep(0.3)
            assert proc.wait(10) == 130
            assert proc.stderr is not None
            err = proc.stderr.read()
            assert ("did not stop within 1 s" if len(signals) == 1 else "interrupted again") in err, err
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
