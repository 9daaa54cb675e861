"""An NTFS volume Windows did not cleanly shut down (``filesystems/ntfs_state.py``): its ``$Bitmap`` may be
older than its ``$LogFile``, so used-only imaging refuses it (auto images it in full) and file reading
says, in one line, that it shows the files as last written in place.  The states are made as Windows and
ntfs-3g leave them: ``ntfsfix`` sets the dirty flag; restart pages are written as Windows writes them."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest

import fsbuild
from conftest import cli, need_tools
from imaging_utility.devices.source import FileSource
from imaging_utility.filesystems import ntfs
from imaging_utility.filesystems.ntfs_state import volume_state


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    need_tools(*fsbuild.TOOLS["ntfs"])
    path = tmp_path_factory.mktemp("ntfsstate") / "ntfs.raw"
    return path, fsbuild.make_ntfs(path, 48, None)


def _copy(vol: tuple[Path, dict[str, str]], tmp_path: Path) -> Path:
    path = tmp_path / "vol.raw"
    path.write_bytes(vol[0].read_bytes())
    return path


def _logfile_offset(path: Path) -> int:
    with FileSource(str(path)) as src:
        boot = ntfs.probe(src)
        assert boot is not None
        off = ntfs._record_offset(src, boot, 2)
        runs = ntfs._unnamed_data(ntfs._read_record(src, boot, off), off).runs
        assert runs[0][0] is not None and runs[0][1] * boot.cluster_size >= 8192
        return runs[0][0] * boot.cluster_size


def _restart_page(*, lsn: int, in_use: int, flags: int, magic: bytes = b"RSTR", torn: bool = False) -> bytes:
    """A 4 KiB restart page as Windows writes it: update sequence array at 0x1E (usn, then the 8 saved
    sector ends), restart area at 0x30."""
    page = bytearray(4096)
    struct.pack_into("<4sHHQIIHhh", page, 0, magic, 0x1E, 9, 0, 4096, 4096, 0x30, 1, 1)
    struct.pack_into("<QHHHH", page, 0x30, lsn, 1, 0xFFFF, in_use, flags)
    struct.pack_into("<H", page, 0x1E, 7)
    for j in range(8):
        struct.pack_into("<H", page, 510 + 512 * j, 7 if not (torn and j == 5) else 8)
    return bytes(page)


def _write_log(path: Path, *pages: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(_logfile_offset(path))
        f.write(b"".join(pages))


def _state(path: Path) -> str | None:
    with FileSource(str(path)) as src:
        boot = ntfs.probe(src)
        assert boot is not None
        return volume_state(src, boot)


def test_a_fresh_volume_is_clean(clean: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    assert _state(clean[0]) is None
    proc = cli("ls", clean[0], "/")
    assert "warning" not in proc.stderr, proc.stderr


def test_dirty_flag_refuses_used_only_and_warns_on_reading(clean: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    path = _copy(clean, tmp_path)
    subprocess.run(["ntfsfix", str(path)], check=True, capture_output=True)  # marks it for chkdsk
    assert "marked dirty" in (_state(path) or "")
    proc = cli("image", "--used-only", path, tmp_path / "x.img", check=4)
    assert proc.stderr.count("\n") == 1 and "$Volume is marked dirty" in proc.stderr, proc.stderr
    out = cli("image", "--used-only=auto", path, tmp_path / "x.img")
    assert "marked dirty" in out.stderr
    proc = cli("extract", path, "/", tmp_path / "out")
    assert proc.stderr.count("warning: ntfs: its $Volume is marked dirty") == 1, proc.stderr
    assert fsbuild.hash_dir(tmp_path / "out") == {k: v for k, v in clean[1].items() if ":" not in k}  # no streams
    assert "not mapped: NTFS boot sector found but its $Volume is marked dirty" in cli("info", path).stdout


def _page(lsn: int, in_use: int, flags: int, magic: bytes = b"RSTR", torn: bool = False) -> bytes:
    return _restart_page(lsn=lsn, in_use=in_use, flags=flags, magic=magic, torn=torn)


@pytest.mark.parametrize(("pages", "unclean"), [
    ((_page(9, 0, 0), _page(8, 0, 0)), True),  # Fast Startup, hibernation, a crash
    ((_page(9, 0, 2), _page(8, 0, 2)), False),  # shut down cleanly
    ((_page(9, 0xFFFF, 0), _page(8, 0xFFFF, 0)), False),  # no client
    ((_page(8, 0, 0), _page(9, 0, 2)), False),  # the newer page counts
    ((_page(9, 0, 2), _page(8, 0, 0)), False),
    ((_page(9, 0, 0, torn=True), _page(8, 0, 2)), False),  # a torn page is no restart page
    ((_page(9, 0, 2, b"CHKD"), _page(8, 0, 2, b"CHKD")), True),  # chkdsk left it
], ids=["unclean", "clean", "no-client", "newer-clean", "newer-clean-first", "torn-first", "chkdsk"])
def test_logfile_restart_pages(pages: tuple[bytes, bytes], unclean: bool, clean: tuple[Path, dict[str, str]],
                               tmp_path: Path) -> None:
    path = _copy(clean, tmp_path)
    _write_log(path, *pages)
    state = _state(path)
    if not unclean:
        assert state is None
        cli("image", "--used-only", path, tmp_path / "x.img")
        return
    assert state is not None and "$LogFile is not clean" in state
    proc = cli("image", "--used-only", path, tmp_path / "x.img", check=4)
    assert "its $LogFile is not clean (Windows did not cleanly shut it down" in proc.stderr, proc.stderr
    proc = cli("ls", path, "/")
    assert proc.stderr.count("warning: ntfs: its $LogFile is not clean") == 1, proc.stderr


def test_a_damaged_logfile_cannot_vouch_for_the_bitmap(clean: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    path = _copy(clean, tmp_path)
    _write_log(path, bytes(range(256)) * 32)
    assert "has no valid restart page" in (_state(path) or "")
    proc = cli("image", "--used-only", path, tmp_path / "x.img", check=4)
    assert proc.stderr.count("\n") == 1 and "no valid restart page" in proc.stderr, proc.stderr


@pytest.mark.parametrize(("head", "hibernated"), [(b"HIBR", True), (b"hibr", True), (b"\0\0\0\0", False)])
def test_hibernated_windows(head: bytes, hibernated: bool, tmp_path: Path) -> None:
    """A hiberfil.sys that begins with a hibernation signature (ntfs-3g refuses to mount it read-write);
    one that was resumed from (zeros) is no obstacle."""
    need_tools(*fsbuild.TOOLS["ntfs"])
    vol = tmp_path / "ntfs.raw"
    fsbuild.random_image(vol, 48)
    subprocess.run(["mkntfs", "-F", "-Q", "-q", str(vol)], check=True, capture_output=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["ntfs-3g", str(vol), str(mnt)], check=True, capture_output=True)
    try:
        (mnt / "hiberfil.sys").write_bytes(head + bytes(8188))
        (mnt / "other.txt").write_text("kept\n")
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    if not hibernated:
        assert _state(vol) is None
        return
    assert "Windows is hibernated" in (_state(vol) or "")
    proc = cli("image", "--used-only", vol, tmp_path / "x.img", check=4)
    assert proc.stderr.count("\n") == 1 and "Windows is hibernated on it (hiberfil.sys" in proc.stderr
    proc = cli("extract", vol, "/other.txt", tmp_path / "out")
    assert proc.stderr.count("warning: ntfs: Windows is hibernated") == 1, proc.stderr
    assert (tmp_path / "out" / "other.txt").read_text() == "kept\n"
