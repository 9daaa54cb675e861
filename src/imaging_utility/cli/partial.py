"""What ``info`` and ``verify`` say about an interrupted capture: how far it got and how to continue it."""

from __future__ import annotations

import os
import shlex
from typing import Any

from ..errors import CorruptImageError, IncompleteImageError
from ..image.partial import PartialImage, inspect_partial
from .output import human_bytes, print_json, shown, stdout


def resume_command(command_line: Any) -> str:
    """The recorded ``image`` command line with ``--resume`` (and without ``--force``)."""
    if not isinstance(command_line, list) or "image" not in command_line[1:]:
        return "imaging-utility image --resume SOURCE DEST (with the options of the first run)"
    args = [str(a) for a in command_line[1:] if a != "--force"]
    at = args.index("image") + 1
    if "--resume" not in args:
        args.insert(at, "--resume")
    return "imaging-utility " + shlex.join(args)


def report_partial(path: str, as_json: bool, error: IncompleteImageError) -> None:
    """Print what the partial image at ``path`` holds; then re-raise ``error`` (exit 8)."""
    from ..storage import is_remote

    # a backup set: the error names the image of the set; S3: a finished object whose set lacks its last
    # parts (an interrupted upload is no object at all, and says so)
    if os.path.isdir(path) or is_remote(path):
        raise error
    part = inspect_partial(path)
    if part.foreign:
        raise CorruptImageError(f"{path} is not an imaging-utility image (it does not begin with an image "
                                   f"header); to image it: imaging-utility image {shlex.quote(path)} DEST")
    if as_json:
        print_json({**part.as_dict(), "error": str(error), "resume": resume_command(_meta(part, "command_line"))})
        raise error
    stdout.print(f"image        {shown(part.paths[0])}" + (f" (+{len(part.paths) - 1} parts)" if len(part.paths) > 1
                                                           else ""), markup=False, highlight=False)
    if part.header is None:
        stdout.print("state        incomplete: not even the header was written; 'image --resume' starts over",
                     markup=False)
        raise error
    h = part.header
    share = part.source_bytes / h.source_size * 100 if h.source_size else 100.0
    stdout.print("state        incomplete: the capture was interrupted (no trailer, no seek table)", markup=False)
    stdout.print(f"captured     {part.chunks} of {part.chunk_count} chunks: {human_bytes(part.source_bytes)} of "
                 f"{human_bytes(h.source_size)} of the source ({share:.1f}%), source bytes 0-"
                 f"{max(0, part.source_bytes - 1)}", markup=False)
    stdout.print(f"valid up to  byte {part.valid_bytes} of {part.image_bytes} of the image file(s); a resume keeps "
                 "what checks out from there", markup=False)
    source = _meta(part, "source")
    if isinstance(source, dict) and source:
        named = source.get("path") or source.get("device") or "?"
        stdout.print(f"source       {shown(str(named))}, {source.get('size', '?')} bytes", markup=False)
    stdout.print(f"continue     {shown(resume_command(_meta(part, 'command_line')))}", markup=False)
    raise error


def _meta(part: PartialImage, key: str) -> Any:
    return part.header.meta.get(key) if part.header is not None else None
