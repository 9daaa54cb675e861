"""Signals land where the program can take them: between chunks inside a pipeline, with one line and exit
130 everywhere else, never a traceback, a hang or a signal death after the program said "interrupted"."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from imaging_utility import interrupts


@pytest.fixture
def installed() -> Iterator[None]:
    saved = interrupts.install()
    try:
        yield
    finally:
        interrupts.restore(saved)


def test_outside_a_pipeline_a_signal_raises_at_once(installed: None) -> None:
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # interrupted long before
    assert interrupts.requested()


def test_inside_a_pipeline_a_signal_waits_for_check(installed: None) -> None:
    """The hang this prevents: a signal between a lock's acquire and its ``with`` block (a future's
    condition) left the lock held, and the executor's shutdown waited for ever on the worker behind it."""
    cond = threading.Condition()
    with pytest.raises(KeyboardInterrupt), interrupts.deferred():
        with cond:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # a signal handler runs here, in the lock: it must not raise
        assert interrupts.requested()
        assert cond.acquire(timeout=0)  # released: nothing was raised inside the with block
        cond.release()
        interrupts.check()
        pytest.fail("check() did not raise")


def test_a_signal_pending_when_the_pipeline_ends_is_raised_then(installed: None) -> None:
    with pytest.raises(KeyboardInterrupt), interrupts.deferred():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)


def test_check_on_another_thread_does_nothing(installed: None) -> None:
    """The GUI runs operations on a worker thread: a signal there is the event loop's business."""
    with pytest.raises(KeyboardInterrupt), interrupts.deferred():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        raised: list[BaseException] = []

        def worker() -> None:
            try:
                with interrupts.deferred():
                    interrupts.check()
            except BaseException as e:
                raised.append(e)

        t = threading.Thread(target=worker)
        t.start()
        t.join()
        assert raised == []


def test_a_signal_in_a_weakref_callback_prints_nothing(installed: None, capfd: pytest.CaptureFixture[str]) -> None:
    """Python cannot raise there and prints "Exception ignored in ..." with a traceback; it stays
    requested instead."""
    class Thing:
        pass

    def callback(ref: object) -> None:
        raise KeyboardInterrupt

    thing = Thing()
    _ref = weakref.ref(thing, callback)
    del thing
    assert _ref() is None
    assert "Traceback" not in capfd.readouterr().err


def test_a_wrapped_interrupt_is_known_as_one() -> None:
    """CPython 3.11 turns a KeyboardInterrupt raised in ``__set_name__`` into a RuntimeError."""
    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as e:
            raise RuntimeError("Error calling __set_name__") from e
    except RuntimeError as wrapped:
        assert interrupts.caused_by_signal(wrapped)
    assert not interrupts.caused_by_signal(ValueError("x"))


def test_a_second_signal_ends_the_process_at_once(tmp_path: Path) -> None:
    code = ("import os, signal, time; from imaging_utility import interrupts; interrupts.install()\n"
            "with interrupts.deferred():\n"
            "    os.kill(os.getpid(), signal.SIGINT); time.sleep(0.05)\n"
            "    os.kill(os.getpid(), signal.SIGTERM); time.sleep(30)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
    assert proc.returncode == 130
    assert proc.stderr == "imaging-utility: interrupted again; exiting now\n"


@pytest.mark.parametrize("restored", [False, True])
def test_a_clean_up_that_never_ends_is_ended(restored: bool) -> None:
    """After an interrupt the process ends within EXIT_DEADLINE, whatever holds it up; a library caller
    that put the handlers back (``cli.main(argv)``, these tests) is left alone."""
    code = ("import os, signal, time; from imaging_utility import interrupts; interrupts.EXIT_DEADLINE = 0.3\n"
            "saved = interrupts.install()\n"
            "try:\n"
            "    os.kill(os.getpid(), signal.SIGINT); time.sleep(5)\n"
            "except KeyboardInterrupt:\n"
            f"    {'interrupts.restore(saved)' if restored else 'pass'}\n"
            "time.sleep(2)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=20)
    if restored:
        assert (proc.returncode, proc.stderr) == (0, "")
    else:
        assert proc.returncode == 130
        assert proc.stderr == "imaging-utility: interrupted, and cleaning up took more than 0.3 s; exiting now\n"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("signals") / "src.raw"
    path.write_bytes(random.Random(3).randbytes(16 << 20))
    return path


@pytest.fixture(scope="module")
def image(source: Path) -> Path:
    img = source.with_name("src.img")
    subprocess.run([sys.executable, "-m", "imaging_utility", "image", "--chunk-size", "64K", str(source), str(img)],
                   check=True, capture_output=True)
    return img


def _signalled_runs(args: list[str], runs: int, seed: int, stdin: Path | None = None) -> list[int]:
    """``runs`` runs of ``imaging-utility ARGS`` (``{i}`` in an argument: the run's number), each sent
    SIGINT or SIGTERM at a random moment from start-up to the end.  Each must end within 30 s, with exit
    130 and one line, or 0 if it finished first, never a traceback from our code.  A signal before the
    first line of the package runs (the interpreter starting, about 30 ms) meets Python's own handling
    (SIGTERM kills silently; SIGINT prints a traceback of runpy, or of site or runpy failing to load with
    exit 1), as it would in any Python program.
    Exit codes."""
    rng = random.Random(seed)
    outcomes = []
    for i in range(runs):
        with open(stdin or os.devnull, "rb") as inp:
            proc = subprocess.Popen([sys.executable, "-m", "imaging_utility", *(a.format(i=i) for a in args)],
                                    stdin=inp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    env={**os.environ, "PYTHONFAULTHANDLER": "1"})
            time.sleep(rng.uniform(0.02, 0.4))
            sig = rng.choice([signal.SIGINT, signal.SIGTERM])
            proc.send_signal(sig)
            try:
                _, err = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGABRT)
                _, err = proc.communicate(timeout=30)
                pytest.fail(f"{args[0]} run {i} still running 30 s after {sig.name}; its threads:\n{err}")
        outcomes.append(proc.returncode)
        if proc.returncode in (0, 130):
            assert "Traceback" not in err and "Exception ignored" not in err and "internal error" not in err, err
        if proc.returncode == 130:
            assert err.startswith("imaging-utility: ") and "interrupted" in err and err.count("\n") == 1, err
        elif proc.returncode == 0:
            assert "imaging-utility:" not in err, err
        else:  # before the package's first line ran: Python's own handling (silent death, or its traceback
            # and exit 1 when the signal came while site or runpy was loading)
            assert "imaging_utility" not in err and proc.returncode in (-sig, 1), (proc.returncode, err)
    return outcomes


def test_signals_at_random_points_of_imaging(source: Path, tmp_path: Path) -> None:
    """Before this, about one in ten runs signalled during start-up printed a traceback, or "interrupted"
    and then died of SIGINT (CPython 3.11 after a KeyboardInterrupt through a dataclass's ``exec``), or
    "internal error"; one in 400 hung for ever (a future's lock left held by the interrupt)."""
    outcomes = _signalled_runs(["image", "--chunk-size", "64K", "--threads", "1", str(source),
                                str(tmp_path / "{i}.img")], 40, 7)
    assert outcomes.count(130) >= 20, outcomes


@pytest.mark.parametrize("command", ["restore", "restore-stdin", "verify", "export"])
def test_signals_at_random_points_of_reading_pipelines(command: str, image: Path, tmp_path: Path) -> None:
    """The other threaded pipelines take a signal between chunks as imaging does."""
    args, stdin = {
        "restore": (["restore", "--threads", "2", str(image), str(tmp_path / "{i}.raw")], None),
        "restore-stdin": (["restore", "--threads", "2", "-", str(tmp_path / "{i}.raw")], image),
        "verify": (["verify", "--threads", "2", str(image)], None),
        "export": (["export", "-f", "vhdx", str(image), str(tmp_path / "{i}.vhdx")], None),
    }[command]
    outcomes = _signalled_runs(args, 12, 11, stdin)
    assert outcomes.count(130) >= 4, outcomes
