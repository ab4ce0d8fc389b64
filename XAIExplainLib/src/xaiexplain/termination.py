"""Catchable signals as the library handles them: SIGTERM and SIGHUP end a command through the same clean-up
as Ctrl-C (SIGINT), with the exit status of the signal, and all three are held back for the few renames of
an output set's commit (``io.files``), so that a commit is never half done."""
from __future__ import annotations

import contextlib
import signal

_HELD_SIGNALS = tuple(s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None),
                                  getattr(signal, "SIGHUP", None)) if s is not None)


@contextlib.contextmanager
def signals_held():
    """Hold back catchable signals for the few renames of a commit (they arrive right after it)."""
    try:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_SIGNALS)
    except (AttributeError, ValueError, OSError):  # no pthread_sigmask (Windows)
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread like SIGINT so that every clean-up runs."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum, frame):
    raise Terminated(signum)


def handle_termination_signals() -> None:
    """Make SIGTERM and SIGHUP end the program through the same clean-up as Ctrl-C (command lines call it)."""
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), _raise_terminated)


def interrupted_exit_status(error: KeyboardInterrupt) -> int:
    return 128 + (error.signum if isinstance(error, Terminated) else signal.SIGINT)
