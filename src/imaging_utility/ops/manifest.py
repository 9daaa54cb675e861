"""Backup sets: ``DIR/<disk>.img.zst`` per disk plus ``DIR/backup.manifest.json`` (docs/backup-sets.md).

The manifest is a readable copy of what each image's header and trailer record (identity, table,
partitions, digests), plus each disk's status while ``backup-disk`` runs.  It is rewritten atomically
(temporary file, fsync, rename) after every change, so a crash leaves the previous version.

Opening a disk of a set checks the manifest against the image: a manifest that no longer matches its
image (other table, partitions or digests) is an error (exit 8), as is a disk whose backup did not finish.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from typing import Any

from .. import __version__
from ..errors import CorruptImageError, NotFoundError, UsageError, target_error
from ..image.reader import ImageReader, open_image
from ._pipeline import utc_now

MANIFEST = "backup.manifest.json"
SCHEMA = "imaging-utility backup manifest"
VERSION = 1
STATUS_PENDING, STATUS_RUNNING, STATUS_COMPLETE = "pending", "in progress", "complete"
IDENTITY_KEYS = ("path", "model", "vendor", "serial", "wwn", "size", "logical_sector_size",
                 "physical_sector_size", "stable_names")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,200}$")


def image_name(disk: str) -> str:
    return f"{disk}.img.zst"


def is_set_dir(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, MANIFEST))


def new_manifest(options: dict[str, Any], host: str) -> dict[str, Any]:
    now = utc_now()
    return {"schema": SCHEMA, "version": VERSION, "tool": f"imaging-utility {__version__}", "created": now,
            "updated": now, "finished": None, "host": host, "options": options, "disks": []}


def pending_entry(name: str, source: str, status: str = STATUS_PENDING) -> dict[str, Any]:
    return {"name": name, "source": source, "status": status, "image": [image_name(name)]}


def entry_from_image(reader: ImageReader, name: str, source: str) -> dict[str, Any]:
    """A finished disk's manifest entry, copied from its image's header and trailer."""
    meta, trailer = reader.header.meta, (reader.trailer.meta if reader.trailer else {})
    disk: dict[str, Any] = meta.get("disk") or {}
    ident = meta.get("source") or {}
    digests = trailer.get("partition_digests") or {}
    files = [os.path.basename(p) for p in reader.paths]
    parts = [{**p, "image": files[0], "digests": digests.get(str(p.get("number")), {})}
             for p in disk.get("partitions", [])]
    return {
        "name": name, "source": source, "status": STATUS_COMPLETE, "image": files,
        "image_bytes": reader.image_bytes, "size": reader.size, "sector_size": reader.sector_size,
        "digests": trailer.get("digests", {}), "digest_covers": trailer.get("digest_covers"),
        "identity": {k: ident.get(k) for k in IDENTITY_KEYS if k in ident},
        "table": disk.get("table"), "volume": disk.get("volume"), "partitions": parts,
        "used_bytes": disk.get("used_bytes"), "warnings": disk.get("warnings", []),
        "bad_ranges": [{"offset": o, "length": n} for o, n in reader.bad_ranges],
        "created": meta.get("created"), "finished": trailer.get("finished"),
    }


def write_manifest(set_dir: str, manifest: dict[str, Any]) -> None:
    """Replace the manifest atomically (a temporary file, fsynced, renamed, the directory fsynced); a
    failure leaves the previous manifest as it was and no temporary file behind."""
    manifest["updated"] = utc_now()
    path = os.path.join(set_dir, MANIFEST)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise target_error(e, f"write {path}") from None
    fd = os.open(set_dir, os.O_RDONLY | os.O_DIRECTORY)
    with contextlib.suppress(OSError):
        os.fsync(fd)
    os.close(fd)


def load_manifest(set_dir: str) -> dict[str, Any]:
    """The manifest of the set in ``set_dir``, with its shape checked (``CorruptImageError`` if not)."""
    path = os.path.join(set_dir, MANIFEST)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise NotFoundError(f"no {MANIFEST} in {set_dir}: not a backup set") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptImageError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise CorruptImageError(f"{path} is not an imaging-utility backup manifest")
    version = data.get("version")
    if not isinstance(version, int) or version < 1:
        raise CorruptImageError(f"{path}: bad manifest version {version!r}")
    if version > VERSION:
        raise CorruptImageError(f"{path} has manifest version {version}; this tool reads version {VERSION} "
                                "(upgrade imaging-utility)")
    disks = data.get("disks")
    if not isinstance(disks, list) or not all(_entry_ok(d) for d in disks):
        raise CorruptImageError(f"{path}: the 'disks' list is malformed")
    return data


def _entry_ok(d: Any) -> bool:
    return (isinstance(d, dict) and isinstance(d.get("name"), str) and bool(_NAME.match(d["name"]))
            and isinstance(d.get("image"), list) and bool(d["image"])
            and all(isinstance(p, str) and _NAME.match(p) for p in d["image"])
            and isinstance(d.get("partitions", []), list))


def choose_disk(manifest: dict[str, Any], disk: str | None, set_dir: str) -> dict[str, Any]:
    disks: list[dict[str, Any]] = manifest["disks"]
    names = ", ".join(d["name"] for d in disks) or "none"
    if disk is None:
        if len(disks) != 1:
            raise UsageError(f"the set in {set_dir} holds {len(disks)} disks ({names}); choose one with --disk NAME")
        return disks[0]
    for d in disks:
        if d["name"] == disk:
            return d
    raise NotFoundError(f"no disk {disk!r} in the set in {set_dir}; it holds: {names}")


def open_set_image(set_dir: str, disk: str | None = None, **kwargs: Any) -> ImageReader:
    """The image of one disk of a set, after checking it against the manifest."""
    manifest = load_manifest(set_dir)
    entry = choose_disk(manifest, disk, set_dir)
    if entry.get("status") != STATUS_COMPLETE:
        raise CorruptImageError(f"the backup of disk {entry['name']} in {set_dir} did not finish "
                                f"({entry.get('status')}); continue it with 'backup-disk --resume'")
    path = os.path.join(set_dir, entry["image"][0])
    if not os.path.exists(path) and not os.path.exists(path + ".001"):
        raise NotFoundError(f"the manifest of {set_dir} lists {entry['image'][0]}, which is missing")
    reader = open_image(path, **kwargs)
    try:
        check_entry(entry, reader, set_dir)
    except BaseException:
        reader.close()
        raise
    return reader


def check_entry(entry: dict[str, Any], reader: ImageReader, set_dir: str) -> None:
    """Raise ``CorruptImageError`` naming the first field where the manifest and the image disagree."""
    actual = entry_from_image(reader, entry["name"], entry.get("source", ""))
    for key in ("size", "digests", "table"):
        if entry.get(key) != actual.get(key):
            raise CorruptImageError(f"{MANIFEST} in {set_dir} no longer matches {entry['image'][0]}: "
                                    f"its {key} differs")
    mine = [(p.get("number"), p.get("start"), p.get("length"), p.get("digests")) for p in entry.get("partitions", [])]
    theirs = [(p["number"], p["start"], p["length"], p["digests"]) for p in actual["partitions"]]
    if mine != theirs:
        raise CorruptImageError(f"{MANIFEST} in {set_dir} no longer matches {entry['image'][0]}: "
                                "its partitions differ")


def open_image_or_set(path: str, disk: str | None = None, **kwargs: Any) -> ImageReader:
    """An image file (or split set), or one disk of a backup set directory."""
    if is_set_dir(path):
        return open_set_image(path, disk, **kwargs)
    if disk is not None:
        raise UsageError(f"--disk {disk} needs a backup set directory; {path} is not one")
    if os.path.isdir(path):
        raise NotFoundError(f"{path} is a directory without a {MANIFEST}: not an image or a backup set")
    return open_image(path, **kwargs)
