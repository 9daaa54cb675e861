# ruff: noqa: F811  (pytest fixtures are imported from exportfixtures and requested by name)
"""The export command: its output and JSON, one-line errors with their exit codes, an existing OUT,
a full disk (exit 7, nothing left behind), interrupts, a split image, progress events."""

from __future__ import annotations

import fcntl
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from exportfixtures import big_image, mixed_image  # noqa: F401  (fixtures)
from exporthelpers import MiB, make_image, qemu_compare

from conftest import cli, need_root, need_tools
from imaging_utility.cli.main import main
from imaging_utility.ops.export import export_image
from imaging_utility.progress import ProgressEvent


def _one_line_error(proc: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert text in lines[0], lines[0]


def _nothing_left(directory: Path, keep: set[str]) -> None:
    assert {p.name for p in directory.iterdir()} <= keep


def test_json_and_text_output(mixed_image: tuple[Path, Path], tmp_path: Path) -> None:
    image, raw = mixed_image
    out = tmp_path / "m.vhdx"
    summary = json.loads(cli("export", "--json", image, out).stdout)
    assert summary["format"] == "vhdx" and summary["virtual_size"] == raw.stat().st_size
    assert summary["file_size"] == out.stat().st_size and summary["details"]["block_size"] == 32 * MiB
    identity = summary["identity"]
    assert identity["image_digests"]["blake3"] and identity["id"] == summary["details"]["page83_id"]
    assert identity["window"] == {"partition": None, "offset": 0, "length": raw.stat().st_size}
    assert not Path(f"{out}.partial").exists()
    qemu_compare("vhdx", raw, out)
    # the same image bytes get the same id, whatever the format
    again = json.loads(cli("export", "--json", image, tmp_path / "m.vhd").stdout)
    assert again["identity"]["id"] == identity["id"] == again["details"]["unique_id"]
    text = cli("export", image, tmp_path / "m.qcow2", "--compress").stdout
    assert text.startswith("exported ") and "qcow2" in text and f"id {identity['id']}" in text
    qemu_compare("qcow2", raw, tmp_path / "m.qcow2")
    assert "vmdk-stream" in cli("export", "--help").stdout


def test_command_line_names_every_format() -> None:
    """The parser keeps its own format table (it must not import the writers at start-up)."""
    from imaging_utility import export as engine
    from imaging_utility.cli import export as command

    assert tuple(command.FORMATS) == engine.FORMATS
    assert set(command.EXTENSIONS.values()) <= set(engine.FORMATS)


def test_bad_input_one_line_each(mixed_image: tuple[Path, Path], big_image: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Through ``main`` in this process (the same argv → exit code path, without a process start each)."""
    image, _raw = mixed_image
    out = tmp_path / "out"
    out.mkdir()
    disk = out / "d.vhdx"
    notimage = tmp_path / "random.bin"
    notimage.write_bytes(random.Random(3).randbytes(64 * 1024))
    setdir = tmp_path / "set"
    setdir.mkdir()
    (setdir / "backup.manifest.json").write_text("{}")
    plaindir = tmp_path / "plain"
    plaindir.mkdir()
    cases: list[tuple[list[object], int, str]] = [
        ([image, disk, "-f", "vhdz"], 2, "unknown format 'vhdz'"),
        ([image, out / "d.bin"], 2, "cannot tell the format"),
        ([image, disk, "--block-size", "3M"], 2, "VHDX block size 3 MiB is not allowed"),
        ([image, disk, "--block-size", "512M"], 2, "VHDX block size 512 MiB is not allowed"),
        ([image, out / "d.vhd", "--block-size", "1M"], 2, "use 512 KiB or 2 MiB"),
        ([image, out / "d.qcow2", "--block-size", "4M"], 2, "qcow2 cluster size 4 MiB is not allowed"),
        ([image, out / "d.vmdk", "--block-size", "128K"], 2, "VMDK grain size 128 KiB is not allowed"),
        ([image, out / "d.raw", "--block-size", "1M"], 2, "does not apply to raw"),
        ([image, out / "d.vhd", "--azure", "--block-size", "2M"], 2, "does not apply to a fixed VHD"),
        ([image, disk, "--block-size", "lots"], 2, "invalid --block-size"),
        ([image, disk, "--compress"], 2, "--compress applies to qcow2 only"),
        ([image, out / "d.qcow2", "--azure"], 2, "--azure makes a fixed VHD"),
        ([image, disk, "--logical-sector", "1024"], 2, "VHDX allows 512 or 4096"),
        ([image, out / "d.vhd", "--logical-sector", "4096"], 2, "applies to VHDX only"),
        ([image, disk, "--partition", "9"], 4, "partition 9 not found"),
        ([image, disk, "--offset", "1G"], 2, "outside the image"),
        ([image, disk, "--partition", "1", "--length", "1M"], 2, "cannot be combined"),
        ([image, disk, "--threads", "0"], 2, "--threads 0"),
        ([tmp_path / "missing.img", disk], 4, "not found"),
        ([notimage, disk], 8, ""),
        ([setdir, disk], 8, "not an imaging-utility backup manifest"),
        ([plaindir, disk], 4, "not an image or a backup set"),
        ([image, disk, "--disk", "sda"], 2, "--disk sda needs a backup set directory"),
        ([image, out, "-f", "vhdx"], 2, "is a directory"),
        ([image, "s3://bucket/d.vhdx"], 2, "export writes a local file"),
        ([image, tmp_path / "nodir" / "d.vhdx"], 4, "does not exist"),
        ([big_image, out / "b.qcow2", "--block-size", "512"], 2, "qcow2 holds at most 128 GiB"),
    ]
    for args, code, text in cases:
        argv = ["export", *map(str, args)]
        rc = main(argv)
        err = capsys.readouterr().err
        _one_line_error(subprocess.CompletedProcess(argv, rc, "", err), code, text)
        _nothing_left(out, set())
    _one_line_error(cli("export", image, disk, "-f", "vhdz", check=None), 2, "unknown format")  # a real process


def test_existing_out(mixed_image: tuple[Path, Path], tmp_path: Path) -> None:
    image, raw = mixed_image
    out = tmp_path / "keep.vmdk"
    out.write_bytes(b"precious")
    _one_line_error(cli("export", image, out, check=None), 9, "already exists; use --force")
    assert out.read_bytes() == b"precious"
    cli("export", "--force", image, out)
    qemu_compare("vmdk", raw, out)
    _one_line_error(cli("export", "--force", image, image, "-f", "raw", check=None), 9, "the image being exported")
    assert image.stat().st_size < raw.stat().st_size  # the image is untouched


def test_partial_held_by_another_export(mixed_image: tuple[Path, Path], tmp_path: Path) -> None:
    """A second export to the same OUT stops at once (exit 9) and leaves the first one's partial file alone."""
    image, raw = mixed_image
    out = tmp_path / "disk.qcow2"
    partial = tmp_path / "disk.qcow2.partial"
    partial.write_bytes(b"the first export's bytes")
    fd = os.open(partial, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as the first export holds it
        _one_line_error(cli("export", "--force", image, out, check=None), 9, "being written by another export")
        assert partial.read_bytes() == b"the first export's bytes" and not out.exists()
    finally:
        os.close(fd)
    cli("export", image, out)  # once it is released, the export goes ahead
    qemu_compare("qcow2", raw, out)
    assert not partial.exists()


def test_full_disk_exit_7(mixed_image: tuple[Path, Path], tmp_path: Path) -> None:
    """OUT on a 4 MiB tmpfs: exit 7 with one line, and neither OUT nor OUT.partial is left."""
    need_root()
    need_tools("mount", "umount")
    image, _raw = mixed_image
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(small)], check=True)
    try:
        for name in ("full.raw", "full.vhdx", "full.qcow2"):
            _one_line_error(cli("export", image, small / name, check=None), 7, "no space left")
            _nothing_left(small, set())
    finally:
        subprocess.run(["umount", str(small)], check=True)


@pytest.fixture
def slow_image(tmp_path: Path) -> Path:
    """64 MiB of random bytes: a one-thread vmdk-stream export of it takes a second or more (zlib)."""
    raw = tmp_path / "random.raw"
    rng = random.Random(8)
    with open(raw, "wb") as f:
        for _ in range(64):
            f.write(rng.randbytes(MiB))
    image = make_image(raw, tmp_path / "random.img")
    raw.unlink()
    return image


def _start_export(image: Path, out: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "imaging_utility", "export", "--threads", "1", str(image),
                             str(out), "-f", "vmdk-stream"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    partial = Path(f"{out}.partial")
    deadline = time.monotonic() + 60
    while not (partial.exists() and partial.stat().st_size > MiB):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return proc


def test_interrupt_and_kill(slow_image: Path, tmp_path: Path) -> None:
    out = tmp_path / "slow.vmdk"
    proc = _start_export(slow_image, out)
    proc.send_signal(signal.SIGTERM)
    _stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130 and b"interrupted" in stderr
    assert not out.exists() and not Path(f"{out}.partial").exists()
    # killed outright: what is left is OUT.partial, never a file named OUT
    proc = _start_export(slow_image, out)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert not out.exists() and Path(f"{out}.partial").exists()
    cli("export", slow_image, out, "-f", "raw")  # a stale partial is replaced
    assert out.exists() and not Path(f"{out}.partial").exists()


def test_split_image(tmp_path: Path) -> None:
    raw = tmp_path / "src.raw"
    raw.write_bytes(random.Random(2).randbytes(6 * MiB) + bytes(2 * MiB))
    cli("image", "--split-size", "2M", "--chunk-size", "256K", raw, tmp_path / "split.img")
    assert (tmp_path / "split.img.003").exists()
    cli("export", tmp_path / "split.img.001", tmp_path / "s.qcow2")
    qemu_compare("qcow2", raw, tmp_path / "s.qcow2")


def test_progress_events(mixed_image: tuple[Path, Path], tmp_path: Path) -> None:
    image, raw = mixed_image
    events: list[ProgressEvent] = []
    export_image(str(image), str(tmp_path / "p.vhdx"), "vhdx",
                 progress=lambda ev: events.append(ProgressEvent(ev.operation, ev.done, ev.total, ev.output_bytes,
                                                                 ev.read_bytes)))
    size = raw.stat().st_size
    assert events and all(ev.operation == "export" and ev.total == size for ev in events)
    done = [ev.done for ev in events]
    assert done == sorted(done) and done[-1] == size
    assert events[-1].output_bytes > 0 and 0 < events[-1].read_bytes <= size


def test_unreadable_ranges_are_zeros_and_reported(tmp_path: Path) -> None:
    """A rescued image (some source ranges unreadable): export says so in one warning, the JSON lists the
    ranges, and the exported disk reads zeros there."""
    from exporthelpers import rescued_image

    raw = tmp_path / "src.raw"
    data = bytearray(random.Random(12).randbytes(6 * MiB))
    raw.write_bytes(data)
    bad = (3 * MiB + 4096, 8192)
    rescued_image(raw, tmp_path / "rescued.img", bad)
    proc = cli("export", "--json", tmp_path / "rescued.img", tmp_path / "r.vhdx")
    assert "1 unreadable source ranges (8192 bytes)" in proc.stderr
    assert json.loads(proc.stdout)["bad_ranges"] == [{"offset": bad[0], "length": bad[1]}]
    data[bad[0] : bad[0] + bad[1]] = bytes(bad[1])
    raw.write_bytes(data)
    qemu_compare("vhdx", raw, tmp_path / "r.vhdx")


def test_corrupt_chunk_exit_8_nothing_left(mixed_image: tuple[Path, Path], tmp_path: Path) -> None:
    image, _raw = mixed_image
    from imaging_utility.image.reader import open_image

    with open_image(str(image)) as reader:
        index = next(i for i in range(reader.chunk_count) if not reader.is_zero_chunk(i))
        where = reader.chunk_offsets[index] + reader.chunk_csizes[index] // 2
    broken = tmp_path / "broken.img"
    raw = bytearray(image.read_bytes())
    raw[where] ^= 0x40
    broken.write_bytes(raw)
    out = tmp_path / "out"
    out.mkdir()
    _one_line_error(cli("export", broken, out / "b.qcow2", check=None), 8, f"chunk {index}")
    _nothing_left(out, set())


@pytest.mark.parametrize("fmt", ["vhdx", "qcow2", "raw"])
def test_exported_disk_leaves_the_page_cache(fmt: str, mixed_image: tuple[Path, Path], tmp_path: Path) -> None:
    """What the export wrote is dropped from the page cache once on the disk (mincore on the real file):
    a virtual disk written once must not push the machine's working set out."""
    from imagetools import resident

    image, raw = mixed_image
    out = tmp_path / f"m.{fmt}"
    cli("export", "-f", fmt, image, out)
    size = out.stat().st_size
    assert size > 8 * MiB and resident(str(out), 0, size) <= MiB
    qemu_compare(fmt, raw, out)
