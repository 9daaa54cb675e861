"""Writing an image to S3: a multipart upload whose parts end on frame boundaries, and its resume.

Frames are gathered into parts of ``part_size`` bytes or a frame more (``part_size_for``: from the source
size, so that no image needs more than 10,000 parts and no part is under 8 MiB); a full part goes to a
pool of ``IN_FLIGHT`` uploading threads while the next one fills, and the writer waits when that many
are on their way, so memory stays at (``IN_FLIGHT`` + 1) parts, each kept in memory up to ``SPOOL``
bytes and in a temporary file beyond (images over ~280 GiB).  ``--split-size`` makes separate objects
``KEY.001``, … cut as split files are.  The object appears when the upload is completed, after the
last frame: a reader never sees an unfinished image.

Beside the upload, ``KEY.iu-resume`` holds the header frame (and the part size), and is deleted when
the image is complete.  An unfinished upload cannot be read back, so ``--resume`` (``S3Partial.replay``)
writes the image again from that same header: every part made is compared with the part already
uploaded under its number (size and MD5, the ETag S3 keeps), only the parts from the first one that
differs are uploaded, and the result is the object an uninterrupted run makes.  The source is read and
compressed again up to where the upload stopped; nothing is uploaded twice.

Not thread-safe (one writer thread); sticky: after an upload fails every call raises that error.
"""

from __future__ import annotations

import hashlib
import tempfile
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any

from ..errors import Error, RefusedError, ResumeMismatchError, UsageError
from .s3client import S3Url, client, translate

MIN_PART = 8 << 20  # S3 needs 5 MiB (but the last); fewer, larger requests are cheaper
MAX_PARTS = 10_000
PART_BUDGET = 9_000  # parts planned for: room for frames a little over their part size
IN_FLIGHT = 4
SPOOL = 32 << 20  # a part held in memory up to this size, in a temporary file beyond
MAX_SPLITS = 999
RESUME_SUFFIX = ".iu-resume"


def part_size_for(image_bound: int) -> int:
    """Part size (a MiB multiple) for an image of at most ``image_bound`` bytes."""
    size = max(MIN_PART, -(-image_bound // PART_BUDGET))
    return -(-size // (1 << 20)) << 20


def image_bound(source_size: int) -> int:
    """An upper bound on an image's size: incompressible frames grow by well under 1%, and metadata
    (seek table, per-chunk CRCs, header with an allocation map) stays far below 64 MiB + 1%."""
    return source_size + source_size // 50 + (64 << 20)


def split_key(key: str, index: int) -> str:
    return f"{key}.{index + 1:03d}"


@dataclass
class _Uploaded:
    """What is already stored for one object of the image (resume)."""

    upload_id: str | None = None  # an unfinished upload to continue
    parts: dict[int, tuple[int, str]] = field(default_factory=dict)  # number -> (size, ETag) of an upload
    object_etag: str | None = None  # a finished object


class _Part:
    """Frames gathered for one part: in memory, or in a temporary file past ``SPOOL`` bytes."""

    def __init__(self, spill: bool) -> None:
        self.frames: list[bytes] = []
        self.file: IO[bytes] | None = None
        if spill:
            self.file = tempfile.TemporaryFile(prefix="iu-s3-part-")  # noqa: SIM115 (closed by release)
        self.size = 0

    def add(self, frame: bytes | memoryview) -> None:
        if self.file is not None:
            self.file.write(frame)
        else:
            self.frames.append(bytes(frame))
        self.size += len(frame)

    def body(self) -> bytes | IO[bytes]:
        """The part's bytes, once: the frames are let go as they are joined (one copy in memory)."""
        if self.file is None:
            data, self.frames = b"".join(self.frames), []
            return data
        self.file.seek(0)
        return self.file

    def md5(self) -> str:
        h = hashlib.md5(usedforsecurity=False)
        if self.file is None:
            for f in self.frames:
                h.update(f)
        else:
            self.file.seek(0)
            while block := self.file.read(1 << 20):
                h.update(block)
        return h.hexdigest()

    def release(self) -> None:
        self.frames = []
        if self.file is not None:
            self.file.close()
            self.file = None


class S3Sink:
    """A ``FrameSink`` onto ``dest`` (``s3://bucket/key``)."""

    def __init__(self, dest: str, split_size: int | None, part_size: int,
                 uploaded: dict[int, _Uploaded] | None = None) -> None:
        self.dest = dest
        self.url = S3Url.parse(dest)
        self.split_size = split_size
        self.part_size = part_size
        self.total = 0
        self._uploaded = uploaded  # resume: what is stored already, per object; None on a fresh run
        self._matching = uploaded is not None
        self._error: Error | None = None
        self._pool = ThreadPoolExecutor(IN_FLIGHT, thread_name_prefix="s3-upload")
        self._pending: deque[Future[None]] = deque()
        self._object = -1
        self._object_len = 0
        self._upload_id: str | None = None
        self._done: dict[int, dict[str, Any]] = {}  # part number -> CompleteMultipartUpload entry
        self._md5s: list[bytes] = []  # resume of a finished object: each part's MD5
        self._skip_object = False
        self._part: _Part | None = None
        self._part_no = 0
        self._lock = threading.Lock()
        self._keys: list[str] = []

    # --- the protocol -------------------------------------------------------------------------------
    def create(self, header_frame: bytes) -> None:
        self._guard(lambda: self._put_resume_record(header_frame), "recording the upload for --resume")
        self.write_frame(header_frame)

    def write_frame(self, frame: bytes | memoryview) -> None:
        if self._error is not None:
            raise self._error
        if self._object < 0 or (self.split_size is not None and self._object_len
                                and self._object_len + len(frame) > self.split_size):
            if self._object >= 0:
                self._finish_object()
            if self._object + 1 >= (MAX_SPLITS if self.split_size is not None else 1):
                self._error = UsageError(f"more than {MAX_SPLITS} parts needed; choose a larger --split-size")
                raise self._error
            self._start_object(self._object + 1)
        if self._part is None:
            self._part = _Part(self.part_size > SPOOL)
        self._part.add(frame)
        self._object_len += len(frame)
        self.total += len(frame)
        if self._part.size >= self.part_size:
            self._submit_part()

    def sync(self) -> None:
        """Wait for the parts on their way (a part still filling is uploaded when full or at the end)."""
        self._drain(0)

    def finish(self) -> list[str]:
        self._finish_object()
        self._pool.shutdown(wait=True)
        self._guard(lambda: client().delete_object(Bucket=self.url.bucket, Key=self.url.key + RESUME_SUFFIX),
                    "removing the resume record of")
        return [str(self.url.with_key(k)) for k in self._keys]

    def close(self) -> None:
        if self._part is not None:
            self._part.release()
            self._part = None
        for fut in self._pending:
            fut.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def paths(self) -> list[str]:
        return [str(self.url.with_key(k)) for k in self._keys]

    # --- objects and parts ----------------------------------------------------------------------------
    def _key(self, index: int) -> str:
        return self.url.key if self.split_size is None else split_key(self.url.key, index)

    def _start_object(self, index: int) -> None:
        self._object, self._object_len, self._part_no = index, 0, 0
        self._done, self._md5s, self._skip_object = {}, [], False
        key = self._key(index)
        self._keys.append(key)
        stored = self._uploaded.get(index) if self._matching and self._uploaded is not None else None
        if stored is not None and stored.object_etag is not None:
            self._skip_object = True  # a finished object: compared as a whole at its end
            self._upload_id = None
            return
        if stored is not None and stored.upload_id is not None:
            self._upload_id = stored.upload_id
            return
        self._matching = False
        self._upload_id = self._guard(
            lambda: str(client().create_multipart_upload(Bucket=self.url.bucket, Key=key)["UploadId"]),
            "starting the upload of")

    def _submit_part(self) -> None:
        part, self._part = self._part, None
        if part is None:
            return
        self._part_no += 1
        number = self._part_no
        if number > MAX_PARTS:
            self._error = Error(f"{self.dest}: more than {MAX_PARTS} parts; the source grew past its size?")
            raise self._error
        if self._skip_object:
            self._md5s.append(bytes.fromhex(part.md5()))
            part.release()
            return
        stored = self._uploaded.get(self._object) if self._matching and self._uploaded is not None else None
        if stored is not None:
            have = stored.parts.get(number)
            if have is not None and have[0] == part.size and have[1].strip('"') == part.md5():
                self._done[number] = {"PartNumber": number, "ETag": have[1]}
                part.release()
                return
            self._matching = False  # from the first part that differs on, everything is uploaded
        self._drain(IN_FLIGHT - 1)
        self._pending.append(self._pool.submit(self._upload, self._key(self._object), self._upload_id,
                                               number, part))

    def _upload(self, key: str, upload_id: str | None, number: int, part: _Part) -> None:
        try:
            answer = client().upload_part(Bucket=self.url.bucket, Key=key, UploadId=upload_id,
                                          PartNumber=number, Body=part.body())
        except Exception as e:
            raise translate(e, self.url.with_key(key), f"uploading part {number} of") from None
        finally:
            part.release()
        entry = {"PartNumber": number, "ETag": answer["ETag"]}
        for name in ("ChecksumCRC32", "ChecksumCRC32C", "ChecksumSHA1", "ChecksumSHA256", "ChecksumCRC64NVME"):
            if answer.get(name):
                entry[name] = answer[name]
        with self._lock:
            self._done[number] = entry

    def _drain(self, keep: int) -> None:
        while len(self._pending) > keep:
            fut = self._pending.popleft()
            try:
                fut.result()
            except Error as e:
                self._error = e
                raise

    def _finish_object(self) -> None:
        if self._part is not None and (self._part.size or not self._part_no):
            self._submit_part()
        self._drain(0)
        key = self._key(self._object)
        if self._skip_object:
            stored = self._uploaded.get(self._object) if self._uploaded is not None else None
            etag = hashlib.md5(b"".join(self._md5s), usedforsecurity=False).hexdigest() + f"-{len(self._md5s)}"
            if stored is None or (stored.object_etag or "").strip('"') != etag:
                self._error = ResumeMismatchError(
                    f"cannot resume {self.dest}: the finished object {self.url.with_key(key)} differs from what "
                    "this run makes of the source; start over with --force")
                raise self._error
            return
        parts = [self._done[n] for n in sorted(self._done)]
        self._guard(lambda: client().complete_multipart_upload(
            Bucket=self.url.bucket, Key=key, UploadId=self._upload_id, MultipartUpload={"Parts": parts}),
            "completing the upload of")

    def _put_resume_record(self, header_frame: bytes) -> None:
        client().put_object(Bucket=self.url.bucket, Key=self.url.key + RESUME_SUFFIX, Body=header_frame,
                            Metadata={"part-size": str(self.part_size),
                                      "split-size": str(self.split_size or 0)})

    def _guard(self, call: Any, what: str) -> Any:
        if self._error is not None:
            raise self._error
        try:
            return call()
        except Exception as e:
            self._error = translate(e, self.url, what)
            raise self._error from None


# --- what is stored under a DEST ----------------------------------------------------------------------

def _keys_under(url: S3Url) -> Iterator[dict[str, Any]]:
    paginator = client().get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=url.bucket, Prefix=url.key):
        yield from page.get("Contents", [])


def _uploads_under(url: S3Url) -> Iterator[dict[str, Any]]:
    paginator = client().get_paginator("list_multipart_uploads")
    for page in paginator.paginate(Bucket=url.bucket, Prefix=url.key):
        yield from page.get("Uploads", [])


def _ours(base: str, key: str) -> bool:
    """``key`` is the image ``base``, one of its split parts or its resume record."""
    if key in (base, base + RESUME_SUFFIX):
        return True
    rest = key[len(base):]
    return key.startswith(base) and len(rest) == 4 and rest[0] == "." and rest[1:].isdigit()


def existing_outputs(dest: str) -> list[str]:
    url = S3Url.parse(dest)
    try:
        return sorted(str(url.with_key(o["Key"])) for o in _keys_under(url) if _ours(url.key, o["Key"]))
    except Exception as e:
        raise translate(e, url, "looking for an existing image at") from None


def abandoned_uploads(dest: str) -> list[dict[str, Any]]:
    url = S3Url.parse(dest)
    try:
        return [u for u in _uploads_under(url) if _ours(url.key, u["Key"])]
    except Exception as e:
        raise translate(e, url, "listing the unfinished uploads of") from None


def remove_outputs(dest: str, *, uploads_only: bool = False) -> list[str]:
    """Delete the image at ``dest`` (objects and resume record; not with ``uploads_only``) and abort its
    unfinished uploads."""
    url = S3Url.parse(dest)
    gone: list[str] = []
    try:
        for upload in abandoned_uploads(dest):
            client().abort_multipart_upload(Bucket=url.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
            gone.append(f"{url.with_key(upload['Key'])} (unfinished upload {upload['UploadId']})")
        for name in [] if uploads_only else existing_outputs(dest):
            client().delete_object(Bucket=url.bucket, Key=S3Url.parse(name).key)
            gone.append(name)
    except Error:
        raise
    except Exception as e:
        raise translate(e, url, "removing") from None
    return gone


class S3Partial:
    """What an interrupted upload to ``dest`` left: its resume record and the parts uploaded."""

    reader = None  # an unfinished upload cannot be read back: resume replays (``replay``)

    def __init__(self, dest: str, split_size: int | None) -> None:
        self.dest, self.split_size = dest, split_size
        self.url = S3Url.parse(dest)
        self.name = dest
        self.head = b""
        self.part_size = 0
        record = self.url.with_key(self.url.key + RESUME_SUFFIX)
        try:
            answer = client().get_object(Bucket=record.bucket, Key=record.key)
            self.head = answer["Body"].read()
            meta = answer.get("Metadata", {})
            self.part_size = int(meta.get("part-size", 0))
            if int(meta.get("split-size", 0) or 0) != (split_size or 0):
                raise ResumeMismatchError(f"cannot resume {dest}: it was started with split size "
                                          f"{meta.get('split-size')}; start over with --force")
        except Error:
            raise
        except Exception as e:
            from .s3client import is_missing

            if not is_missing(e):
                raise translate(e, record, "reading") from None
            if any(not n.endswith(RESUME_SUFFIX) for n in existing_outputs(dest)):
                raise RefusedError(f"{dest} is a finished image: nothing to resume; use --force to "
                                   "image it again") from None

    def continue_at(self, kept: int) -> S3Sink:
        raise AssertionError("an unfinished S3 upload is replayed, not read back")

    def replay(self) -> S3Sink:
        uploaded: dict[int, _Uploaded] = {}
        keys = [self.url.key] if self.split_size is None else [split_key(self.url.key, i) for i in range(MAX_SPLITS)]
        index_of = {k: i for i, k in enumerate(keys)}
        try:
            for o in _keys_under(self.url):
                if o["Key"] in index_of:
                    uploaded[index_of[o["Key"]]] = _Uploaded(object_etag=str(o.get("ETag", "")))
            latest: dict[str, dict[str, Any]] = {}
            for u in abandoned_uploads(self.dest):
                if u["Key"] in index_of and (u["Key"] not in latest or u["Initiated"] > latest[u["Key"]]["Initiated"]):
                    latest[u["Key"]] = u
            for key, u in latest.items():
                entry = uploaded[index_of[key]] = _Uploaded(upload_id=u["UploadId"])
                for page in client().get_paginator("list_parts").paginate(
                        Bucket=self.url.bucket, Key=key, UploadId=u["UploadId"]):
                    for p in page.get("Parts", []):
                        entry.parts[int(p["PartNumber"])] = (int(p["Size"]), str(p["ETag"]))
        except Exception as e:
            raise translate(e, self.url, "listing what was uploaded of") from None
        sink = S3Sink(self.dest, self.split_size, self.part_size or MIN_PART, uploaded)
        return sink

    def close(self) -> None:
        pass
