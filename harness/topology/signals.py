"""Undoing half-built state when the work fails or is interrupted (Ctrl-C, SIGTERM).

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
