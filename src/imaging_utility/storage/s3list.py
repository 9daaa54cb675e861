"""Finding images in a bucket: the object(s) of one image, and everything under a prefix."""

from __future__ import annotations

import re
from typing import Any

from ..errors import CorruptImageError, Error, NotFoundError, UsageError
from .base import StoredImage
from .s3client import S3Url, client, is_missing, translate
from .s3write import RESUME_SUFFIX, _uploads_under, abandoned_uploads, split_key

MAX_LISTED = 100_000  # objects looked at under one prefix
_SPLIT = re.compile(r"^(.*)\.(\d{3})$")
MANIFEST = "backup.manifest.json"


def _list(url: S3Url, prefix: str, limit: int = MAX_LISTED) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    try:
        for page in client().get_paginator("list_objects_v2").paginate(Bucket=url.bucket, Prefix=prefix):
            out.extend(page.get("Contents", []))
            if len(out) >= limit:
                break
    except Exception as e:
        raise translate(e, url, "listing") from None
    return out


def resolve_objects(name: str) -> list[str]:
    url = S3Url.parse(name)
    if not url.key or url.key.endswith("/"):
        raise UsageError(f"{name} names a prefix, not an image; 'info {name}' lists the images under it")
    m = _SPLIT.match(url.key)
    if not (m and m.group(2) == "001"):  # KEY.001 is the first part of a set: read all of them, as for files
        try:
            client().head_object(Bucket=url.bucket, Key=url.key)
            return [name]
        except Exception as e:
            if not is_missing(e):
                raise translate(e, url, "opening") from None
    base = m.group(1) if m and m.group(2) == "001" else url.key
    numbers = sorted(int(k[len(base) + 1:]) for k in (o["Key"] for o in _list(url, base + "."))
                     if _SPLIT.match(k) and k.rsplit(".", 1)[0] == base)
    if not numbers or numbers[0] != 1:
        if numbers:
            raise CorruptImageError(f"split image {url.with_key(base)} is missing its first part "
                                    f"{url.with_key(split_key(base, 0))}")
        try:
            client().head_bucket(Bucket=url.bucket)
        except Exception as e:
            raise translate(e, url, "opening") from None
        if any(u["Key"] == url.key for u in abandoned_uploads(name)):
            raise NotFoundError(f"{name} is not finished: its upload was interrupted; continue it with "
                                "'image --resume SOURCE DEST' or discard it with 'image --abort DEST'")
        raise NotFoundError(f"image not found: {name}")
    for expected, n in enumerate(numbers, 1):
        if n != expected:
            raise CorruptImageError(
                f"split image {url.with_key(base)} is missing part {url.with_key(split_key(base, expected - 1))}"
                f" ({url.with_key(split_key(base, n - 1))} exists): the image cannot be read without it")
    return [str(url.with_key(split_key(base, i))) for i in range(len(numbers))]


def list_prefix(location: str) -> list[StoredImage]:
    """Every object under the prefix that may be an image (split parts grouped), every backup set (a
    folder with a manifest) and every unfinished upload; ``image/catalog`` tells images from other
    objects by reading their headers."""
    url = S3Url.parse(location)
    objects = _list(url, url.key)
    found: dict[str, StoredImage] = {}
    for o in objects:
        key, size = str(o["Key"]), int(o["Size"])
        modified = o["LastModified"].strftime("%Y-%m-%dT%H:%M:%SZ")
        if key.endswith(RESUME_SUFFIX) or key.endswith("/"):
            continue
        if key.endswith("/" + MANIFEST) or key == MANIFEST:
            folder = key[: -len(MANIFEST)]
            found[folder] = StoredImage(str(url.with_key(folder)), size, modified, kind="set")
            continue
        m = _SPLIT.match(key)
        if m:
            base = m.group(1)
            entry = found.get(base)
            if entry is None or entry.kind != "image":
                entry = found[base] = StoredImage(str(url.with_key(base)), 0, modified, parts=0)
                entry.details["first"] = str(url.with_key(split_key(base, 0)))
            entry.size += size
            entry.parts += 1
            entry.modified = max(entry.modified, modified)
            continue
        found[key] = StoredImage(str(url.with_key(key)), size, modified)
        found[key].details["first"] = str(url.with_key(key))
    sets = [k for k, v in found.items() if v.kind == "set"]
    for key in list(found):  # a set's images are listed as the set
        if found[key].kind == "image" and any(key.startswith(s) and key != s for s in sets):
            found[key].details["in_set"] = True
    try:
        for upload in _uploads_under(url):
            key = str(upload["Key"])
            parts, size = 0, 0
            for page in client().get_paginator("list_parts").paginate(
                    Bucket=url.bucket, Key=key, UploadId=upload["UploadId"]):
                for p in page.get("Parts", []):
                    parts += 1
                    size += int(p["Size"])
            name = _SPLIT.match(key).group(1) if _SPLIT.match(key) and key not in found else key  # type: ignore[union-attr]
            found[f"upload:{key}:{upload['UploadId']}"] = StoredImage(
                str(url.with_key(name)), size, upload["Initiated"].strftime("%Y-%m-%dT%H:%M:%SZ"), parts,
                kind="upload", details={"upload_id": upload["UploadId"], "key": key})
    except Error:
        raise
    except Exception as e:
        raise translate(e, url, "listing the unfinished uploads under") from None
    return sorted(found.values(), key=lambda s: (s.name, s.kind))
