"""The image operation: a disk or partition into an image, full or used-only (``ops.imaging``)."""

from __future__ import annotations

import os
import re

from ..devices.throttle import parse_rate
from ..errors import UsageError
from ..image.digests import DEFAULT, parse_hash_names
from ..ops.capture import CaptureResult
from ..ops.imaging import ImageRequest, capture_summary, default_threads, run_image
from ..ops.inventory import Volume
from ..progress import JobControl, ProgressCallback
from ..units import format_size, human_bytes, parse_size
from .job import Confirmation, Plan, Warn
from .operation import Field, Selection, Values, flag, number, text

MODES = (("full", "full: every byte"), ("yes", "used-only: allocated clusters (fails without a known filesystem)"),
         ("auto", "used-only, else full"))


class ImageOperation:
    key = "image"
    title = "Image: this disk or partition into an image file"

    def accepts(self, sel: Selection) -> bool:
        return isinstance(sel, Volume)

    def fields(self, sel: Selection) -> list[Field]:
        assert isinstance(sel, Volume)
        d = ImageRequest("", "")
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", sel.name).strip("-") or "disk"
        return [
            Field("dest", "Image file", os.path.abspath(f"{name}.img.zst"), help="DEST"),
            Field("mode", "Mode", "full", choices=MODES),
            Field("level", "zstd level", str(d.level), help="1..22"),
            Field("chunk_size", "Chunk size", format_size(d.chunk_size), help="64K..256M"),
            Field("threads", "Threads", str(default_threads())),
            Field("split_size", "Split size", "", help="e.g. 4G; empty: one file"),
            Field("hash", "Digests", ",".join(DEFAULT), help="sha256,blake3,md5 or none"),
            Field("max_throughput", "Max read rate", "", help="e.g. 100M; empty: no cap"),
            Field("adaptive", "Adaptive rate limit (yield when others wait on I/O)", False),
            Field("resume", "Resume a partial image", False),
            Field("force", "Overwrite an existing image", False),
            Field("direct", "O_DIRECT reads (bypass the page cache)", False),
            Field("buffered", "Buffered reads only (no O_DIRECT, even for whole chunks)", False),
            Field("rescue", "Rescue: go on past unreadable sectors", False),
            Field("retries", "Rescue retries", "1"),
            Field("offset", "Offset", format_size(sel.offset) if sel.windowed else "0"),
            Field("length", "Length", format_size(sel.size) if sel.windowed else "", help="empty: to the end"),
        ]

    def request(self, sel: Selection, values: Values) -> ImageRequest:
        assert isinstance(sel, Volume)
        if text(values, "dest") == "-":  # the terminal is the GUI's screen
            raise UsageError("the GUI cannot write an image to standard output; run 'imaging-utility image "
                             "SOURCE -' from a shell to stream it")
        mode = text(values, "mode")
        level, threads, retries = (number(values, k, flag_name) for k, flag_name in
                                   (("level", "--level"), ("threads", "--threads"), ("retries", "--retries")))
        req = ImageRequest(
            sel.path, text(values, "dest"),
            chunk_size=parse_size(text(values, "chunk_size"), "--chunk-size"),
            level=level, threads=threads,
            split_size=parse_size(text(values, "split_size"), "--split-size") if text(values, "split_size") else None,
            digests=parse_hash_names(text(values, "hash")),
            force=flag(values, "force"), resume=flag(values, "resume"),
            used_only=None if mode == "full" else mode,
            offset=parse_size(text(values, "offset") or "0", "--offset"),
            length=parse_size(text(values, "length"), "--length") if text(values, "length") else None,
            direct=flag(values, "direct"), buffered=flag(values, "buffered"), rescue=flag(values, "rescue"),
            retries=retries,
            max_throughput=parse_rate(text(values, "max_throughput")) if text(values, "max_throughput") else None,
            adaptive_rate_limit=flag(values, "adaptive"),
            allow_mounted=sel.read_write,
        )
        req.options()
        return req

    def command(self, sel: Selection, values: Values) -> str:
        return self.request(sel, values).command_line()

    def plan(self, sel: Selection, values: Values) -> Plan:
        assert isinstance(sel, Volume)
        req = self.request(sel, values)
        confirmation = None
        if sel.read_write:
            confirmation = Confirmation(
                f"{sel.path} is in use", [*(f"mounted {m}" for m in sel.mounts),
                                          "Files may change while they are read: the image may be inconsistent.",
                                          "Unmount it or remount it read-only first, or image it anyway."],
                accept="Image anyway")

        def run(progress: ProgressCallback, control: JobControl, warn: Warn) -> list[str]:
            return summary_lines(run_image(req, progress, control, warn))

        return Plan(f"image {sel.path} → {req.dest}", req.command_line(), run,
                    resume_command=req.command_line(resume=True), confirmation=confirmation,
                    output_label="compressed")


def summary_lines(result: CaptureResult) -> list[str]:
    s = capture_summary(result)
    ratio = f" ({s['ratio'] * 100:.1f}% of source)" if s["ratio"] is not None else ""
    lines = [f"image {', '.join(result.paths)}",
             f"size {human_bytes(result.source_size)} → {human_bytes(result.image_bytes)}{ratio}",
             f"time {result.elapsed:.1f} s ({s['paused_seconds']:.1f} s paused), {s['throughput_mib_s']} MiB/s",
             f"skipped {human_bytes(s['zero_bytes'])} zeros, {human_bytes(s['unallocated_bytes'])} unallocated"]
    if result.bad_ranges:
        lines.append(f"unreadable: {s['bad_sectors']} sectors in {len(result.bad_ranges)} ranges, zero-filled")
    pacing = result.pacing
    if pacing is not None:
        if pacing["mode"] == "adaptive":
            lines.append(f"adaptive rate limit: slowed down {pacing['reductions']} times, "
                         f"{pacing['limited_seconds']} s limited, lowest {human_bytes(pacing['lowest'])}/s")
        else:
            lines.append(f"rate limit {human_bytes(pacing['rate'])}/s")
    lines += [f"{name} {digest}" for name, digest in result.digests.items()]
    return lines
