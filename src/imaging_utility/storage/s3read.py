"""Reading an image stored as S3 object(s): ranged GETs through a block cache, with read-ahead.

The objects (one, or the split parts ``KEY.001``, … in order) are one byte stream, as ``PartReader``
makes of files.  Reads are served from a cache of ``BLOCK``-sized pieces; the blocks a read misses are
fetched with one ranged GET per contiguous run, and threads asking for a block already on its way wait
for it instead of fetching it again.  A read that continues the previous ones starts fetching the next
blocks in the background (as many as the run of back-to-back reads has covered, up to ``READAHEAD``),
several GETs in parallel, so sequential clients (NBD, FUSE, restore) stream, while random clients (ls,
extract) fetch little more than the frames they need.  Many
threads reading at once (verify, restore) issue that many GETs at once.  Every GET carries the ETag the
object had when it was opened (``If-Match``): an object replaced while being read is an error, never a
mix of two images.  Thread-safe.
"""

from __future__ import annotations

import bisect
import logging
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ..errors import CorruptImageError
from .s3client import S3Url, client, error_code, retrying, translate

BLOCK = 256 << 10
CACHE_BYTES = 64 << 20
READAHEAD = 32  # blocks fetched ahead of a sequential reader
RUN = 8  # blocks per read-ahead GET
FETCHERS = 4  # read-ahead GETs in flight
# Read-ahead starts once a run of back-to-back reads has covered this much: a client streaming, not
# the few small reads that open an image (and no thread exists before a server forks its helpers).
STREAMING = 2 * BLOCK

log = logging.getLogger("imaging_utility.s3")


def head(url: S3Url, what: str = "opening") -> dict[str, Any]:
    try:
        return dict(client().head_object(Bucket=url.bucket, Key=url.key))
    except Exception as e:
        raise translate(e, url, what) from None


class S3Reader:
    def __init__(self, names: list[str], *, block_size: int = BLOCK, cache_bytes: int = CACHE_BYTES,
                 readahead: int = READAHEAD) -> None:
        self.paths = names
        self._urls = [S3Url.parse(n) for n in names]
        self._etags: list[str] = []
        self.starts: list[int] = []
        self._sizes: list[int] = []
        total = 0
        for url in self._urls:
            meta = head(url)
            self._etags.append(str(meta.get("ETag", "")))
            self.starts.append(total)
            self._sizes.append(int(meta["ContentLength"]))
            total += self._sizes[-1]
        self.size = total
        self._block = block_size
        self._slots = max(8, cache_bytes // block_size)
        self._readahead = readahead
        self._cache: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._inflight: dict[tuple[int, int], Future[bytes]] = {}
        self._lock = threading.Lock()
        self._last_end: dict[int, int] = {}
        self._run_start: dict[int, int] = {}
        self._pool: ThreadPoolExecutor | None = None
        self.requests = 0
        self.fetched = 0  # bytes received

    def locate(self, offset: int) -> tuple[str, int]:
        """(object name, offset in that object) of ``offset`` of the joined objects."""
        i = max(0, bisect.bisect_right(self.starts, offset) - 1)
        return self.paths[i], offset - self.starts[i]

    def read_at(self, offset: int, n: int) -> bytes:
        if offset < 0 or n < 0 or offset + n > self.size:
            raise CorruptImageError(
                f"image read [{offset}, {offset + n}) beyond its end ({self.size} bytes): truncated image?")
        pieces: list[bytes] = []
        i = bisect.bisect_right(self.starts, offset) - 1
        while n > 0:
            rel = offset - self.starts[i]
            take = min(n, self._sizes[i] - rel)
            if take > 0:
                pieces.append(self._read_object(i, rel, take))
            offset += take
            n -= take
            i += 1
        if not pieces:
            return b""
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _read_object(self, i: int, rel: int, n: int) -> bytes:
        bs = self._block
        first, last = rel // bs, (rel + n - 1) // bs
        blocks = self._blocks(i, first, last)
        with self._lock:
            previous = self._last_end.get(i)
            if previous is None or not rel - bs <= previous <= rel:
                self._run_start[i] = rel  # a new run of reads begins here
            self._last_end[i] = rel + n
            run = rel + n - self._run_start[i]
        if run >= STREAMING and self._readahead:
            # as far ahead as the run has gone so far: a short run wastes little, a stream soon gets all
            self._prefetch(i, last + 1, last + min(self._readahead, run // bs))
        start = rel - first * bs
        if len(blocks) == 1:
            data = blocks[0]
            return data if start == 0 and len(data) == n else data[start : start + n]
        return b"".join(blocks)[start : start + n]

    def _blocks(self, i: int, first: int, last: int) -> list[bytes]:
        have: dict[int, bytes] = {}
        waits: dict[int, Future[bytes]] = {}
        mine: list[int] = []
        with self._lock:
            for b in range(first, last + 1):
                key = (i, b)
                data = self._cache.get(key)
                if data is not None:
                    self._cache.move_to_end(key)
                    have[b] = data
                elif key in self._inflight:
                    waits[b] = self._inflight[key]
                else:
                    self._inflight[key] = Future()
                    mine.append(b)
        for run in _runs(mine):
            got = self._fetch(i, run[0], run[-1])
            have.update(zip(run, got, strict=True))
        for b, fut in waits.items():
            have[b] = fut.result()
        return [have[b] for b in range(first, last + 1)]

    def _fetch(self, i: int, first: int, last: int) -> list[bytes]:
        """GET blocks ``first … last`` of object ``i`` (already marked in flight by the caller)."""
        url, bs = self._urls[i], self._block
        start, end = first * bs, min(self._sizes[i], (last + 1) * bs)
        try:
            data = retrying(lambda: self._get(i, start, end), url, f"reading bytes {start}-{end - 1} of")
        except BaseException as e:
            with self._lock:
                for b in range(first, last + 1):
                    fut = self._inflight.pop((i, b), None)
                    if fut is not None:
                        fut.set_exception(e)
            raise
        blocks = [data[k : k + bs] for k in range(0, len(data), bs)]
        with self._lock:
            for b, block in zip(range(first, last + 1), blocks, strict=True):
                self._cache[(i, b)] = block
                fut = self._inflight.pop((i, b), None)
                if fut is not None:
                    fut.set_result(block)
            while len(self._cache) > self._slots:
                self._cache.popitem(last=False)
        return blocks

    def _get(self, i: int, start: int, end: int) -> bytes:
        url = self._urls[i]
        try:
            answer = client().get_object(Bucket=url.bucket, Key=url.key, Range=f"bytes={start}-{end - 1}",
                                         IfMatch=self._etags[i])
        except Exception as e:
            if error_code(e)[0] == "PreconditionFailed":
                raise CorruptImageError(f"{url} was replaced while being read; open it again") from None
            raise translate(e, url, f"reading bytes {start}-{end - 1} of") from None
        body = answer["Body"]
        try:
            data = body.read()
        finally:
            body.close()
        if len(data) != end - start:
            raise CorruptImageError(f"{url}: asked for bytes {start}-{end - 1}, got {len(data)} bytes")
        with self._lock:
            self.requests += 1
            self.fetched += len(data)
        log.debug("GET %s bytes %d-%d", url, start, end - 1)
        return bytes(data)

    def _prefetch(self, i: int, first: int, last: int) -> None:
        last = min(last, (self._sizes[i] - 1) // self._block)
        todo: list[int] = []
        with self._lock:
            for b in range(first, last + 1):
                key = (i, b)
                if key not in self._cache and key not in self._inflight:
                    self._inflight[key] = Future()
                    todo.append(b)
            if not todo:
                return
            if self._pool is None:
                self._pool = ThreadPoolExecutor(FETCHERS, thread_name_prefix="s3-readahead")
            pool = self._pool
        for run in _runs(todo, RUN):
            pool.submit(self._background, i, run[0], run[-1])

    def _background(self, i: int, first: int, last: int) -> None:
        try:
            self._fetch(i, first, last)
        except Exception as e:  # whoever reads these blocks for real gets the error
            log.debug("read-ahead of %s failed: %s", self._urls[i], e)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            for fut in self._inflight.values():  # cancelled read-ahead: nobody may wait forever
                if not fut.done():
                    fut.set_exception(CorruptImageError("image closed while reading"))
            self._inflight.clear()
            self._cache.clear()
        log.debug("S3 reads of %s: %d GETs, %d bytes", self.paths[0] if self.paths else "?", self.requests,
                  self.fetched)


def _runs(blocks: list[int], most: int = 1 << 30) -> list[list[int]]:
    """Consecutive block numbers grouped, at most ``most`` per group."""
    runs: list[list[int]] = []
    for b in blocks:
        if runs and runs[-1][-1] == b - 1 and len(runs[-1]) < most:
            runs[-1].append(b)
        else:
            runs.append([b])
    return runs
