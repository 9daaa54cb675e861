"""The command line as a new user types it: argument order, typos, the original tool's names, busy ports,
exit codes for permissions, interrupted images, pipes, the progress bar's width, the quick verify's
sample, escaped text and the messages of odd restore targets."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import cli, need_tools
from imagetools import mixed_bytes

MiB = 1 << 20


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A disk file with an MBR and one FAT16 partition at 1 MiB holding /DOCS/readme.txt."""
    need_tools("mkfs.vfat", "mcopy", "mmd", "sfdisk")
    base = tmp_path_factory.mktemp("disk")
    vol, disk = base / "vol.raw", base / "disk.raw"
    subprocess.run(["mkfs.vfat", "-C", str(vol), "16384"], check=True, capture_output=True)
    (base / "readme.txt").write_text("read me\n")
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    subprocess.run(["mmd", "-i", str(vol), "::/DOCS"], check=True, env=env)
    subprocess.run(["mcopy", "-i", str(vol), str(base / "readme.txt"), "::/DOCS/readme.txt"], check=True, env=env)
    with open(disk, "wb") as f:
        f.truncate(MiB + vol.stat().st_size)
    subprocess.run(["sfdisk", "-q", str(disk)], input=b"label: dos\nstart=2048, type=6\n", check=True)
    with open(disk, "r+b") as f:
        f.seek(MiB)
        f.write(vol.read_bytes())
    return disk


def test_options_go_anywhere(disk: Path) -> None:
    """Issue 14 item 1: `ls IMAGE --partition N PATH` as `ls --help` shows it, and the window form."""
    assert cli("ls", disk, "--partition", "1", "/DOCS").stdout.split() == ["readme.txt"]
    assert cli("ls", "-l", disk, "/DOCS", "--partition", "1").stdout.split()[-1] == "readme.txt"
    assert "DOCS/" in cli("ls", disk, "--offset", "1M", "--length", "16M", "/").stdout.split()
    assert cli("extract", disk, "/DOCS", "--partition", "1", disk.parent / "out").returncode == 0
    # a usage error shows the usage of the command it concerns
    err = cli("ls", disk, "--partition", "1", "/DOCS", "surplus", check=2).stderr
    assert err.startswith("usage: imaging-utility ls") and "imaging-utility ls: error:" in err


def test_typos_get_suggestions_and_verbose_goes_first(disk: Path) -> None:
    """Item 11."""
    err = cli("image", "--levle", "5", disk, disk.parent / "x.img", check=2).stderr
    assert err.rstrip().endswith("imaging-utility image: error: unknown option --levle; did you mean --level?")
    assert "did you mean verify?" in cli("verfy", disk, check=2).stderr
    unknown = cli("frobnicate", check=2).stderr
    assert "unknown command 'frobnicate'; the commands are: image, backup-disk, info" in unknown
    assert "the image is the first argument here" in cli("ls", "--in", disk, check=2).stderr
    quiet = cli("ls", disk, "--partition", "1", "/nope", check=4).stderr
    loud = cli("-v", "ls", disk, "--partition", "1", "/nope", check=4).stderr
    assert "Traceback" not in quiet and "Traceback" in loud  # -v before the command is honoured


def _main(*args: str | os.PathLike[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``imaging-utility ARGS`` in this process (the same parsing as the command line): exit code, stderr."""
    from imaging_utility.cli.main import main

    try:
        code = main([str(a) for a in args])
    except SystemExit as e:
        code = int(e.code or 0)
    return code, capsys.readouterr().err


def test_original_tool_names(disk: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Item 16: the aliases work; the original's other commands say what to run instead."""
    cli("ntfs-extract", disk, "--partition", "1", "/DOCS", tmp_path / "out")
    assert (tmp_path / "out" / "DOCS" / "readme.txt").read_text() == "read me\n"
    err = cli("export-raw", "--in", "x", check=2).stderr
    assert "'export-raw' is a command of the original Windows tool; here: 'imaging-utility restore IMAGE" in err
    for alias in ("ntfs-webdav", "ntfs-serve", "fat-webdav", "exfat-webdav"):
        assert _main(alias, "--help", capsys=capsys)[0] == 0
    for name, hint in (("list", "lsblk"), ("verify-set", "imaging-utility verify IMAGE"),
                       ("restore-physical", "restore IMAGE /dev/sdX"), ("dump-pt", "imaging-utility info IMAGE"),
                       ("mount-webdav", "net use Z:"), ("export-range", "nbdcopy")):
        code, err = _main(name, "--in", "x", capsys=capsys)
        assert code == 2 and f"'{name}' is a command of the original Windows tool; here:" in err and hint in err


@pytest.fixture
def busy_port() -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def test_busy_port(disk: Path, tmp_path: Path, busy_port: int) -> None:
    """Item 7: one line naming the cause and --port, exit 2 (webdav and serve-proxy)."""
    img = tmp_path / "d.img"
    cli("image", disk, img)
    for args in (("webdav", disk, "--partition", "1"), ("serve-proxy", img)):
        err = cli(*args, "--port", str(busy_port), check=2).stderr.strip()
        assert err == (f"imaging-utility: error: cannot listen on 127.0.0.1:{busy_port}: address already in use "
                       "(another server is on that port); choose another with --port"), err


def _as_nobody(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", sys.executable,
                           "-m", "imaging_utility", *map(str, args)], capture_output=True, text=True, timeout=120,
                          cwd="/")


def test_permission_denied_is_exit_5(disk: Path, loopdev: Callable[..., str]) -> None:
    """Item 8: ls on a device a user may not read, extract into a directory a user may not write: exit 5."""
    need_tools("setpriv")
    dev = loopdev(disk, read_only=True)
    work = Path(tempfile.mkdtemp(prefix="iu-perm-"))
    try:
        work.chmod(0o755)  # root's: nobody may not create anything in it
        shutil.copy(disk, work / "disk.raw")
        (work / "disk.raw").chmod(0o644)
        proc = _as_nobody("ls", dev, "--partition", "1", "/")
        assert proc.returncode == 5 and "permission denied" in proc.stderr, proc.stderr
        proc = _as_nobody("extract", work / "disk.raw", "--partition", "1", "/DOCS", work / "out")
        assert proc.returncode == 5 and "cannot use" in proc.stderr and "Permission denied" in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
        (work / "disk.raw").chmod(0o600)
        for source in (dev, work / "disk.raw"):  # info on a source (or an image) nobody may read
            proc = _as_nobody("info", source)
            assert proc.returncode == 5 and "permission denied" in proc.stderr.lower(), proc.stderr
            assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    finally:
        shutil.rmtree(work)


def test_interrupted_image_says_what_was_captured(tmp_path: Path) -> None:
    """Item 9: info and verify on a partial image: chunks and bytes captured, where it is valid, how to resume."""
    src = tmp_path / "src.raw"
    src.write_bytes(mixed_bytes(8 * MiB, seed=3))
    img = tmp_path / "p.img"
    cli("image", "--chunk-size", "64K", src, img)
    data = img.read_bytes()
    img.write_bytes(data[: len(data) // 2])  # what a power cut leaves
    for cmd in ("info", "verify"):
        proc = cli(cmd, img, check=8)
        m = re.search(r"captured +(\d+) of 128 chunks: .* source bytes 0-(\d+)", proc.stdout)
        assert m and int(m.group(2)) + 1 == int(m.group(1)) * 65536, proc.stdout
        assert f"continue     imaging-utility image --resume --chunk-size 64K {src} {img}" in proc.stdout
        assert len(proc.stderr.strip().splitlines()) == 1 and "image --resume" in proc.stderr
    report = json.loads(cli("info", "--json", img, check=8).stdout)
    assert report["complete"] is False and 0 < report["chunks_captured"] < 128
    cli("image", "--resume", "--chunk-size", "64K", src, img)
    assert cli("verify", img).returncode == 0


def test_a_file_that_is_no_image_is_not_called_an_interrupted_capture(tmp_path: Path) -> None:
    """info/verify on a raw volume (or any file that is not an image) say so and how to image it; a file cut
    inside its header is still an interrupted capture."""
    raw = tmp_path / "disk.raw"
    raw.write_bytes(mixed_bytes(2 * MiB, seed=6))
    proc = cli("verify", raw, check=8)
    assert f"{raw} is not an imaging-utility image" in proc.stderr and "imaging-utility image" in proc.stderr
    assert "resume" not in proc.stderr + proc.stdout and len(proc.stderr.strip().splitlines()) == 1
    proc = cli("info", raw)  # info describes it as a source (tests/backup/test_backup_cli.py)
    assert "not an image: what 'image' would read from it" in proc.stdout and "resume" not in proc.stdout
    img = tmp_path / "p.img"
    cli("image", "--chunk-size", "64K", raw, img)
    img.write_bytes(img.read_bytes()[:6])  # cut inside the header frame
    proc = cli("info", img, check=8)
    assert "not even the header was written" in proc.stdout, proc.stdout


def test_image_to_stdout_and_restore_from_stdin(tmp_path: Path) -> None:
    """Item 12: `image SOURCE - | restore - TARGET`, through a real shell pipe."""
    src = tmp_path / "src.raw"
    src.write_bytes(mixed_bytes(6 * MiB, seed=4))
    out = tmp_path / "out.raw"
    me = f"{sys.executable} -m imaging_utility"
    proc = subprocess.run(f"{me} image --chunk-size 64K {src} - | {me} restore --verify - {out}", shell=True,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == src.read_bytes() and "from standard input" in proc.stdout
    assert "image      -" in proc.stderr  # the summary goes to stderr, stdout is the image
    piped = subprocess.run([sys.executable, "-m", "imaging_utility", "image", "--chunk-size", "64K", src, "-"],
                           capture_output=True, timeout=300, check=True).stdout
    (tmp_path / "piped.img").write_bytes(piped)
    cli("verify", tmp_path / "piped.img")  # the streamed image is a complete, ordinary image
    cut = _cli_stdin(piped[: len(piped) // 2], "restore", "-", tmp_path / "cut.raw")
    assert cut.returncode == 8 and "the image stream ends at byte" in cut.stderr
    assert len(cut.stderr.strip().splitlines()) == 1
    err = cli("image", "--resume", src, "-", check=2).stderr
    assert "cannot be resumed or split" in err


def _cli_stdin(data: bytes, *args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "imaging_utility", *map(str, args)], input=data,
                          capture_output=True, timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(errors="replace"),
                                       proc.stderr.decode(errors="replace"))


def test_restore_from_stdin_to_a_device_needs_yes(tmp_path: Path, loopdev: Callable[..., str]) -> None:
    src = tmp_path / "src.raw"
    src.write_bytes(mixed_bytes(2 * MiB, seed=5))
    img = tmp_path / "i.img"
    cli("image", "--chunk-size", "64K", src, img)
    target = tmp_path / "target.raw"
    target.write_bytes(bytes(4 * MiB))
    dev = loopdev(target)
    refused = _cli_stdin(img.read_bytes(), "restore", "-", dev)
    assert refused.returncode == 9 and "nobody can be asked; add --yes" in refused.stderr
    assert _cli_stdin(img.read_bytes(), "restore", "--yes", "-", dev).returncode == 0
    assert target.read_bytes()[: 2 * MiB] == src.read_bytes()


def _run_on_a_terminal(args: list[str], columns: int = 80) -> str:
    """Run the CLI with stdout and stderr on a pseudo-terminal ``columns`` wide; everything it showed."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: a terminal of the given size, then the command
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
        env = {**os.environ, "COLUMNS": str(columns), "TERM": "xterm-256color"}
        os.execvpe(sys.executable, [sys.executable, "-m", "imaging_utility", *args], env)
    chunks = []
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.waitpid(pid, 0)
    os.close(fd)
    return b"".join(chunks).decode("utf-8", "replace")


def test_progress_bar_fits_80_columns(tmp_path: Path) -> None:
    """Item 14: every state of the bar is one line of at most 80 columns on an 80-column terminal."""
    src = tmp_path / "src.raw"
    src.write_bytes(os.urandom(96 * MiB))
    shown = _run_on_a_terminal(["image", "--threads", "1", "--level", "9", str(src), str(tmp_path / "i.img")])
    lines = [line for line in re.split(r"[\r\n]+", re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown)) if line.strip()]
    bars = [line for line in lines if line.startswith("image ") and "%" in line]
    assert bars, lines
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    assert all(re.search(r"\d+% .*/s", line) for line in bars), bars  # never wrapped onto a second line


def test_quick_verify_default_sample(tmp_path: Path) -> None:
    """Item 15: the default --quick sample catches a corruption of 1% of the chunks in ≥ 95% of runs."""
    from imaging_utility.image.reader import open_image
    from imaging_utility.image.verify import detection_probability, samples_for, verify_image

    src = tmp_path / "src.raw"
    src.write_bytes(mixed_bytes(25 * MiB, seed=6))  # 400 chunks of 64 KiB
    img = tmp_path / "q.img"
    cli("image", "--chunk-size", "64K", src, img)
    with open_image(str(img)) as reader:
        bad = [reader.chunk_offsets[i] + 40 for i in (17, 120, 250, 391)]  # 1% of the chunks
    raw = bytearray(img.read_bytes())
    for at in bad:
        raw[at] ^= 0xFF
    img.write_bytes(raw)
    out = cli("verify", "--quick", "--seed", "1", img, check=None).stdout
    n = samples_for(400)
    assert f"checked {n} of 400 chunks" in out and detection_probability(400, n, 0.01) >= 0.95
    caught = 0
    with open_image(str(img)) as reader:
        for seed in range(60):
            caught += not verify_image(reader, quick=True, seed=seed).ok
    assert caught >= 0.9 * 60, caught  # 95% expected; deterministic seeds
    few = cli("verify", "--quick", "--samples", "20", "--seed", "1", img, check=None).stdout
    assert f"({n} samples would give 95%)" in few


def test_text_from_an_image_is_escaped(tmp_path: Path) -> None:
    """Issue 12 item 19: a source path holding an escape sequence and rich markup is shown as text."""
    evil = tmp_path / "evil\x1b[31mred[bold]x.raw"
    evil.write_bytes(mixed_bytes(MiB, seed=7))
    img = tmp_path / "e.img"
    cli("image", evil, img)
    shutil.move(evil, tmp_path / "gone.raw")
    out = cli("info", img).stdout
    assert "\x1b" not in out and "evil\\x1b[31mred[bold]x.raw" in out
    err = cli("image", "--resume", tmp_path / "gone.raw", img, check=None).stderr
    assert "\x1b" not in err


def test_restore_target_messages(tmp_path: Path) -> None:
    """Issue 12 item 20: a dangling symlink target, --force through a symlink."""
    src = tmp_path / "src.raw"
    src.write_bytes(mixed_bytes(MiB, seed=8))
    img = tmp_path / "i.img"
    cli("image", src, img)
    os.symlink(tmp_path / "nowhere" / "x.raw", tmp_path / "dangling")
    err = cli("restore", img, tmp_path / "dangling", check=9).stderr
    assert "is a symlink to" in err and "which does not exist" in err and "device not found" not in err
    (tmp_path / "real.raw").write_bytes(b"old")
    os.symlink(tmp_path / "real.raw", tmp_path / "link")
    err = cli("restore", "--force", img, tmp_path / "link").stderr
    assert f"--force overwrites the file it points to, {tmp_path / 'real.raw'}" in err
    assert (tmp_path / "real.raw").read_bytes() == src.read_bytes()


def test_split_set_missing_a_part(tmp_path: Path) -> None:
    src = tmp_path / "src.raw"
    src.write_bytes(os.urandom(6 * MiB))
    img = tmp_path / "s.img"
    cli("image", "--chunk-size", "64K", "--split-size", "2M", src, img)
    assert (tmp_path / "s.img.003").exists()
    (tmp_path / "s.img.002").rename(tmp_path / "aside")
    err = cli("verify", img, check=8).stderr.strip()
    assert err == (f"imaging-utility: error: image part {img}.002 is missing ({img}.003 exists): the split image "
                   "needs every part; put the missing one back next to the others")
    (tmp_path / "aside").rename(tmp_path / "s.img.002")
    last = sorted(tmp_path.glob("s.img.0*"))[-1]
    last.rename(tmp_path / "aside")
    err = cli("info", img, check=8).stderr
    assert f"or the parts after it ({last} ...) are missing" in err


def test_sighup_and_sigquit_end_like_sigterm(tmp_path: Path) -> None:
    """Issue 12 item 20: a closed terminal (SIGHUP) or Ctrl-\\ (SIGQUIT) stops a run like Ctrl-C: exit 130, the
    partial image kept and resumable."""
    src = tmp_path / "src.raw"
    src.write_bytes(mixed_bytes(16 * MiB, seed=10))
    for sig in (signal.SIGHUP, signal.SIGQUIT):
        img = tmp_path / f"i{int(sig)}.img"
        proc = subprocess.Popen([sys.executable, "-m", "imaging_utility", "image", "--chunk-size", "64K",
                                 "--max-throughput", "4M", str(src), str(img)],  # slow enough to be interrupted
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not (img.exists() and img.stat().st_size > 100_000) and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert "interrupted at" in err and "resume with --resume" in err
        cli("image", "--resume", "--chunk-size", "64K", src, img)
        assert cli("verify", img).returncode == 0
    # under nohup (SIGHUP ignored before the start) a hang-up is still ignored
    img = tmp_path / "nohup.img"
    proc = subprocess.Popen(["nohup", sys.executable, "-m", "imaging_utility", "image", "--max-throughput", "4M",
                             str(src), str(img)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (img.exists() and img.stat().st_size > 100_000) and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 130
    proc.communicate()
