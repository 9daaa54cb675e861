"""Each rule of docs/image-format.md, built as a (crafted) image and checked against what the spec says,
for ``info``, ``verify``, ``restore`` and the reader alike."""

from __future__ import annotations

import hashlib
import re
import struct
import subprocess
from pathlib import Path

import pytest
import zstandard
from craft import Crafted, Frame, run_cli, skippable

from conftest import need_tools
from imagetools import image_file, mixed_bytes
from imaging_utility.devices.source import FileSource
from imaging_utility.errors import ChunkCorruptError, CorruptImageError, IncompleteImageError, UnsupportedError
from imaging_utility.extents import AllocationMap, ExtentKind
from imaging_utility.format import c_image as c
from imaging_utility.format.codec import frame_checksum, zero_frame
from imaging_utility.format.metaframe import Event
from imaging_utility.image.reader import open_image
from imaging_utility.ops.capture import CaptureOptions, capture

CH = 64 * 1024
ZERO_CHUNKS = (2, 3, 9)
BAD = [(5 * CH - 1024, 2048), (7 * CH + 512, 512)]  # the first spans chunks 4 and 5


def _source_bytes() -> bytes:
    data = bytearray(mixed_bytes(12 * CH + 1000, 5, region=8192))
    for i in ZERO_CHUNKS:
        data[i * CH : (i + 1) * CH] = bytes(CH)
    data[-1000:] = b"T" * 1000
    return bytes(data)


def _failing_reader(source: FileSource, bad: list[tuple[int, int]]):  # type: ignore[no-untyped-def]
    """A chunk reader over a real file that reports ``bad`` as unreadable (zero-filled), as --rescue does."""
    def read(offset: int, buf: memoryview) -> list[tuple[int, int]]:
        source.readinto_at(offset, buf)
        hits = []
        for o, n in bad:
            s, e = max(o, offset), min(o + n, offset + len(buf))
            if s < e:
                buf[s - offset : e - offset] = bytes(e - s)
                hits.append((s, e - s))
        return hits
    return read


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("spec")
    (d / "src").write_bytes(_source_bytes())
    image_file(d / "src", d / "full.img", chunk_size=CH, digests=("sha256", "blake3"))
    with FileSource(str(d / "src")) as src:
        opts = CaptureOptions(chunk_size=CH, identity={"kind": "file", "size": src.size}, digests=("sha256",),
                              chunk_reader=_failing_reader(src, BAD))
        capture(src, str(d / "rescue.img"), opts)
        amap = AllocationMap([(0, 2 * CH), (4 * CH, 3 * CH + 100), (11 * CH, CH + 1000)], src.size, 4096)
        capture(src, str(d / "used.img"), CaptureOptions(chunk_size=CH, identity={"kind": "file"},
                                                         allocation=amap, filesystem={"type": "test"}))
    return {"dir": d, "src": d / "src", "full": d / "full.img", "rescue": d / "rescue.img", "used": d / "used.img"}


def _refused(img: Path, tmp: Path, code: int, pattern: str, error: type[Exception] = CorruptImageError) -> None:
    """info, verify and restore exit ``code`` with one line matching ``pattern``; the reader raises."""
    for args in (("info", img), ("verify", img), ("restore", img, tmp / "out.raw")):
        got, _, err = run_cli(*args)
        assert got == code, (args[0], got, err)
        assert len(err.strip().splitlines()) == 1 and re.search(pattern, err), (args[0], err)
        assert "Traceback" not in err
    assert not (tmp / "out.raw").exists()
    with pytest.raises(error, match=pattern):
        open_image(str(img))


def _accepted(img: Path, tmp: Path, data: bytes) -> dict[str, object]:
    """Every consumer reads ``img`` as ``data``; returns ``info --json``."""
    import json

    code, out, err = run_cli("info", "--json", img)
    assert code == 0, err
    assert run_cli("verify", img)[0] == 0
    code, _, err = run_cli("restore", img, tmp / "back.raw")
    assert code == 0, err
    assert (tmp / "back.raw").read_bytes() == data
    with open_image(str(img)) as r:
        assert r.read(0, r.size) == data
    return json.loads(out)  # type: ignore[no-any-return]


# --- §2.1 the zero frame ----------------------------------------------------------------------------

def _spec_zero_frame(n: int) -> bytes:
    """Built here from the spec's words alone (RFC 8878 frame of RLE blocks)."""
    out = struct.pack("<IBBI", 0xFD2FB528, 0x84, 0x38, n)
    left = n
    while left:
        take = min(left, 131072)
        left -= take
        out += ((take << 3) | 2 | (left == 0)).to_bytes(3, "little") + b"\0"
    checksum = zstandard.ZstdCompressor(write_checksum=True).compress(bytes(n))[-4:]
    return out + checksum


def test_zero_chunks_are_the_spec_zero_frame(base: dict[str, Path]) -> None:
    crafted = Crafted.of(base["full"])
    for i in ZERO_CHUNKS:
        assert crafted.frames[crafted.data_frame(i)].raw == _spec_zero_frame(CH)
    used = Crafted.of(base["used"])
    assert used.frames[used.data_frame(12)].raw != _spec_zero_frame(1000)  # allocated: data
    assert used.frames[used.data_frame(8)].raw == _spec_zero_frame(CH)  # never read
    for n in (1, 4096, 131072, 131073, 1 << 20, (256 << 20)):
        frame = zero_frame(n)
        assert frame == _spec_zero_frame(n)
        assert len(frame) == 14 + 4 * -(-n // 131072)
    frame = zero_frame(1 << 20)
    import pyzstd

    assert pyzstd.decompress(frame) == bytes(1 << 20)
    assert zstandard.ZstdDecompressor().decompressobj().decompress(frame) == bytes(1 << 20)


def test_damaged_zero_frame_is_an_error_everywhere(base: dict[str, Path], tmp_path: Path) -> None:
    crafted = Crafted.of(base["full"])
    i = crafted.data_frame(3)
    raw = bytearray(crafted.frames[i].raw)
    raw[14 + 3] = 7  # the first RLE block's byte: same size and checksum, different content
    crafted.frames[i] = Frame(bytes(raw), crafted.frames[i].dsize, crafted.frames[i].checksum)
    img = crafted.write(tmp_path / "img")
    code, out, err = run_cli("verify", img)
    assert code == 8 and "chunk 3" in err
    code, _, err = run_cli("restore", img, tmp_path / "out.raw")
    assert code == 8 and "chunk 3" in err and len(err.strip().splitlines()) == 1
    with open_image(str(img)) as r:
        assert r.is_zero_chunk(3) and not r.zero_chunk_checked(3)
        with pytest.raises(ChunkCorruptError) as e:
            r.read(3 * CH, 10)
        assert e.value.chunk == 3
        kinds = {ext.offset // CH: ext.kind for ext in r.extents(2 * CH, 2 * CH)}
        assert kinds == {2: ExtentKind.ZERO, 3: ExtentKind.DATA}  # never announced as zeros
    code, out, _ = run_cli("info", "--json", img)
    assert code == 0 and '"zero": ' + str(2 * CH) in out.replace("\n", "")


def test_zero_chunk_in_any_other_frame_is_decoded(base: dict[str, Path], tmp_path: Path) -> None:
    """A writer that compressed zeros itself (pre-release images did): data to the layout, zeros to read."""
    crafted = Crafted.of(base["full"])
    other = zstandard.ZstdCompressor(level=3, write_checksum=True, write_content_size=True).compress(bytes(CH))
    assert other != zero_frame(CH)
    i = crafted.data_frame(2)
    crafted.frames[i] = Frame(other, CH, frame_checksum(other))
    import zlib

    t = crafted.trailer
    crcs = bytearray(t.frame_crcs or b"")
    struct.pack_into("<I", crcs, 4 * 2, zlib.crc32(other))
    crafted.trailer = type(t)(t.source_size, t.chunk_count, t.meta, t.bad_ranges, bytes(crcs))
    img = crafted.write(tmp_path / "img")
    info = _accepted(img, tmp_path, base["src"].read_bytes())
    assert info["layout_bytes"]["zero"] == 2 * CH  # type: ignore[index]


# --- §3 offsets, ranges, flags and sections ---------------------------------------------------------

def test_metadata_offsets_count_from_the_user_data(base: dict[str, Path]) -> None:
    raw = base["full"].read_bytes()
    magic, frame_size = struct.unpack_from("<II", raw, 0)
    user = raw[8 : 8 + frame_size]
    assert magic == c.HEADER_MAGIC and user[0:8] == b"IMGUTHDR"
    assert struct.unpack_from("<HHIIIQII", user, 8)[:6] == (1, 0, 0, CH, 512, 12 * CH + 1000)
    assert user[40:44] == b"META"


def test_touching_bad_ranges_are_valid(base: dict[str, Path], tmp_path: Path) -> None:
    crafted = Crafted.of(base["rescue"])
    assert crafted.trailer.bad_ranges == [(5 * CH - 1024, 1024), (5 * CH, 1024), (7 * CH + 512, 512)]
    data = bytearray(base["src"].read_bytes())
    for o, n in BAD:
        data[o : o + n] = bytes(n)
    info = _accepted(base["rescue"], tmp_path, bytes(data))
    assert info["layout_bytes"]["unreadable"] == 2560  # type: ignore[index]


def test_bad_range_past_the_source_is_corrupt(base: dict[str, Path], tmp_path: Path) -> None:
    crafted = Crafted.of(base["rescue"])
    t = crafted.trailer
    crafted.trailer = type(t)(t.source_size, t.chunk_count, t.meta, [*t.bad_ranges, (t.source_size - 10, 20)],
                              t.frame_crcs)
    _refused(crafted.write(tmp_path / "img"), tmp_path, 8, "passes the end of the source")


def test_used_only_flag_without_amap_is_corrupt(base: dict[str, Path], tmp_path: Path) -> None:
    crafted = Crafted.of(base["used"])
    h = crafted.header
    h.allocation = None
    crafted.header = h
    _refused(crafted.write(tmp_path / "img"), tmp_path, 8, "AMAP section is missing")


def test_trailer_without_a_digest_the_header_lists_is_corrupt(base: dict[str, Path], tmp_path: Path) -> None:
    crafted = Crafted.of(base["full"])
    crafted.edit_trailer_meta(digests={"sha256": crafted.trailer.meta["digests"]["sha256"]})
    _refused(crafted.write(tmp_path / "img"), tmp_path, 8, "digests disagree with the header's list.*blake3")


def test_bad_ranges_flag_without_section_is_corrupt(base: dict[str, Path], tmp_path: Path) -> None:
    import zlib

    crafted = Crafted.of(base["full"])
    i = crafted.index_of(c.TRAILER_MAGIC)[0]
    body = bytearray(crafted.frames[i].raw[8:-4])
    struct.pack_into("<I", body, 12, 1)
    crafted.frames[i] = Frame(crafted.frames[i].raw[:8] + bytes(body) + struct.pack("<I", zlib.crc32(body)))
    _refused(crafted.write(tmp_path / "img"), tmp_path, 8, "BADR section is missing")


# --- §3.2 event frames ------------------------------------------------------------------------------

def test_deleted_event_frame_is_caught(base: dict[str, Path], tmp_path: Path) -> None:
    crafted = Crafted.of(base["rescue"])
    i, _ = crafted.events()[-1]
    del crafted.frames[i]
    _refused(crafted.write(tmp_path / "img"), tmp_path, 8, "an event frame is missing or damaged")


def test_event_frame_naming_another_chunk_is_caught(base: dict[str, Path], tmp_path: Path) -> None:
    crafted = Crafted.of(base["rescue"])
    i, event = crafted.events()[-1]
    crafted.frames[i] = Frame(Event(event.chunk_index + 1, [(8 * CH, 512)]).encode())
    _refused(crafted.write(tmp_path / "img"), tmp_path, 8, "names chunk 8, but follows the data frame of chunk 7")


def test_event_frame_with_a_range_outside_its_chunk_is_caught(base: dict[str, Path], tmp_path: Path) -> None:
    crafted = Crafted.of(base["rescue"])
    i, event = crafted.events()[-1]
    crafted.frames[i] = Frame(Event(event.chunk_index, [(6 * CH, 512)]).encode())
    _refused(crafted.write(tmp_path / "img"), tmp_path, 8, "outside the chunk")


def test_event_ranges_must_equal_the_trailer_list(base: dict[str, Path], tmp_path: Path) -> None:
    crafted = Crafted.of(base["rescue"])
    t = crafted.trailer
    crafted.trailer = type(t)(t.source_size, t.chunk_count, t.meta, t.bad_ranges[:-1], t.frame_crcs)
    _refused(crafted.write(tmp_path / "img"), tmp_path, 8, "event frame is missing or damaged")


# --- §3.4 META ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("where", "key", "value"), [
    ("header", "level", 99), ("header", "level", "x"), ("header", "source", [1, 2]),
    ("trailer", "digests", ["sha256"]), ("header", "used_only", {"allocation_sha256": 5}),
])
def test_meta_of_the_wrong_type_is_exit_8_not_internal_error(base: dict[str, Path], tmp_path: Path,
                                                             where: str, key: str, value: object) -> None:
    crafted = Crafted.of(base["used"] if key == "used_only" else base["full"])
    if where == "header":
        crafted.edit_header_meta(**{key: value})
    else:
        crafted.edit_trailer_meta(**{key: value})
    _refused(crafted.write(tmp_path / "img"), tmp_path, 8, f"META key ({key}|used_only).* wrong type")


def test_every_meta_key_written_today_is_in_the_schema(base: dict[str, Path]) -> None:
    from imaging_utility.format import schema

    for name in ("full", "used"):
        crafted = Crafted.of(base[name])
        assert set(crafted.header.meta) <= set(schema.HEADER)
        assert set(crafted.trailer.meta) <= set(schema.TRAILER)
        assert set(crafted.trailer.meta["stats"]) <= set(schema.STATS)
    uo = Crafted.of(base["used"]).header.meta["used_only"]
    assert set(uo) == set(schema.USED_ONLY)


def test_unknown_meta_keys_frames_sections_and_reserved_fields_are_ignored(base: dict[str, Path],
                                                                           tmp_path: Path) -> None:
    crafted = Crafted.of(base["full"])
    crafted.edit_header_meta(future_key={"x": [1]})
    crafted.edit_trailer_meta(future_key=1)
    crafted.frames.insert(crafted.data_frame(1), skippable(0x184D2A55, b"from a later minor version"))
    crafted.frames.insert(crafted.index_of(c.TRAILER_MAGIC)[0], skippable(0x184D2A50, b""))
    h = bytearray(crafted.frames[0].raw)
    import zlib

    struct.pack_into("<I", h, 8 + 36, 0xFFFFFFFF)  # reserved
    struct.pack_into("<I", h, len(h) - 4, zlib.crc32(h[8:-4]))
    crafted.frames[0] = Frame(bytes(h))
    img = crafted.write(tmp_path / "img")
    _accepted(img, tmp_path, base["src"].read_bytes())
    need_tools("zstd")
    out = subprocess.run(["zstd", "-dc", str(img)], capture_output=True, check=True).stdout
    assert out == base["src"].read_bytes()


# --- §3.5 info's layout -----------------------------------------------------------------------------

def test_info_layout_categories(base: dict[str, Path]) -> None:
    import json

    code, out, _ = run_cli("info", "--json", base["used"])
    lay = json.loads(out)["layout_bytes"]
    assert code == 0 and sum(lay.values()) == 12 * CH + 1000
    assert lay["unallocated"] == 12 * CH + 1000 - (2 * CH + 3 * CH + 100 + CH + 1000)
    # allocated bytes in a zero-frame chunk are "zero" (chunks 2, 3 outside the map; 9 not allocated)
    assert lay["zero"] == 0 and lay["unreadable"] == 0
    lay = json.loads(run_cli("info", "--json", base["full"])[1])["layout_bytes"]
    assert lay == {"data": 10 * CH + 1000 - CH, "zero": 3 * CH, "unallocated": 0, "unreadable": 0}


# --- §7 split parts, §8 footer, versions, frame order ---------------------------------------------

def test_split_gap_is_a_missing_part_not_an_interrupted_image(base: dict[str, Path], tmp_path: Path) -> None:
    import random

    (tmp_path / "src").write_bytes(random.Random(3).randbytes(8 * CH))
    image_file(tmp_path / "src", tmp_path / "s.img", chunk_size=CH, split_size=2 * CH)
    parts = sorted(tmp_path.glob("s.img.*"))
    assert len(parts) >= 4
    parts[1].rename(tmp_path / "elsewhere")
    _refused(tmp_path / "s.img", tmp_path, 8, r"part .*s\.img\.002 is missing")
    (tmp_path / "elsewhere").rename(parts[1])
    parts[-1].unlink()
    for args in (("info", tmp_path / "s.img"), ("verify", parts[0])):
        code, _, err = run_cli(*args)
        assert code == 8 and f"the parts after it ({parts[-1]} ...) are missing" in err


def test_damaged_footer_magic_is_corrupt_not_interrupted(base: dict[str, Path], tmp_path: Path) -> None:
    raw = bytearray(base["full"].read_bytes())
    raw[-1] ^= 0x01
    (tmp_path / "img").write_bytes(raw)
    _refused(tmp_path / "img", tmp_path, 8, "footer is damaged")
    with pytest.raises(CorruptImageError) as e:
        open_image(str(tmp_path / "img"))
    assert not isinstance(e.value, IncompleteImageError)
    (tmp_path / "cut").write_bytes(raw[:-30])
    with pytest.raises(IncompleteImageError, match="interrupted"):
        open_image(str(tmp_path / "cut"))


def test_versions_higher_major_refused_higher_minor_read(base: dict[str, Path], tmp_path: Path) -> None:
    crafted = Crafted.of(base["full"])
    h = crafted.header
    h.version_major = 3
    crafted.header = h
    _refused(crafted.write(tmp_path / "img"), tmp_path, 4, r"image format 3\.0; this tool reads format 1\.x",
             UnsupportedError)
    h.version_major, h.version_minor = 1, 4
    crafted.header = h
    info = _accepted(crafted.write(tmp_path / "img"), tmp_path, base["src"].read_bytes())
    assert info["format_version"] == "1.4"
    code, out, _ = run_cli("info", base["full"])
    assert code == 0 and "image format 1.0" in out


def test_prerelease_numbering_reads_as_1_0(base: dict[str, Path], tmp_path: Path) -> None:
    crafted = Crafted.of(base["full"])
    h = crafted.header
    h.version_major = 2
    crafted.header = h
    info = _accepted(crafted.write(tmp_path / "img"), tmp_path, base["src"].read_bytes())
    assert info["format_version"] == "1.0"


def test_trailer_must_be_last_and_header_only_first(base: dict[str, Path], tmp_path: Path) -> None:
    crafted = Crafted.of(base["full"])
    crafted.frames.append(skippable(0x184D2A57, b"after the trailer"))
    _refused(crafted.write(tmp_path / "img"), tmp_path, 8, "trailer, but not the last frame")
    crafted = Crafted.of(base["full"])
    crafted.frames.insert(2, crafted.frames[0])
    _refused(crafted.write(tmp_path / "img2"), tmp_path, 8, "second header frame")


def test_restore_checks_digests_of_what_it_wrote(base: dict[str, Path], tmp_path: Path) -> None:
    code, out, err = run_cli("restore", "--verify", base["full"], tmp_path / "r.raw")
    assert code == 0, err
    assert hashlib.sha256((tmp_path / "r.raw").read_bytes()).hexdigest() in out


def test_window_source_keys_are_in_the_schema(base: dict[str, Path], tmp_path: Path) -> None:
    from imaging_utility.format import schema

    code, _, err = run_cli("image", "--chunk-size", "64K", "--offset", "64K", "--length", "128K", base["src"],
                           tmp_path / "w.img")
    assert code == 0, err
    meta = Crafted.of(tmp_path / "w.img").header.meta
    assert set(meta["source"]) <= set(schema.SOURCE)
    assert meta["source"]["window_offset"] == CH and meta["source"]["window_length"] == 2 * CH


def test_resume_refuses_a_partial_image_of_a_newer_minor_version(base: dict[str, Path], tmp_path: Path) -> None:
    crafted = Crafted.of(base["full"])
    h = crafted.header
    h.version_minor = 1
    (tmp_path / "p.img").write_bytes(h.encode() + crafted.frames[1].raw)
    code, _, err = run_cli("image", "--resume", "--chunk-size", "64K", "--hash", "sha256,blake3", base["src"],
                           tmp_path / "p.img")
    assert code == 10 and "newer version" in err


@pytest.mark.parametrize("volumes", ["x", [{"name": "vg/lv"}], [{"name": 1, "size": 1, "used_bytes": 1}]])
def test_lvm_volumes_of_the_wrong_type_are_exit_8(base: dict[str, Path], tmp_path: Path, volumes: object) -> None:
    def with_volumes(value: object) -> Crafted:
        crafted = Crafted.of(base["used"])
        uo = crafted.header.meta["used_only"]
        crafted.edit_header_meta(used_only={**uo, "filesystem": {**uo["filesystem"], "volumes": value}})
        return crafted

    _refused(with_volumes(volumes).write(tmp_path / "img"), tmp_path, 8,
             "META key used_only.filesystem.volumes has a wrong type")
    good = [{"name": "vg/root", "size": 4096, "used_bytes": 512, "filesystem": None, "note": None}]
    with open_image(str(base["used"])) as r:
        data = r.read(0, r.size)
    _accepted(with_volumes(good).write(tmp_path / "ok"), tmp_path, data)
