"""Run ``imaging-utility serve-proxy|mount`` in a real process with ``open_image`` = ``FileSource``.

The image reader is being written in parallel; these tests exercise the CLI wiring over raw files.
``IU_TEST_CORRUPT=OFFSET:LENGTH`` makes reads touching that range raise ``ChunkCorruptError``.
"""

from __future__ import annotations

import os
import sys
import types

from imaging_utility.cli import main as cli_main
from imaging_utility.devices.source import FileSource
from imaging_utility.errors import ChunkCorruptError


class _CorruptingFile(FileSource):
    def readinto_at(self, offset: int, buf: memoryview | bytearray) -> None:
        start, length = map(int, os.environ["IU_TEST_CORRUPT"].split(":"))
        if offset < start + length and start < offset + len(buf):
            raise ChunkCorruptError(f"chunk at {start} fails its checksum", chunk=0, offset=start)
        super().readinto_at(offset, buf)


reader = types.ModuleType("imaging_utility.image.reader")
reader.open_image = _CorruptingFile if os.environ.get("IU_TEST_CORRUPT") else FileSource  # type: ignore[attr-defined]
sys.modules["imaging_utility.image.reader"] = reader
cli_main.COMMANDS = ["serve", "mount"]
raise SystemExit(cli_main.main(sys.argv[1:]))
