"""Builders of hostile volumes (real mkfs + debugfs/mtools/ntfs-3g, then edited as an attacker would)
and helpers to run the CLI and the WebDAV server as real processes, measuring their memory."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import fsbuild
from conftest import need_root, need_tools
from files.filehelpers import need
from imaging_utility.devices.source import FileSource
from imaging_utility.filesystems.tree import open_tree

MiB = 1 << 20


_MEASURE = """\
import resource, subprocess, sys
code = subprocess.run(sys.argv[1:]).returncode
sys.stderr.write(f"PEAK_RSS_KIB={resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}\\n")
sys.exit(code)
"""


def run_measured(*args: str | os.PathLike[str], timeout: float = 300) -> tuple[int, str, str, int]:
    """``imaging-utility ARGS`` as a process: (exit code, stdout, stderr, peak RSS in bytes).

    Started from a small wrapper process: a child's peak RSS counts the pages of the process it was
    forked from, and a test runner that has run for a while is large."""
    proc = subprocess.run([sys.executable, "-c", _MEASURE, sys.executable, "-m", "imaging_utility",
                           *map(str, args)], capture_output=True, text=True, timeout=timeout)
    err, _, peak = proc.stderr.rpartition("PEAK_RSS_KIB=")
    return proc.returncode, proc.stdout, err, int(peak) * 1024


def vm_hwm(pid: int) -> int:
    """Peak resident memory of a running process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


class DavServer:
    def __init__(self, proc: subprocess.Popen[str], url: str, log: Path) -> None:
        self.proc, self.url, self.log = proc, url, log

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def dav_server(tmp: Path, *args: str | os.PathLike[str]) -> Iterator[DavServer]:
    """``imaging-utility webdav ARGS --port 0`` as a process, its stderr in a file (a pipe nobody reads
    could fill up and stall it); stopped after, and its stderr must hold no traceback."""
    log = tmp / f"webdav-{time.monotonic_ns()}.log"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "imaging_utility", "webdav", *map(str, args), "--port", "0"],
                                stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.search(r"(http://[^ ;]+/)", line)
        assert m, f"webdav did not start: {line!r} {log.read_text()}"
        server = DavServer(proc, m.group(1), log)
        yield server
        assert proc.poll() is None, "the server died"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()
    assert "Traceback" not in log.read_text(errors="replace"), log.read_text(errors="replace")


def hostile_ext(tmp: Path) -> tuple[Path, dict[str, bytes]]:
    """ext4 (1 KiB blocks, 32 MiB) where ``/f``'s extent points to block 300000, far past the volume's
    32768, and directory ``/d`` claims 8 GiB (``sif /d size 0x200000000``).  Returns the volume and
    the files that must still come out whole."""
    need_tools("mke2fs", "debugfs")
    tree = tmp / "tree"
    (tree / "d").mkdir(parents=True)
    rnd = __import__("random").Random(9)
    good = {"g.bin": rnd.randbytes(100_000), "ok.txt": b"fine\n"}
    for i in range(20):
        good[f"d/n{i:02d}.txt"] = f"entry {i}\n".encode()
    for rel, data in good.items():
        (tree / rel).write_bytes(data)
    (tree / "f.bin").write_bytes(rnd.randbytes(64 * 1024))
    vol = tmp / "hostile-ext.raw"
    fsbuild.random_image(vol, 32)
    fsbuild._run("mke2fs", "-q", "-F", "-t", "ext4", "-b", "1024", "-E", "nodiscard", "-d", tree, vol)
    fsbuild._run("debugfs", "-w", "-f", "-", vol,
                 stdin=b"sif /f.bin block[5] 300000\nsif /d size 0x200000000\n")
    return vol, good


def _rewrite_record(vol: Path, offset: int, size: int, edit: object) -> None:
    """Edit an NTFS MFT record with its update sequence undone and redone, as NTFS writes it."""
    with open(vol, "r+b") as f:
        f.seek(offset)
        rec = bytearray(f.read(size))
        usa_ofs, usa_count = int.from_bytes(rec[4:6], "little"), int.from_bytes(rec[6:8], "little")
        usn = bytes(rec[usa_ofs : usa_ofs + 2])
        for j in range(usa_count - 1):
            end = (j + 1) * 512
            rec[end - 2 : end] = rec[usa_ofs + 2 + 2 * j : usa_ofs + 4 + 2 * j]
        edit(rec)  # type: ignore[operator]
        for j in range(usa_count - 1):
            end = (j + 1) * 512
            rec[usa_ofs + 2 + 2 * j : usa_ofs + 4 + 2 * j] = rec[end - 2 : end]
            rec[end - 2 : end] = usn
        f.seek(offset)
        f.write(rec)


def hostile_ntfs(tmp: Path) -> tuple[Path, dict[str, bytes]]:
    """NTFS (mkntfs, files written through ntfs-3g) where ``/neg.bin``'s data run has a negative LCN."""
    need_tools("mkntfs", "ntfs-3g")
    need_root()
    rnd = __import__("random").Random(10)
    vol = tmp / "hostile-ntfs.raw"
    fsbuild.random_image(vol, 16)
    fsbuild._run("mkntfs", "-F", "-Q", vol)
    good = {"good.bin": rnd.randbytes(150_000), "small.txt": b"resident\n"}
    with fsbuild.mounted(vol, "ntfs") as mnt:
        (mnt / "neg.bin").write_bytes(rnd.randbytes(150_000))
        for name, data in good.items():
            (mnt / name).write_bytes(data)
    from imaging_utility.devices.source import FileSource
    from imaging_utility.filesystems import ntfs
    from imaging_utility.filesystems.tree import open_tree

    with FileSource(str(vol)) as src:
        number = open_tree(src).stat("/neg.bin").inode
        boot = ntfs.probe(src)
        assert boot is not None and number is not None
        offset = ntfs._record_offset(src, boot, number)
        size = boot.record_size

    def negative_lcn(rec: bytearray) -> None:
        pos = int.from_bytes(rec[0x14:0x16], "little")
        while int.from_bytes(rec[pos : pos + 4], "little") != 0x80:
            pos += int.from_bytes(rec[pos + 4 : pos + 8], "little")
        assert rec[pos + 8] == 1  # non-resident
        head = pos + int.from_bytes(rec[pos + 0x20 : pos + 0x22], "little")
        nlen, noff = rec[head] & 0x0F, rec[head] >> 4
        at = head + 1 + nlen
        rec[at : at + noff] = (-7).to_bytes(noff, "little", signed=True)

    _rewrite_record(vol, offset, size, negative_lcn)
    return vol, good


def hostile_fat(tmp: Path) -> tuple[Path, dict[str, bytes]]:
    """FAT32 (mkfs.vfat + mcopy) whose root holds an entry named ``..`` (edited short name) and a long
    name with an unpaired UTF-16 surrogate (0xD800 written over its first character)."""
    need_tools("mkfs.vfat", "mcopy")
    vol = tmp / "hostile-fat.raw"
    fsbuild.random_image(vol, 40)
    fsbuild._run("mkfs.vfat", "-F", "32", "-s", "1", vol)
    files = {"DOTDOT": b"was DOTDOT\n", "longname-with-surrogate.txt": b"odd name\n", "plain.txt": b"plain\n",
             "big.bin": __import__("random").Random(4).randbytes(300_000)}
    with tempfile.TemporaryDirectory() as t:
        for name, data in files.items():
            Path(t, name).write_bytes(data)
            fsbuild._run("mcopy", "-i", vol, Path(t, name), f"::/{name}")
    data = bytearray(vol.read_bytes())
    pos = data.find(b"DOTDOT     ")
    data[pos : pos + 11] = b"..         "
    lfn = "longn".encode("utf-16-le")  # the first five characters: Name1 of the first long entry
    pos = data.find(lfn)
    assert pos > 0 and data[pos - 1] == 0x01  # the long-name entry holding characters 1-13
    data[pos : pos + 2] = b"\x00\xd8"
    vol.write_bytes(bytes(data))
    return vol, files


# ext4 names created as placeholders, then rewritten in the directory block to what an attacker would write
EXT_HOSTILE = {
    "AAAAAAAAAAAAAAAAAAAAAAAA01": b"..",
    "AAAAAAAAAAAAAAAAAAAAAAAA02": b"../../../../tmp/escape",
    "AAAAAAAAAAAAAAAAAAAAAAAA03": b"ctl\x01\x1b[31mred\x7f",
    "AAAAAAAAAAAAAAAAAAAAAAAA04": b"bad\xff\xfeutf8",
    "AAAAAAAAAAAAAAAAAAAAAAAA05": b"/abs",
    "B" * 255: "€".encode() * 85,
}


def _rewrite_ext_name(vol: Path, old: str, new: bytes) -> None:
    """Overwrite a directory entry's name (and name_len) in place; ext4_dir_entry_2 = inode, rec_len, len, type."""
    data = vol.read_bytes()
    pos = data.find(old.encode())
    assert pos > 0 and data.find(old.encode(), pos + 1) == -1, old
    with open(vol, "r+b") as f:
        f.seek(pos - 2)
        f.write(bytes([len(new)]))
        f.seek(pos)
        f.write(new.ljust(len(old), b"\0"))


def hostile_ext_names(tmp: Path) -> Path:
    """ext4 with the ``EXT_HOSTILE`` names, two symlinks out of the tree (``/abs-link``, ``/rel-link``) and
    a directory loop (``d1/LOOPLOOPLOOPLOOP`` is ``d1``)."""
    need("ext")
    src = tmp / "src"
    (src / "d1" / "d2").mkdir(parents=True)
    for i, name in enumerate(EXT_HOSTILE):
        (src / name).write_bytes(f"payload {i}\n".encode())
    (src / "d1" / "LOOPLOOPLOOPLOOP").mkdir()
    (src / "d1" / "ok.txt").write_text("fine\n")
    vol = tmp / "hostile-ext.raw"
    fsbuild.random_image(vol, 16)
    fsbuild._run("mke2fs", "-q", "-F", "-t", "ext4", "-E", "nodiscard", "-d", src, vol)
    fsbuild._run("debugfs", "-w", "-f", "-", vol,
                 stdin=b"symlink /abs-link /etc/passwd\nsymlink /rel-link ../../../../etc/shadow\n")
    for old, new in EXT_HOSTILE.items():
        _rewrite_ext_name(vol, old, new)
    # d1/LOOPLOOPLOOPLOOP now points at d1 itself: a directory loop
    with FileSource(str(vol)) as source:
        d1 = open_tree(source).stat("/d1").inode
    assert d1 is not None
    data = vol.read_bytes()
    pos = data.find(b"LOOPLOOPLOOPLOOP")
    with open(vol, "r+b") as f:
        f.seek(pos - 8)
        f.write(d1.to_bytes(4, "little"))
    return vol
