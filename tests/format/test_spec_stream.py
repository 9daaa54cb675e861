"""The spec's rules hold for an image read once from standard input (``restore -``), as for files.

A stream has no seek table to lean on until its end, so ``restore -`` checks each frame as it comes:
META types (on decode), a damaged zero frame (compared byte for byte), event frames against the chunk
before them and, at the end, against the trailer's list, and the trailer's digests against the
header's list.  The golden vectors restore byte-exact from a pipe.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from craft import Crafted, Frame
from golden_lib import image_paths
from test_spec_rules import CH, base  # noqa: F401  (the module's images)

from imaging_utility.format.metaframe import Event

EXPECTED: dict[str, Any] = json.loads((Path(__file__).parent / "golden" / "expected.json").read_text())


def _restore_stdin(image: bytes, out: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "imaging_utility", "restore", "-", str(out)], input=image,
                          capture_output=True, timeout=120)


def _refused(image: bytes, tmp: Path, pattern: str) -> None:
    proc = _restore_stdin(image, tmp / "out.raw")
    err = proc.stderr.decode()
    assert proc.returncode == 8, err
    assert len(err.strip().splitlines()) == 1 and pattern in err and "Traceback" not in err, err


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_golden_vectors_restore_byte_exact_from_a_pipe(name: str, tmp_path: Path) -> None:
    image = b"".join(p.read_bytes() for p in image_paths(name))
    proc = _restore_stdin(image, tmp_path / "out.raw")
    assert proc.returncode == 0, proc.stderr
    assert hashlib.sha256((tmp_path / "out.raw").read_bytes()).hexdigest() == EXPECTED[name]["source_sha256"]


def test_damaged_zero_frame(base: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    crafted = Crafted.of(base["full"])
    i = crafted.data_frame(3)
    raw = bytearray(crafted.frames[i].raw)
    raw[14 + 3] = 7  # same size and checksum as the zero frame, other content
    crafted.frames[i] = Frame(bytes(raw), crafted.frames[i].dsize, crafted.frames[i].checksum)
    _refused(crafted.image(), tmp_path, "chunk 3")


def test_meta_of_the_wrong_type(base: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    crafted = Crafted.of(base["full"])
    crafted.edit_header_meta(level="x")
    _refused(crafted.image(), tmp_path, "META key level has a wrong type")


def test_trailer_without_a_listed_digest(base: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    crafted = Crafted.of(base["full"])
    crafted.edit_trailer_meta(digests={"sha256": crafted.trailer.meta["digests"]["sha256"]})
    _refused(crafted.image(), tmp_path, "digests disagree with the header's list (missing blake3)")


def test_deleted_event_frame(base: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    crafted = Crafted.of(base["rescue"])
    i, _ = crafted.events()[-1]
    del crafted.frames[i]
    _refused(crafted.image(), tmp_path, "an event frame is missing or damaged")


def test_event_frame_naming_another_chunk(base: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    crafted = Crafted.of(base["rescue"])
    i, event = crafted.events()[-1]
    crafted.frames[i] = Frame(Event(event.chunk_index + 1, [(8 * CH, 512)]).encode())
    _refused(crafted.image(), tmp_path, "names chunk 8, but follows the data frame of chunk 7")


def test_event_frame_with_a_range_outside_its_chunk(base: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    crafted = Crafted.of(base["rescue"])
    i, event = crafted.events()[-1]
    crafted.frames[i] = Frame(Event(event.chunk_index, [(6 * CH, 512)]).encode())
    _refused(crafted.image(), tmp_path, "outside the chunk")
