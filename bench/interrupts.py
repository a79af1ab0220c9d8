"""Ctrl-C during a command: never lost, and never in the middle of writing a run's end.

Python's own SIGINT handler raises KeyboardInterrupt wherever the main thread happens to be. Two
places lose it: a finaliser run by the garbage collector (the exception is printed as "ignored"
and the sweep goes on, to exit 0), and a run's end being written (the run is left RUNNING although
it had finished). :func:`handling` installs a handler that remembers every Ctrl-C, so the CLI
reports it even where the exception was swallowed; :func:`deferred` holds it back while a run's
end is written and raises it right after; :func:`check` raises it at the driver's safe points.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

_received = False  # a Ctrl-C arrived while the handler was installed
_deferring = 0  # deferred() blocks open
_pending = False  # a Ctrl-C arrived inside deferred(), to raise when it closes


def on_signal(signum: int, frame: object) -> None:
    """Stop as Ctrl-C does (SIGTERM comes here too), unless a run's end is being written."""
    global _received, _pending
    _received = True
    if _deferring:
        _pending = True
        return
    raise KeyboardInterrupt


@contextlib.contextmanager
def handling() -> Iterator[None]:
    """Install the handler for the duration of a command (in the main thread, where SIGINT is not ignored)."""
    global _received, _pending
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield  # a process started in the background by a shell ignores Ctrl-C, and keeps ignoring it
        return
    _received = _pending = False
    previous = signal.signal(signal.SIGINT, on_signal)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _received = _pending = False


def received() -> bool:
    """Whether a Ctrl-C arrived since :func:`handling` was entered, whether or not it was swallowed."""
    return _received


def check() -> None:
    """Raise KeyboardInterrupt if a Ctrl-C arrived and was swallowed on its way up."""
    if _received:
        raise KeyboardInterrupt


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold Ctrl-C back while the block runs (a run's end is written whole), then raise it."""
    global _deferring, _pending
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        if not _deferring and _pending:
            _pending = False
            raise KeyboardInterrupt
