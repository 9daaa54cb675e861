"""The NBD server against real clients: nbdinfo, nbdcopy, qemu-img (libnbd 1.14, qemu 7.2)."""

# ruff: noqa: F811  (pytest fixtures are imported from serve_helpers and requested by name)
from __future__ import annotations

import filecmp
import subprocess
from pathlib import Path

from serve_helpers import MiB, gpt_disk, holey, part_bytes, serve_nbd  # noqa: F401  (fixtures)

from conftest import need_tools
from imaging_utility.devices.source import FileSource
from imaging_utility.partitions import partition_source, read_partitions


def _run(*cmd: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120)
    if check and proc.returncode:
        raise AssertionError(f"{cmd} exited {proc.returncode}: {proc.stderr}")
    return proc


def _disk_exports(path: Path) -> tuple[FileSource, dict[str, object]]:
    src = FileSource(str(path))
    table = read_partitions(src)
    exports: dict[str, object] = {"": src}
    for p in table.partitions:
        exports[f"p{p.number}"] = partition_source(src, p.number, table)
    return src, exports


def test_nbdinfo_list_and_nbdcopy_every_export(serve_nbd, gpt_disk, tmp_path) -> None:  # type: ignore[no-untyped-def]
    need_tools("nbdinfo", "nbdcopy", "qemu-img")
    src, exports = _disk_exports(gpt_disk.path)
    with src:
        server = serve_nbd(exports)
        host, port = server.address
        listing = _run("nbdinfo", "--list", f"nbd://{host}:{port}").stdout
        assert 'export="p1"' in listing and 'export="p2"' in listing and 'export="":' in listing
        assert "is_read_only: true" in listing and "can_multi_conn: true" in listing
        out = tmp_path / "copy.raw"
        _run("nbdcopy", f"nbd://{host}:{port}/", out)
        assert filecmp.cmp(out, gpt_disk.path, shallow=False)
        assert "Images are identical" in _run("qemu-img", "compare", "-f", "raw", "-F", "raw",
                                              gpt_disk.path, f"nbd://{host}:{port}/").stdout
        for n in (1, 2):
            pout = tmp_path / f"p{n}.raw"
            _run("nbdcopy", f"nbd://{host}:{port}/p{n}", pout)
            assert pout.read_bytes() == part_bytes(gpt_disk, n)


def test_nbdinfo_map_shows_holes_and_nbdcopy_keeps_them_sparse(serve_nbd, holey, tmp_path) -> None:  # type: ignore[no-untyped-def]
    need_tools("nbdinfo", "nbdcopy", "qemu-img")
    holey.corrupt = []
    server = serve_nbd({"": holey})
    host, port = server.address
    lines = [ln.split() for ln in _run("nbdinfo", "--map", f"nbd://{host}:{port}/").stdout.splitlines()]
    assert lines == [["0", str(2 * MiB), "0", "data"], [str(2 * MiB), str(2 * MiB), "2", "zero"],
                     [str(4 * MiB), str(2 * MiB), "3", "hole,zero"], [str(6 * MiB), str(2 * MiB), "0", "data"]]
    qmap = _run("qemu-img", "map", "--output=json", f"nbd://{host}:{port}/").stdout  # BLOCK_STATUS REQ_ONE
    assert '"data": false' in qmap and qmap.count('"zero": true') == 2
    out = tmp_path / "holey.raw"
    _run("nbdcopy", f"nbd://{host}:{port}/", out)
    assert out.read_bytes() == holey.data
    assert out.stat().st_blocks * 512 <= 4 * MiB + 64 * 1024, "zero/hole ranges were written out"


def test_unix_socket_and_eio_through_real_clients(serve_nbd, holey, tmp_path) -> None:  # type: ignore[no-untyped-def]
    need_tools("nbdinfo", "nbdcopy")
    sock = tmp_path / "nbd.sock"
    server = serve_nbd({"": holey}, unix_path=str(sock))
    uri = f"nbd+unix:///?socket={sock}"
    assert f"export-size: {8 * MiB}" in _run("nbdinfo", uri).stdout
    failed = _run("nbdcopy", uri, tmp_path / "bad.raw", check=False)  # 7 MiB is a corrupt chunk
    assert failed.returncode != 0 and "Input/output error" in failed.stderr
    holey.corrupt = []
    _run("nbdcopy", uri, tmp_path / "good.raw")  # the server is still fine
    assert (tmp_path / "good.raw").read_bytes() == holey.data
    server.shutdown()
    assert not sock.exists()
