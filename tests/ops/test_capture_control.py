"""Pause, resume and cancel at engine level, and what the progress events report about the pipeline."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from imagetools import data_frames, image_file, mixed_bytes, sparse_file
from imaging_utility.devices.source import FileSource
from imaging_utility.devices.throttle import Throttle
from imaging_utility.errors import Interrupted
from imaging_utility.extents import AllocationMap
from imaging_utility.image.reader import open_image
from imaging_utility.image.verify import verify_image
from imaging_utility.ops.capture import CaptureOptions, CaptureResult, capture
from imaging_utility.ops.restore import restore
from imaging_utility.progress import COMPRESSION, RATE_LIMIT, JobControl, ProgressEvent, Throttled

MiB = 1 << 20


class CountingSource(FileSource):
    """A real file source that counts its reads (what "nothing is read while paused" is checked with)."""

    reads = 0

    def readinto_at(self, offset: int, buf: memoryview | bytearray) -> None:  # type: ignore[override]
        self.reads += 1
        super().readinto_at(offset, buf)


def run_capture(src: Path, dest: Path, control: JobControl, on_event: object, **opts: object) -> CaptureResult:
    with CountingSource(str(src)) as source:
        options = CaptureOptions(identity={"kind": "file", "size": source.size}, **opts)  # type: ignore[arg-type]
        return capture(source, str(dest), options, on_event, control)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("control")
    src = d / "src.raw"
    src.write_bytes(mixed_bytes(24 * MiB, seed=41))
    ref = d / "ref.img"
    image_file(src, ref, chunk_size=256 * 1024)
    return src, ref


def test_pause_stops_reads_and_writes_then_resumes_identically(tmp_path: Path, source: tuple[Path, Path]) -> None:
    src, ref = source
    dest = tmp_path / "img"
    control = JobControl()
    seen: list[ProgressEvent] = []
    paused = threading.Event()
    during: list[tuple[int, int]] = []  # (source reads, image size) at the start and the end of the pause

    def on_event(ev: ProgressEvent) -> None:
        seen.append(ProgressEvent(**ev.__dict__))
        if ev.done >= 6 * MiB and not during and not control.pause_requested:
            control.pause()
        if ev.paused:
            paused.set()

    with CountingSource(str(src)) as s:
        def watch() -> None:
            assert paused.wait(60)
            during.append((s.reads, dest.stat().st_size))
            time.sleep(1.5)
            during.append((s.reads, dest.stat().st_size))
            control.resume()

        watcher = threading.Thread(target=watch)
        watcher.start()
        opts = CaptureOptions(identity={"kind": "file", "size": s.size}, chunk_size=256 * 1024,
                              throttle=Throttle(8 * MiB))
        result = capture(s, str(dest), opts, on_event, control)
        watcher.join()
    assert len(during) == 2 and during[0] == during[1], "the source was read or the image grew while paused"
    pauses = [ev for ev in seen if ev.paused]
    assert pauses and all(ev.depth == 0 for ev in pauses), "a pause leaves no chunk in flight"
    assert result.event is not None and result.event.paused_seconds >= 1.4
    assert data_frames(dest) == data_frames(ref)
    with open_image(str(ref)) as reader:
        assert reader.trailer is not None and result.digests == reader.trailer.meta["digests"]


def test_cancel_keeps_a_resumable_image(tmp_path: Path, source: tuple[Path, Path]) -> None:
    src, ref = source
    dest = tmp_path / "img"
    control = JobControl()

    def on_event(ev: ProgressEvent) -> None:
        if ev.done >= 4 * MiB:
            control.cancel()

    with pytest.raises(Interrupted, match=r"cancelled at \d+ of .*resume with --resume") as exc:
        run_capture(src, dest, control, on_event, chunk_size=256 * 1024)
    assert exc.value.exit_code == 130
    result = run_capture(src, dest, JobControl(), lambda ev: None, chunk_size=256 * 1024, resume=True)
    assert result.resumed_at >= 4 * MiB
    assert data_frames(dest) == data_frames(ref)


def test_events_report_skipped_bytes_pipeline_and_bottleneck(tmp_path: Path) -> None:
    holes = sparse_file(tmp_path / "sparse.raw", 16 * MiB, {0: mixed_bytes(2 * MiB, seed=2), 8 * MiB: bytes(MiB)})
    seen: list[ProgressEvent] = []
    with FileSource(str(holes)) as s:
        amap = AllocationMap([(0, 4 * MiB), (8 * MiB, 2 * MiB)], size=s.size, cluster_size=4096)
        opts = CaptureOptions(identity={"kind": "file"}, chunk_size=MiB, allocation=amap, threads=2,
                              throttle=Throttle(4 * MiB))
        result = capture(s, str(tmp_path / "used.img"), opts, lambda ev: seen.append(ProgressEvent(**ev.__dict__)))
    last = result.event
    assert last is not None
    assert last.unallocated_bytes == 10 * MiB
    assert last.zero_bytes == 4 * MiB  # 2-4 MiB and 8-10 MiB are allocated but zero: read, not compressed
    assert last.chunk_size == MiB and last.max_workers == 2 and last.max_depth == 8
    assert last.rate_limit == 4 * MiB and last.rate_limit_mode == "fixed"
    assert all(ev.depth <= ev.max_depth for ev in seen)
    assert RATE_LIMIT in {ev.bottleneck for ev in seen}, "held to 4 MiB/s: the rate limit is what it waits on"
    d = last.as_dict()
    assert d["unallocated_bytes"] == 10 * MiB and "started" not in d and d["rate"] > 0

    data = tmp_path / "text.raw"
    data.write_bytes(mixed_bytes(2 * MiB, seed=3))
    seen.clear()
    with FileSource(str(data)) as s:
        opts = CaptureOptions(identity={"kind": "file"}, chunk_size=128 * 1024, level=19, threads=2)
        capture(s, str(tmp_path / "slow.img"), opts, lambda ev: seen.append(ProgressEvent(**ev.__dict__)))
    assert COMPRESSION in {ev.bottleneck for ev in seen}, "level 19 waits on the compressors"
    assert max(ev.workers for ev in seen) > 0.5


def test_throttled_forwards_a_pause_at_once() -> None:
    got: list[bool] = []
    throttled = Throttled(lambda ev: got.append(ev.paused), interval=60)
    ev = ProgressEvent("image", 0, 10)
    throttled(ev)
    ev.done = 5
    throttled(ev)  # within the interval: held back
    ev.paused = True
    throttled(ev)  # the state changed: forwarded now
    assert got == [False, True]


def test_restore_and_verify_pause_and_cancel(tmp_path: Path, source: tuple[Path, Path]) -> None:
    _, ref = source
    control = JobControl()
    sizes: list[int] = []
    out = tmp_path / "out.raw"

    def on_event(ev: ProgressEvent) -> None:
        if ev.paused:
            sizes.append(out.stat().st_blocks)
            time.sleep(0.5)
            sizes.append(out.stat().st_blocks)
            control.resume()
        elif ev.done >= 8 * MiB and not sizes:
            control.pause()

    with open_image(str(ref)) as reader:
        result = restore(reader, str(out), progress=on_event, control=control)
    assert len(sizes) == 2 and sizes[0] == sizes[1]
    assert result.bytes_total == 24 * MiB
    assert out.read_bytes() == source[0].read_bytes()

    cancel = JobControl()
    cancel.cancel()
    with open_image(str(ref)) as reader, pytest.raises(Interrupted, match="verify cancelled"):
        verify_image(reader, control=cancel)


def test_restore_to_a_device_pauses_and_cancels(tmp_path: Path, source: tuple[Path, Path],
                                                 loopdev: Callable[..., str]) -> None:
    """A block device goes through the free-space-aware writer: it pauses and cancels the same way."""
    _, ref = source
    (tmp_path / "dev.raw").write_bytes(b"\xaa" * (24 * MiB))
    dev = loopdev(tmp_path / "dev.raw")
    control = JobControl()
    seen: list[ProgressEvent] = []
    held: list[int] = []

    def on_event(ev: ProgressEvent) -> None:
        seen.append(ev)
        if ev.paused:
            held.append(ev.done)
            time.sleep(0.3)
            held.append(ev.done)
            control.resume()
        elif ev.done >= 8 * MiB and not held:
            control.pause()

    with open_image(str(ref)) as reader:
        restore(reader, dev, confirm=lambda: True, progress=on_event, control=control)
    assert len(held) == 2 and held[0] == held[1] < 24 * MiB
    assert seen[-1].chunk_size and seen[-1].max_workers and seen[-1].max_depth
    assert Path(dev).read_bytes() == source[0].read_bytes()

    cancel = JobControl()
    cancel.cancel()
    with open_image(str(ref)) as reader, pytest.raises(Interrupted, match=f"restore cancelled .*{dev} is incomplete"):
        restore(reader, dev, confirm=lambda: True, control=cancel)
