"""Run a server in the main thread until a signal asks it to stop.

Ctrl-C, SIGTERM, SIGHUP and SIGQUIT elsewhere raise ``KeyboardInterrupt`` in the main thread (see ``main``).
A server must not be stopped that way: the exception lands wherever the main thread happens to be, and when
that is inside a queue or a lock shared with the worker threads (cheroot's ``ThreadPool`` queue, the
listener's connection lock), the worker that should take the shutdown request is never woken and the
process hangs on exit. Here a signal only starts a thread that calls the server's own ``stop``; the serving
loop returns normally. A second signal, or a stop that takes longer than ``STOP_DEADLINE``, ends the process
at once: the servers only read, so nothing is lost.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType

from .. import interrupts

STOP_DEADLINE = 15.0
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


def serve_until_signalled(serve_forever: Callable[[], None], stop: Callable[[], None]) -> bool:
    """Call ``serve_forever()`` until ``stop()`` (run on a helper thread on a signal) ends it.

    Returns True when a signal stopped the server. Signal handlers are restored on return.
    """
    signalled = threading.Event()
    stopper: list[threading.Thread] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if signalled.is_set():
            interrupts.exit_now("interrupted again; exiting now")
        signalled.set()
        thread = threading.Thread(target=_stop_within_deadline, args=(stop,), name="stop", daemon=True)
        stopper.append(thread)
        thread.start()

    saved: dict[signal.Signals, object] = {}
    for sig in _SIGNALS:
        if signal.getsignal(sig) != signal.SIG_IGN:  # what nohup ignores stays ignored
            saved[sig] = signal.signal(sig, on_signal)
    try:
        serve_forever()
    finally:
        for restored, handler in saved.items():
            signal.signal(restored, handler)  # type: ignore[arg-type]
        for thread in stopper:
            thread.join(STOP_DEADLINE)
    return signalled.is_set()


def _stop_within_deadline(stop: Callable[[], None]) -> None:
    done = threading.Event()

    def watchdog() -> None:
        if not done.wait(STOP_DEADLINE):
            interrupts.exit_now(f"the server did not stop within {STOP_DEADLINE:g} s; exiting now")

    threading.Thread(target=watchdog, name="stop-watchdog", daemon=True).start()
    try:
        stop()
    finally:
        done.set()
