"""The files against their specs, parsed here with the specs' own offsets (not our declarations).

VHDX ([MS-VHDX] v4.0): 1 MiB alignment of regions and payload blocks, both headers valid with distinct
sequence numbers, an empty log, the BAT sized by the spec's formula with its sector-bitmap slots.
VHD (spec v1.0): footer and dynamic-header checksums, CHS, creator, exact size; ``--azure`` N MiB + 512.
qcow2 v3 header and VMDK sparse/stream headers, markers and footer.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import struct
import subprocess
import uuid
from pathlib import Path

import pytest
from exporthelpers import make_image, need_export_tools, qemu_check, qemu_compare, read_dissect, read_libyal

from imagetools import mixed_bytes
from imaging_utility.export._crc32c import crc32c
from imaging_utility.ops.export import export_image

MiB = 1 << 20
SIZE = 50 * MiB + 1536  # a multiple of no block size


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    need_export_tools()
    work = tmp_path_factory.mktemp("structure")
    raw = work / "src.raw"
    raw.write_bytes(mixed_bytes(SIZE, seed=9))
    return make_image(raw, work / "src.img"), raw


def test_crc32c_check_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # RFC 3720 B.4
    assert crc32c(bytes(32)) == 0x8A9136AA


# --- VHDX ---------------------------------------------------------------------------------------------
def _vhdx_regions(data: bytes) -> dict[str, tuple[int, int]]:
    headers = []
    for off in (64 * 1024, 128 * 1024):
        head = bytearray(data[off : off + 4096])
        assert head[:4] == b"head"
        crc = struct.unpack_from("<I", head, 4)[0]
        head[4:8] = bytes(4)
        assert crc32c(head) == crc, f"header at {off:#x}: bad CRC-32C"
        seq, = struct.unpack_from("<Q", head, 8)
        log_guid = head[48:64]
        log_version, version, log_length, log_offset = struct.unpack_from("<HHIQ", head, 64)
        assert log_guid == bytes(16), "log not empty"
        assert (log_version, version) == (0, 1)
        assert log_offset >= MiB and log_offset % MiB == 0 and log_length % MiB == 0
        headers.append((seq, log_offset, log_length))
    assert headers[0][0] != headers[1][0], "both headers have the same sequence number"
    tables = [data[off : off + 65536] for off in (192 * 1024, 256 * 1024)]
    assert tables[0] == tables[1]
    table = bytearray(tables[0])
    assert table[:4] == b"regi"
    crc = struct.unpack_from("<I", table, 4)[0]
    table[4:8] = bytes(4)
    assert crc32c(table) == crc
    count, = struct.unpack_from("<I", table, 8)
    names = {uuid.UUID("2DC27766-F623-4200-9D64-115E9BFD4A08"): "bat",
             uuid.UUID("8B7CA206-4790-4B9A-B8FE-575F050F886E"): "metadata"}
    regions = {"log": (headers[0][1], headers[0][2]), "header": (0, MiB)}
    for i in range(count):
        guid, off, length, required = struct.unpack_from("<16sQII", table, 16 + 32 * i)
        name = names[uuid.UUID(bytes_le=guid)]
        assert off % MiB == 0 and length % MiB == 0 and required & 1
        regions[name] = (off, length)
    spans = sorted(regions.values())
    for (a, alen), (b, _) in itertools.pairwise(spans):
        assert a + alen <= b, f"regions overlap: {spans}"
    return regions


def _vhdx_metadata(data: bytes, off: int) -> dict[str, bytes]:
    md = data[off : off + MiB]
    assert md[:8] == b"metadata"
    count, = struct.unpack_from("<H", md, 10)
    known = {"CAA16737-FA36-4D43-B3B6-33F0AA44E76B": "params", "2FA54224-CD1B-4876-B211-5DBED83BF4B8": "size",
             "BECA12AB-B2E6-4523-93EF-C309E000C746": "page83", "8141BF1D-A96F-4709-BA47-F233A8FAAB5F": "lss",
             "CDA348C7-445D-4471-9CC9-E9885251C556": "pss"}
    items = {}
    for i in range(count):
        guid, ioff, ilen, _flags, _ = struct.unpack_from("<16sIIII", md, 32 + 32 * i)
        assert ioff >= 65536
        items[known[str(uuid.UUID(bytes_le=guid)).upper()]] = md[ioff : ioff + ilen]
    return items


@pytest.mark.parametrize(("fmt", "block", "lss"), [("vhdx", None, None), ("vhdx", "1M", 4096),
                                                    ("vhdx-fixed", "2M", None), ("vhdx", "256M", 512)])
def test_vhdx_structure(source: tuple[Path, Path], tmp_path: Path, fmt: str, block: str | None,
                        lss: int | None) -> None:
    image, raw = source
    out = tmp_path / "out.vhdx"
    block_size = {None: None, "1M": MiB, "2M": 2 * MiB, "256M": 256 * MiB}[block]
    result = export_image(str(image), str(out), fmt, block_size=block_size, logical_sector=lss)
    with open(out, "rb") as f:
        data = f.read(8 * MiB)  # header section, log, metadata and BAT (the payload is not needed)
    file_size = out.stat().st_size
    assert data[:8] == b"vhdxfile"
    regions = _vhdx_regions(data)
    items = _vhdx_metadata(data, regions["metadata"][0])
    bs, flags = struct.unpack("<II", items["params"])
    vsize, = struct.unpack("<Q", items["size"])
    sector, = struct.unpack("<I", items["lss"])
    assert bs == (block_size or 32 * MiB) and sector == (lss or 512)
    assert flags & 1 == (fmt == "vhdx-fixed")
    assert vsize == -(-SIZE // sector) * sector == result.virtual_size
    assert uuid.UUID(bytes_le=items["page83"]) == uuid.UUID(result.identity["id"])
    # BAT: entries per the spec's formula, sector-bitmap slots interleaved and NOT_PRESENT
    ratio = (1 << 23) * sector // bs
    blocks = -(-vsize // bs)
    entries = blocks + (blocks - 1) // ratio
    bat_off, bat_len = regions["bat"]
    assert bat_len >= entries * 8 and bat_len == max(MiB, -(-entries * 8 // MiB) * MiB)
    bat = struct.unpack_from(f"<{entries}Q", data, bat_off)
    used: list[tuple[int, int]] = []
    for index, entry in enumerate(bat):
        state, file_mb = entry & 7, entry >> 20
        if index % (ratio + 1) == ratio:
            assert entry == 0
            continue
        assert state in (0, 6) and entry & 0xFFFF8 == 0
        if state == 6:
            used.append((file_mb * MiB, bs))
        else:
            assert file_mb == 0
    if fmt == "vhdx-fixed":
        assert len(used) == blocks
    used.sort()
    assert used[0][0] >= max(o + n for o, n in regions.values())
    for (a, n), (b, _) in itertools.pairwise(used):
        assert a + n <= b
    assert used[-1][0] + bs <= file_size
    if lss == 4096:  # QEMU 7.2 opens only 512-byte-sector VHDX files ("Operation not supported")
        want = hashlib.sha256(raw.read_bytes() + bytes(vsize - SIZE)).hexdigest()
        assert read_libyal(fmt, out) == (vsize, want)
        assert read_dissect(fmt, out, vsize) == want
        return
    qemu_check(fmt, out)
    qemu_compare(fmt, raw, out)


# --- VHD ----------------------------------------------------------------------------------------------
def _vhd_checksum(block: bytes, field: int) -> int:
    buf = bytearray(block)
    buf[field : field + 4] = bytes(4)
    return ~sum(buf) & 0xFFFFFFFF


def _chs(sectors: int) -> tuple[int, int, int]:  # VHD spec appendix, written out again
    sectors = min(sectors, 65535 * 16 * 255)
    if sectors >= 65535 * 16 * 63:
        spt, heads = 255, 16
    else:
        spt = 17
        cth = sectors // spt
        heads = max((cth + 1023) // 1024, 4)
        if cth >= heads * 1024 or heads > 16:
            spt, heads = 31, 16
            cth = sectors // spt
        if cth >= heads * 1024:
            spt, heads = 63, 16
    return sectors // spt // heads, heads, spt


@pytest.mark.parametrize("fmt", ["vhd", "vhd-fixed", "azure"])
def test_vhd_structure(source: tuple[Path, Path], tmp_path: Path, fmt: str) -> None:
    image, raw = source
    out = tmp_path / "out.vhd"
    result = export_image(str(image), str(out), "vhd-fixed" if fmt == "azure" else fmt, azure=fmt == "azure")
    data = out.read_bytes()
    footer = data[-512:]
    assert footer[:8] == b"conectix"
    assert struct.unpack_from(">I", footer, 64)[0] == _vhd_checksum(footer, 64)
    features, version, data_offset = struct.unpack_from(">IIQ", footer, 8)
    assert (features, version) == (2, 0x10000)
    assert footer[28:32] == b"win " and footer[36:40] == b"Wi2k"
    orig, cur = struct.unpack_from(">QQ", footer, 40)
    cyl, heads, spt = struct.unpack_from(">HBB", footer, 56)
    disk_type, = struct.unpack_from(">I", footer, 60)
    assert orig == cur == result.virtual_size
    assert (cyl, heads, spt) == _chs(cur // 512)
    assert uuid.UUID(bytes=footer[68:84]) == uuid.UUID(result.identity["id"])
    if fmt == "azure":
        assert cur == 51 * MiB and len(data) == cur + 512 and cur % MiB == 0  # 50 MiB + 1536 rounded up
        assert any("rounded up" in n for n in result.notes)
    if fmt != "vhd":
        assert disk_type == 2 and data_offset == 0xFFFFFFFFFFFFFFFF
        assert len(data) == cur + 512
    else:
        assert disk_type == 3 and data_offset == 512 and data[:512] == footer
        dyn = data[512:1536]
        assert dyn[:8] == b"cxsparse"
        assert struct.unpack_from(">I", dyn, 36)[0] == _vhd_checksum(dyn, 36)
        table, _ver, entries, block = struct.unpack_from(">QIII", dyn, 16)
        assert (table, block) == (1536, 2 * MiB) and entries == -(-cur // block)
        bat = struct.unpack_from(f">{entries}I", data, table)
        for entry in bat:
            if entry != 0xFFFFFFFF:
                assert data[entry * 512 : entry * 512 + 512] == b"\xff" * 512  # sector bitmap
                assert entry * 512 + 512 + block <= len(data) - 512
    if fmt == "azure":
        padded = tmp_path / "padded.raw"
        padded.write_bytes(raw.read_bytes() + bytes(cur - SIZE))
        raw = padded
    qemu_compare(fmt if fmt != "azure" else "vhd-fixed", raw, out)


def test_azure_minimum_size(tmp_path: Path) -> None:
    need_export_tools()
    raw = tmp_path / "tiny.raw"
    raw.write_bytes(mixed_bytes(3 * MiB + 512, seed=4))
    out = tmp_path / "tiny.vhd"
    result = export_image(str(make_image(raw, tmp_path / "tiny.img")), str(out), "vhd", azure=True)
    assert result.virtual_size == 20 * MiB and out.stat().st_size == 20 * MiB + 512
    assert result.format == "vhd-fixed" and any("20 MiB" in n for n in result.notes)


# --- qcow2 and VMDK -----------------------------------------------------------------------------------
@pytest.mark.parametrize("compress", [False, True])
def test_qcow2_header(source: tuple[Path, Path], tmp_path: Path, compress: bool) -> None:
    image, _raw = source
    out = tmp_path / "out.qcow2"
    export_image(str(image), str(out), "qcow2", compress=compress)
    head = out.read_bytes()[:112]
    magic, version, _bo, _bs, cluster_bits, size = struct.unpack_from(">4sIQIIQ", head)
    assert (magic, version, cluster_bits, size) == (b"QFI\xfb", 3, 16, SIZE)
    incompat, compat, autoclear, refcount_order, header_length = struct.unpack_from(">QQQII", head, 72)
    assert (compat, autoclear, refcount_order) == (0, 0, 4)
    assert incompat == (8 if compress else 0) and header_length == (112 if compress else 104)
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(out)], capture_output=True,
                                     check=True, text=True).stdout)
    assert info["format-specific"]["data"].get("compression-type") == ("zstd" if compress else "zlib")


@pytest.mark.parametrize("stream", [False, True])
def test_vmdk_headers(source: tuple[Path, Path], tmp_path: Path, stream: bool) -> None:
    image, _raw = source
    out = tmp_path / "out.vmdk"
    result = export_image(str(image), str(out), "vmdk-stream" if stream else "vmdk")
    data = out.read_bytes()
    fields = struct.unpack_from("<4sIIQQQQIQQQB4sH", data)
    magic, version, flags, capacity, grain, desc_off, desc_size, gtes, _rgd, gd, _over, _unclean, nl, algo = fields
    assert (magic, capacity, grain, desc_off, desc_size, gtes, nl) == (
        b"KDMV", SIZE // 512, 128, 1, 20, 512, b"\n \r\n")
    descriptor = data[512 : 21 * 512].split(b"\0", 1)[0].decode()
    assert f"RW {SIZE // 512} SPARSE" in descriptor
    assert ("streamOptimized" if stream else "monolithicSparse") in descriptor
    assert result.identity["id"].replace("-", "") in descriptor  # ddb.longContentID
    if not stream:
        assert (version, flags, algo) == (1, 3, 0)
        return
    assert (version, flags, algo, gd) == (3, 0x30001, 1, 0xFFFFFFFFFFFFFFFF)
    eos, footer, marker = data[-512:], data[-1024:-512], data[-1536:-1024]
    assert eos == bytes(512)
    assert struct.unpack_from("<QII", marker) == (1, 0, 3)
    real_gd = struct.unpack_from("<4sIIQQQQIQQ", footer)[9]
    gd_marker = data[(real_gd - 1) * 512 : real_gd * 512]
    assert struct.unpack_from("<QII", gd_marker) == (1, 0, 2)
