"""Golden vectors (docs/image-format.md §12): committed images that every later version must read the same.

Any changed byte of a committed image, decoded byte, digest or metadata field fails here; so does a
writer that no longer writes them the same way."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from golden_lib import GOLDEN, RECIPES, image_paths, parse, write_image

from conftest import need_tools
from imagetools import run_cli
from imaging_utility.extents import ExtentKind
from imaging_utility.image.reader import open_image

EXPECTED: dict[str, Any] = json.loads((GOLDEN / "expected.json").read_text())
NAMES = sorted(EXPECTED)


def test_the_vectors_cover_what_the_spec_promises() -> None:
    assert sorted(r.name for r in RECIPES) == NAMES
    total = sum(p.stat().st_size for p in GOLDEN.iterdir())
    assert total < 1 << 20
    kinds = {name: EXPECTED[name] for name in NAMES}
    assert any(v["header"]["fixed"][2] & 1 for v in kinds.values())  # used-only
    assert any(len(v["files"]) > 1 for v in kinds.values())  # split
    assert any(v["events"] for v in kinds.values())  # rescue: event frames
    assert {v["header"]["fixed"][3] for v in kinds.values()} >= {64 << 10, 128 << 10, 1 << 20}
    assert {d for v in kinds.values() for d in v["header"]["meta"]["digests"]} == {"sha256", "blake3", "md5"}
    assert any(not v["header"]["meta"]["digests"] for v in kinds.values())
    zero = [v["layout"]["zero"] for v in kinds.values()]
    assert all(z >= 0 for z in zero) and any(z % (64 << 10) for z in zero)  # a short zero chunk too


@pytest.mark.parametrize("name", NAMES)
def test_golden_bytes_parse_as_recorded(name: str) -> None:
    assert parse(image_paths(name)) == EXPECTED[name]


@pytest.mark.parametrize("name", NAMES)
def test_golden_images_read_the_same_by_every_consumer(name: str, tmp_path: Path) -> None:
    exp = EXPECTED[name]
    paths = image_paths(name)
    major, minor, flags, chunk_size, sector_size, source_size = exp["header"]["fixed"][:6]
    with open_image(str(paths[0])) as r:
        h = r.header
        assert (h.version_major, h.version_minor, h.flags, h.chunk_size, h.sector_size, h.source_size) == (
            major, minor, flags, chunk_size, sector_size, source_size)
        assert r.metadata == {"header": exp["header"]["meta"], "trailer": exp["trailer"]["meta"]}
        assert [[o, o + n] for o, n in r.bad_ranges] == exp["trailer"]["badr"]
        amap = [[e.offset, e.end] for e in r.allocation] if r.allocation is not None else []
        assert amap == exp["header"]["amap"]
        assert r.chunk_count == len(exp["chunk_sha256"])
        whole = hashlib.sha256()
        for i, want in enumerate(exp["chunk_sha256"]):
            data = r.read(i * chunk_size, chunk_size)
            assert hashlib.sha256(data).hexdigest() == want, f"chunk {i}"
            whole.update(data)
        assert whole.hexdigest() == exp["source_sha256"]
        layout = {k.value: 0 for k in ExtentKind}
        for ext in r.chunk_map():
            layout[ext.kind.value] += ext.length
        assert layout == exp["layout"]
        report = r.verify()
        assert report.ok and set(report.digests) == set(exp["trailer"]["meta"]["digests"])
    code, out, err = run_cli("info", "--json", paths[0])
    assert code == 0, err
    info = json.loads(out)
    assert info["format_version"] == "1.0" and info["layout_bytes"] == exp["layout"]
    assert info["digests"] == exp["trailer"]["meta"]["digests"]
    code, _, err = run_cli("restore", paths[0], tmp_path / "out.raw")
    assert code == 0, err
    assert hashlib.sha256((tmp_path / "out.raw").read_bytes()).hexdigest() == exp["source_sha256"]


@pytest.mark.parametrize("name", NAMES)
def test_golden_images_read_by_stock_tools(name: str) -> None:
    need_tools("zstd")
    exp = EXPECTED[name]
    raw = b"".join(p.read_bytes() for p in image_paths(name))
    out = subprocess.run(["zstd", "-dc"], input=raw, capture_output=True, check=True).stdout
    assert hashlib.sha256(out).hexdigest() == exp["source_sha256"]
    import pyzstd

    with pyzstd.SeekableZstdFile(io.BytesIO(raw)) as f:
        assert hashlib.sha256(f.read()).hexdigest() == exp["source_sha256"]


def _without(image: dict[str, Any], *, frames: bool) -> dict[str, Any]:
    """What must not change when the same source is imaged again today: everything but the files' hashes
    and the tool's version (and, with another zstd library, the data frames' compressed bytes)."""
    out = copy.deepcopy(image)
    del out["files"]
    out["header"]["meta"].pop("tool")
    out["header"]["meta"].pop("zstd_library")
    if not frames:
        del out["trailer"]["fcrc"]
        zero_len = lambda n: 14 + 4 * -(-n // 131072)  # noqa: E731  (a zero frame keeps its bytes)
        out["seek_table"] = [e if not e[1] or e[0] == zero_len(e[1]) else [None, e[1], e[2]]
                             for e in out["seek_table"]]
    return out


@pytest.mark.parametrize("name", NAMES)
def test_the_writer_still_writes_the_golden_images(name: str, tmp_path: Path) -> None:
    exp = EXPECTED[name]
    recipe = next(r for r in RECIPES if r.name == name)
    with open_image(str(image_paths(name)[0])) as r:
        source = r.read(0, r.size)
        amap = [(e.offset, e.length) for e in r.allocation] if r.allocation is not None else None
        uo = r.header.meta.get("used_only") or {}
    write_image(recipe, source, tmp_path / f"{name}.img", amap, uo.get("filesystem"), uo.get("cluster_size", 512))
    got = parse(image_paths(name, tmp_path))
    from imaging_utility.format.codec import zstd_library_version

    same_zstd = exp["header"]["meta"]["zstd_library"] == zstd_library_version()
    assert _without(got, frames=same_zstd) == _without(exp, frames=same_zstd)
