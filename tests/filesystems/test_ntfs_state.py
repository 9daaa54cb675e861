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
from imaging_utility.filesystems import ntfs, ntfs_index, ntfs_state
from imaging_utility.filesystems.ntfs_index import Undecided, _root_matches, first_bytes_in_root
from imaging_utility.filesystems.ntfs_record import MftRecords
from imaging_utility.filesystems.ntfs_state import _hibernated_dissect, volume_state


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


def _ntfs_with_root(tmp_path: Path, files: dict[str, bytes]) -> Path:
    need_tools(*fsbuild.TOOLS["ntfs"])
    vol = tmp_path / "ntfs.raw"
    fsbuild.random_image(vol, 48)
    subprocess.run(["mkntfs", "-F", "-Q", "-q", str(vol)], check=True, capture_output=True)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["ntfs-3g", str(vol), str(mnt)], check=True, capture_output=True)
    try:
        for name, data in files.items():
            (mnt / name).write_bytes(data)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    return vol


def _crowd(n: int, pad: int = 40) -> dict[str, bytes]:
    """``n`` small files in the root: its index then lives in INDX blocks, not in the record.  With 400
    names padded by 30, ntfs-3g moves the root's ``$INDEX_ROOT`` into an extension record, named by an
    ``$ATTRIBUTE_LIST``."""
    return {f"file-{i}-{'x' * pad}.txt": b"%d\n" % i for i in range(1, n + 1)}


def _has_attribute_list(src: FileSource, boot: ntfs.NtfsBoot) -> bool:
    off = MftRecords(src, boot).offset(ntfs_index.FILE_ROOT)
    assert off is not None
    return ntfs_index._collect(ntfs._read_record(src, boot, off), {}) is not None


@pytest.mark.parametrize(("crowd", "pad"), [(0, 0), (400, 40), (400, 30)],
                         ids=["small-root", "root-in-index-blocks", "root-with-attribute-list"])
@pytest.mark.parametrize(("head", "hibernated"), [(b"HIBR", True), (b"hibr", True), (b"\0\0\0\0", False)])
def test_hibernated_windows(head: bytes, hibernated: bool, crowd: int, pad: int, tmp_path: Path) -> None:
    """A hiberfil.sys that begins with a hibernation signature (ntfs-3g refuses to mount it read-write);
    one that was resumed from (zeros) is no obstacle.  The root index is read by our own lookup, which
    agrees with dissect's."""
    files = {**_crowd(crowd, pad), "hiberfil.sys": head + bytes(8188), "other.txt": b"kept\n"}
    vol = _ntfs_with_root(tmp_path, files)
    with FileSource(str(vol)) as src:
        boot = ntfs.probe(src)
        assert boot is not None
        assert _has_attribute_list(src, boot) is (pad == 30)
        assert first_bytes_in_root(src, boot, "HIBERFIL.SYS", 4) == head  # decided without dissect
        assert _hibernated_dissect(src) is hibernated
    if not hibernated:
        assert _state(vol) is None
        return
    assert "Windows is hibernated" in (_state(vol) or "")
    proc = cli("image", "--used-only", vol, tmp_path / "x.img", check=4)
    assert proc.stderr.count("\n") == 1 and "Windows is hibernated on it (hiberfil.sys" in proc.stderr
    proc = cli("extract", vol, "/other.txt", tmp_path / "out")
    assert proc.stderr.count("warning: ntfs: Windows is hibernated") == 1, proc.stderr
    assert (tmp_path / "out" / "other.txt").read_text() == "kept\n"


def _hiberfil_record(vol: Path) -> int:
    """Disk offset of hiberfil.sys's MFT record."""
    with FileSource(str(vol)) as src:
        boot = ntfs.probe(src)
        assert boot is not None
        records = MftRecords(src, boot)
        (number, _seq), = _root_matches(records, "hiberfil.sys")
        off = records.offset(number)
        assert off is not None
        return off


@pytest.mark.parametrize("change", ["not-in-use", "reused"])
def test_a_stale_root_entry_is_not_the_hibernation_file(change: str, tmp_path: Path) -> None:
    """An index entry whose record was freed, or reused by another file (its sequence number moved on),
    does not name a hiberfil.sys."""
    vol = _ntfs_with_root(tmp_path, {**_crowd(400), "hiberfil.sys": b"HIBR" + bytes(8188)})
    at = _hiberfil_record(vol)
    with vol.open("r+b") as f:
        f.seek(at + 0x10)
        seq, flags = struct.unpack("<H4xH", f.read(8))
        f.seek(at + 0x10)
        f.write(struct.pack("<H4xH", seq + 1, flags) if change == "reused" else struct.pack("<H4xH", seq, flags & ~1))
    with FileSource(str(vol)) as src:
        boot = ntfs.probe(src)
        assert boot is not None
        assert first_bytes_in_root(src, boot, "hiberfil.sys", 4) is None
    assert _state(vol) is None


def test_a_damaged_root_index_block_is_left_to_dissect(tmp_path: Path) -> None:
    """An index block in use that fails its check is not read as "no such file": the lookup says it
    cannot decide, and the check falls back to dissect."""
    vol = _ntfs_with_root(tmp_path, {**_crowd(400), "hiberfil.sys": b"HIBR" + bytes(8188)})
    data = bytearray(vol.read_bytes())
    first = data.find(b"INDX", 0)
    while first >= 0 and "hiberfil".encode("utf-16-le") not in data[first : first + 4096]:
        first = data.find(b"INDX", first + 1)
    assert first >= 0
    data[first + 510] ^= 0xFF  # the first sector's update-sequence bytes: the block is torn
    vol.write_bytes(bytes(data))
    with FileSource(str(vol)) as src:
        boot = ntfs.probe(src)
        assert boot is not None
        with pytest.raises(Undecided, match="fails its fixup check"):
            first_bytes_in_root(src, boot, "hiberfil.sys", 4)
        assert ntfs_state._hibernated(src, boot) is _hibernated_dissect(src)
