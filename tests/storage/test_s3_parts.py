"""Part sizing for any disk size, and parts spilled to a temporary file, against the real endpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from imaging_utility.storage import s3write
from imaging_utility.storage.s3write import MAX_PARTS, MIN_PART, image_bound, part_size_for
from storage.s3server import S3Server

MiB, GiB, TiB = 1 << 20, 1 << 30, 1 << 40


@pytest.mark.parametrize("source", [0, 1, 100 * MiB, 2 * GiB, 500 * GiB, 4 * TiB, 5 * TiB])
def test_part_size_keeps_within_s3_limits(source: int) -> None:
    part = part_size_for(image_bound(source))
    assert part >= MIN_PART and part % MiB == 0
    # every part ends at the first frame boundary past `part` (a frame is at most 256 MiB + a little)
    assert image_bound(source) // part + 1 <= MAX_PARTS
    assert part <= 5 * GiB - 257 * MiB  # a part plus one frame stays under S3's 5 GiB part limit


def test_parts_spilled_to_a_temporary_file_make_the_same_object(s3server: S3Server, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Parts larger than SPOOL (images over ~280 GiB) go through a temporary file, not memory."""
    import os

    from imaging_utility.storage import s3client

    bucket = s3server.bucket("iu-spill")
    frames = [os.urandom(700_000) for _ in range(40)]
    monkeypatch.setattr(s3write, "SPOOL", 1 * MiB)
    for k, v in s3server.env.items():
        monkeypatch.setenv(k, v)
    s3client.configure()
    try:
        sink = s3write.S3Sink(f"s3://{bucket}/spill.bin", None, 9 * MiB)
        sink.create(frames[0])
        for f in frames[1:]:
            sink.write_frame(f)
        assert sink.finish() == [f"s3://{bucket}/spill.bin"]
    finally:
        s3client.configure()
    body = s3server.client().get_object(Bucket=bucket, Key="spill.bin")["Body"].read()
    assert body == b"".join(frames)
    head = s3server.client().head_object(Bucket=bucket, Key="spill.bin")
    assert head["ETag"].strip('"').endswith("-3")  # 28 MB in parts of 9 MiB or a frame more
