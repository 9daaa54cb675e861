"""Rebuild the golden images and expected.json (docs/image-format.md §12).

Run only when the format changes on purpose: ``.venv/bin/python tests/format/golden/make.py``.
The suite fails on any difference from the committed files; that is the point.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent))
sys.path.insert(0, str(Path(__file__).parent.parent.parent))

from golden_lib import GOLDEN, RECIPES, fat_volume, image_paths, parse, write_image


def main() -> None:
    from imaging_utility.devices.source import FileSource
    from imaging_utility.filesystems import allocation_map

    for old in GOLDEN.glob("*.img*"):
        old.unlink()
    expected = {}
    for recipe in RECIPES:
        dest = GOLDEN / f"{recipe.name}.img"
        if recipe.source is None:
            with tempfile.TemporaryDirectory() as tmp:
                vol = Path(tmp) / "fat.raw"
                fat_volume(vol)
                with FileSource(str(vol)) as src:
                    info, amap = allocation_map(src)
                ranges = [(e.offset, e.length) for e in amap]
                import dataclasses

                write_image(recipe, vol.read_bytes(), dest, ranges, dataclasses.asdict(info), amap.cluster_size)
        else:
            write_image(recipe, recipe.source(), dest)
        expected[recipe.name] = parse(image_paths(recipe.name))
    (GOLDEN / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True) + "\n")
    total = sum(p.stat().st_size for p in GOLDEN.iterdir())
    print(f"{len(expected)} vectors, {total} bytes in {GOLDEN}")


if __name__ == "__main__":
    main()
