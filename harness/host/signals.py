"""Undoing half-built state when the work fails or is interrupted (Ctrl-C, SIGTERM).

``install()`` (the CLI does it on start) makes SIGINT and SIGTERM raise
``Interrupted`` for the whole command, whatever it inherited (a background job
starts with SIGINT ignored; ``timeout`` and CI cancellation send SIGTERM), so
every command unwinds through its ``finally``/``with`` clean-ups on both.

``undo_on_failure(undo)`` runs its body with SIGINT and SIGTERM raising
``Interrupted`` (a KeyboardInterrupt), so the interruption unwinds like any
exception.  If the body raises anything, ``undo()`` runs with those signals
ignored (a second Ctrl-C cannot cut the teardown short; commands it starts
inherit that), then the original exception is re-raised, with a note if the
undo failed too.  Off the main thread signals cannot be caught, and only
exceptions trigger the undo.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Callable, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; ``signum`` says which."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


def _raise(signum: int, _frame) -> None:
    raise Interrupted(signum)


def install() -> None:
    """SIGINT and SIGTERM raise ``Interrupted`` from now on (main thread only)."""
    for sig in SIGNALS:
        signal.signal(sig, _raise)


@contextlib.contextmanager
def shielded() -> Iterator[None]:
    """Run a clean-up with SIGINT and SIGTERM held back (blocked), so a second signal
    cannot cut it short: one arriving meanwhile is delivered when the block ends (and
    raises then), or discarded when the block is already unwinding an exception.
    Processes started inside inherit the signals blocked (a Ctrl-C to the process
    group does not kill the clean-up's own commands either)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    unwinding = True
    try:
        yield
        unwinding = False
    finally:
        pending = set(signal.sigpending()) & set(SIGNALS) if unwinding else set()
        saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in pending}   # discards them
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        for sig, handler in saved.items():
            signal.signal(sig, handler)


#: What ``deferred`` holds: the signals that end a command (SIGHUP: its terminal went).
DEFERRED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def deferred(signals: tuple[int, ...] = DEFERRED) -> Iterator[None]:
    """Hold *signals* for the duration of the block and deliver them afterwards
    (each once, to the handler that was in place): for a step that must finish
    once begun (map writes, recording a process just forked).  The handlers are
    Python's, not the signal mask, so a process started inside gets the default
    dispositions (exec resets them) and no blocked signal.  Outside the main
    thread, where Python cannot change handlers, the block runs as is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {}
    for s in signals:
        previous[s] = signal.signal(s, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        for s in dict.fromkeys(caught):
            signal.raise_signal(s)


@contextlib.contextmanager
def undo_on_failure(undo: Callable[[], object]) -> Iterator[None]:
    """Run the body; on any exception or SIGINT/SIGTERM, ``undo()`` and re-raise."""
    on_main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, _raise) for sig in SIGNALS} if on_main else {}
    try:
        yield
    except BaseException as exc:
        if on_main:
            for sig in SIGNALS:
                signal.signal(sig, signal.SIG_IGN)
        try:
            undo()
        except Exception as undo_exc:  # keep the original failure; say the undo failed too
            exc.add_note(f"undoing failed as well: {undo_exc}")
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
