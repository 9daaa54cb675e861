"""Ctrl-C and termination signals, taken where threaded work can take them safely.

Python raises ``KeyboardInterrupt`` wherever the main thread is when a signal arrives.  When that is
between taking a lock and the ``with`` block that would release it (``threading.Condition.__enter__`` is
Python code, and every ``concurrent.futures`` future has one), the lock is never released: the worker that
next touches that future blocks for ever, and so does the executor's shutdown that joins it.  Seen as an
imaging run that printed nothing and never exited after Ctrl-C, about once in 400 signals sent at random
points (every thread's stack: the worker in ``Future.set_running_or_notify_cancel``, the main thread in
``ThreadPoolExecutor.shutdown``).

So ``install`` puts one handler on SIGINT, SIGTERM, SIGHUP and SIGQUIT:

- within ``deferred()`` (a chunk pipeline, on the main thread) a signal is only recorded, and ``check()``
  raises ``KeyboardInterrupt`` at the pipeline's own safe point, between chunks;
- elsewhere it raises ``KeyboardInterrupt`` at once, as Python's own handler does;
- either way a watchdog then ends the process (exit 130) if it is still cleaning up ``EXIT_DEADLINE``
  seconds later, and a second signal ends it at once.  What was written stays resumable: an interrupted
  image is made to survive ``kill -9``.

``cli.main`` installs it for every command.  Once the command is over, a late signal is ignored, and an
interrupted run exits 130 without the interpreter's shutdown (``exit_interrupted``).  Servers replace it
while they serve (``cli._serving``: a signal calls their own stop), and the GUI takes SIGTERM in its event
loop.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, NoReturn

from .errors import EXIT_INTERRUPTED

EXIT_DEADLINE = 60.0  # seconds an interrupted command may spend cleaning up
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


class _State:
    requested: int | None = None  # the first signal received
    late = False  # the command is over
    generation = 0  # bumped by install() and restore(): a watchdog of an earlier one stands down
    unraisable: Callable[[Any], object] = sys.unraisablehook  # the hook ours passes other errors to
    deferring = 0  # depth of deferred() scopes on the main thread


_state = _State()


Handlers = dict[signal.Signals, Any]


def install() -> Handlers:
    """Take SIGINT, SIGTERM, SIGHUP and SIGQUIT (a closed terminal or Ctrl-\\ as Ctrl-C); what is ignored
    (``nohup``) stays ignored.  Returns the handlers replaced, for ``restore``."""
    _state.requested, _state.late = None, False
    _state.generation += 1
    if sys.unraisablehook is not _unraisable:
        _state.unraisable = sys.unraisablehook
        sys.unraisablehook = _unraisable
    return {sig: signal.signal(sig, _on_signal) for sig in SIGNALS if signal.getsignal(sig) != signal.SIG_IGN}


def restore(saved: Handlers) -> None:
    """Put back the handlers ``install`` replaced (a library call of ``cli.main``, a test); a watchdog
    still waiting stands down."""
    _state.generation += 1
    for sig, handler in saved.items():
        signal.signal(sig, handler)
    if sys.unraisablehook is _unraisable:
        sys.unraisablehook = _state.unraisable


def _unraisable(info: Any) -> None:
    """A signal that landed in a weakref callback or a destructor: Python cannot raise it there and would
    print it as a traceback.  It stays requested (``check()``, and a second signal ends the process)."""
    if not isinstance(info.exc_value, KeyboardInterrupt):
        _state.unraisable(info)


def caused_by_signal(e: BaseException) -> bool:
    """Is ``e`` a wrapper of our ``KeyboardInterrupt`` (CPython 3.11 turns one raised in ``__set_name__``
    while a class is being defined into a ``RuntimeError``)?"""
    seen: set[int] = set()
    cause: BaseException | None = e
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False


def ignore_late() -> None:
    """The command is over: a signal from now on changes nothing (without this, one that lands while the
    interpreter shuts down prints a traceback from ``threading._shutdown`` after a successful run)."""
    _state.late = True


def exit_interrupted() -> NoReturn:
    """End an interrupted run with exit 130, now.  Not through the interpreter's own exit: it would wait
    for threads, and when the ``KeyboardInterrupt`` went through code that ``exec``\\ s a string (a
    dataclass being defined by an import the command makes), CPython 3.11 ends the process by SIGINT
    instead, as if it had never been handled (exit -2, not 130)."""
    import logging  # not at the top: ``--version`` loads this module and must not load logging

    logging.shutdown()
    exit_now(None)


def _on_signal(signum: int, frame: FrameType | None) -> None:
    if _state.late:
        return
    if _state.requested is not None:
        exit_now("interrupted again; exiting now")
    _state.requested = signum
    if not _state.deferring:
        _interrupt()


def _interrupt() -> None:
    threading.Thread(target=_watchdog, args=(_state.generation,), name="interrupt-watchdog", daemon=True).start()
    raise KeyboardInterrupt


def _watchdog(generation: int) -> None:
    threading.Event().wait(EXIT_DEADLINE)
    if generation != _state.generation:
        return
    exit_now(f"interrupted, and cleaning up took more than {EXIT_DEADLINE:g} s; exiting now")


def exit_now(why: str | None) -> NoReturn:
    """Say ``why`` (one line), flush, and end the process with exit 130 at once."""
    try:
        if why:
            sys.stderr.write(f"imaging-utility: {why}\n")
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
    finally:
        os._exit(EXIT_INTERRUPTED)


def requested() -> bool:
    """Has a signal asked this process to stop?"""
    return _state.requested is not None


def check() -> None:
    """At a safe point of a ``deferred()`` scope: raise ``KeyboardInterrupt`` if a signal came."""
    if _state.requested is not None and threading.current_thread() is threading.main_thread():
        _interrupt()


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Within, on the main thread, a signal only sets ``requested()``; the code calls ``check()`` where
    stopping is safe.  One still pending on a normal exit from the scope is raised then.  On other
    threads (the GUI runs operations on a worker) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _state.deferring += 1
    try:
        yield
    finally:
        _state.deferring -= 1
    check()
