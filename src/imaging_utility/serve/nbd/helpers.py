"""Helper processes that serve a share of every NBD connection, so decoding uses more than one core.

CPython runs one thread's Python at a time: threads overlap zstd and the system calls, but a connection
of small random reads is bound by the interpreter, and threads fighting over it cost more than they gain.
So ``serve-proxy`` forks helper processes at start, before any thread exists; each inherits the opened
exports.  When a connection has finished its handshake, the main process passes its socket (``SCM_RIGHTS``
over a ``SOCK_SEQPACKET`` pair) and the negotiated state to every helper, and each runs one more
participant of that connection: participants take turns reading a batch of requests under the
connection's receive lock, handle them with their own decoder and cache, and write each reply under its
send lock.  Both locks are process-shared semaphores, one pair per connection slot, created before the
fork; so is the "ended" flag.  A helper reports when it is done with a slot; the slot is then reused.

A helper that dies (it should not: request errors are answered, not raised) may have died holding a lock:
its connections are dropped and their slots never reused, the other helpers and the main process go on.
Helpers exit when the main process closes their channel, and get SIGTERM if the main process dies.
"""

from __future__ import annotations

import ctypes
import json
import logging
import multiprocessing
import os
import signal
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .._listener import release_free_memory

log = logging.getLogger(__name__)

_CTX = multiprocessing.get_context("fork")
_DONE = struct.Struct("<I")
PR_SET_PDEATHSIG = 1


class SharedFlag:
    """One byte of shared memory: a connection's "ended" flag, seen by all its processes."""

    __slots__ = ("_array", "_index")

    def __init__(self, array: Any, index: int) -> None:
        self._array = array
        self._index = index

    def is_set(self) -> bool:
        return bool(self._array[self._index])

    def set(self) -> None:
        self._array[self._index] = 1

    def clear(self) -> None:
        self._array[self._index] = 0


@dataclass
class Slot:
    """The process-shared state of one connection."""

    index: int
    recv_lock: Any
    send_lock: Any
    ended: SharedFlag
    waiting: set[int] = field(default_factory=set)  # helpers (by number) still serving it
    sock: socket.socket | None = None  # the main process's end, to drop it if a helper dies


ServeShare = Callable[[socket.socket, dict[str, Any], Slot], None]


class HelperPool:
    """``count`` helper processes and ``slots`` connection slots.  Create it before starting any thread;
    ``close_in_child`` are descriptors the helpers must not keep (the listening socket)."""

    def __init__(self, count: int, slots: int, serve_share: ServeShare, close_in_child: list[int]) -> None:
        if threading.active_count() > 1:  # a fork would copy locks other threads may hold
            raise RuntimeError("NBD helper processes must be started before any other thread")
        flags = _CTX.RawArray("b", slots)
        self.slots = [Slot(k, _CTX.Lock(), _CTX.Lock(), SharedFlag(flags, k)) for k in range(slots)]
        self._free = list(range(slots - 1, -1, -1))
        self._cond = threading.Condition()
        self._poisoned: set[int] = set()
        self._channels: dict[int, socket.socket] = {}
        self._pids: dict[int, int] = {}
        for number in range(count):
            parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the helper (its coverage is not collected)
                try:
                    parent_end.close()
                    for channel in self._channels.values():
                        channel.close()
                    for fd in close_in_child:
                        os.close(fd)
                    _helper_main(child_end, self.slots, serve_share)
                finally:
                    os._exit(0)
            child_end.close()
            self._channels[number] = parent_end
            self._pids[number] = pid
        for number, channel in self._channels.items():
            threading.Thread(target=self._listen, args=(number, channel), daemon=True,
                             name=f"nbd-helper-{number}").start()

    def share(self, sock: socket.socket, state: dict[str, Any]) -> Slot | None:
        """Give the connection to every live helper; None when no slot or helper is free."""
        with self._cond:
            if not self._free or not self._channels:
                return None
            k = self._free.pop()
            slot = self.slots[k]
            slot.ended.clear()
            slot.sock = sock
            message = json.dumps({**state, "slot": k}).encode()
            for number, channel in list(self._channels.items()):
                try:
                    socket.send_fds(channel, [message], [sock.fileno()])
                except OSError as e:
                    log.warning("NBD helper %d unreachable: %s", number, e)
                    continue
                slot.waiting.add(number)
            return slot

    def release(self, slot: Slot) -> None:
        """Wait until every helper is done with ``slot`` (after the main process's own participants)."""
        with self._cond:
            while slot.waiting:
                self._cond.wait()
            slot.sock = None
            if slot.index not in self._poisoned:  # a dead helper may have left its locks taken
                self._free.append(slot.index)

    def _listen(self, number: int, channel: socket.socket) -> None:
        while True:
            try:
                data = channel.recv(_DONE.size)
            except OSError:
                data = b""
            if len(data) != _DONE.size:
                break
            (k,) = _DONE.unpack(data)
            with self._cond:
                self.slots[k].waiting.discard(number)
                self._cond.notify_all()
        with self._cond:  # the helper is gone
            if self._channels.pop(number, None) is None:
                return  # closed by us
            pid = self._pids.pop(number)
        try:
            _pid, status = os.waitpid(pid, 0)
            how = f"exit status {os.waitstatus_to_exitcode(status)}"
        except ChildProcessError:
            how = "already reaped"
        log.error("NBD helper process %d (pid %d) died (%s); its connections are dropped", number, pid, how)
        with self._cond:
            for slot in self.slots:
                if number in slot.waiting:
                    slot.waiting.discard(number)
                    self._poisoned.add(slot.index)
                    slot.ended.set()  # participants waiting for a lock the helper held give up
                    if slot.sock is not None:
                        try:
                            slot.sock.shutdown(socket.SHUT_RDWR)
                        except OSError:
                            pass
            self._cond.notify_all()
        channel.close()

    def close(self) -> None:
        """Stop the helpers (their connections must have been shut down already) and reap them."""
        with self._cond:
            channels, self._channels = self._channels, {}
            for slot in self.slots:
                slot.waiting.clear()
            self._cond.notify_all()
        for channel in channels.values():
            try:
                channel.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            channel.close()
        for pid in list(self._pids.values()):
            try:
                os.kill(pid, signal.SIGTERM)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass


def _helper_main(channel: socket.socket, slots: list[Slot], serve_share: ServeShare) -> None:  # pragma: no cover
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent decides
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the parent died before prctl
        return
    report_lock = threading.Lock()
    serving = [0]  # connections this helper is serving, under report_lock

    def serve(sock: socket.socket, state: dict[str, Any]) -> None:
        k = state["slot"]
        with report_lock:
            serving[0] += 1
        try:
            serve_share(sock, state, slots[k])
        except Exception:
            log.exception("NBD helper connection failed")
        finally:
            sock.close()
            with report_lock:
                try:
                    channel.send(_DONE.pack(k))
                except OSError:
                    pass
                serving[0] -= 1
                idle = not serving[0]
            if idle:
                release_free_memory()

    while True:
        try:
            message, fds, _flags, _addr = socket.recv_fds(channel, 1 << 16, 1)
        except OSError:
            return
        if not message or not fds:
            return
        sock = socket.socket(fileno=fds[0])
        threading.Thread(target=serve, args=(sock, json.loads(message)), daemon=True, name="nbd-share").start()
