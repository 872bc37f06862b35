"""Finishing a map change that a killed ``lb apply`` / ``policy apply`` left in a
node's write-ahead journal (harness.journal): replayed to the end by the next
command that opens the node's pinned maps, or rolled back if a step cannot be
made."""
from __future__ import annotations

import contextlib
import os
from typing import Callable, Mapping

from harness.bpf import Map
from harness.host.signals import deferred as deferred_signals
from harness.journal import Journal, Writer, finish

_recovering: set[str] = set()

#: Opens what replaying Maglev steps needs (the node's lxc collection, on *stack*)
#: and returns a Writer over it.
LbWriterFactory = Callable[[contextlib.ExitStack], Writer]


def recover(node: str, maps: Mapping[str, Map] | None = None, *, journal: Journal,
            pin_dir: str | None = None, lb_writer: LbWriterFactory | None = None,
            writer: Writer | None = None) -> str | None:
    """Finish a change a killed process left in *node*'s *journal*, if any; returns
    "forward" or "back" (what was done) or None (no journal).  *maps*: the node's
    pinned maps when the caller has them open; *pin_dir*: where the node's maps are
    pinned; *lb_writer*: how to open a writer for Maglev steps (harness.node.node
    passes one); *writer* (tests): maps that are not the node's pins."""
    if not journal.exists() or node in _recovering:
        return None
    _recovering.add(node)
    try:
        with journal.lock(), deferred_signals():
            if not journal.exists():            # finished by whoever held the lock
                return None
            record = journal.read()
            if writer is not None:
                return finish(journal, record, writer)
            return _replay(journal, record, maps, pin_dir, lb_writer)
    finally:
        _recovering.discard(node)


def _replay(journal: Journal, record: dict, maps: Mapping[str, Map] | None,
            pins: str | None, lb_writer: LbWriterFactory | None) -> str:
    steps = record["steps"]
    if pins is None or not os.path.isdir(pins):                          # torn down since: nothing to finish
        journal.remove()
        return "back"
    with contextlib.ExitStack() as stack:
        if any(s[0].startswith("maglev") for s in steps):
            if lb_writer is None:
                raise ValueError(f"{journal.path}: Maglev steps need the node's lxc collection")
            writer = lb_writer(stack)
        else:
            opened = {}
            for name in {s[1] for s in steps}:
                if maps is not None and name in maps:
                    opened[name] = maps[name]
                else:
                    opened[name] = stack.enter_context(Map.from_pin(os.path.join(pins, name)))
            writer = Writer(opened)
        return finish(journal, record, writer)
