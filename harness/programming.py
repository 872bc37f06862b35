"""Programming a loaded collection's maps from a scenario.

Each datapath concern (service LB, policy, ...) registers a programmer for
the maps it owns; ``program_maps`` runs every programmer whose maps the
collection has, for the endpoint whose program is being run.  A collection
whose maps no programmer owns (the parser, the empty floor) needs nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from harness.bpf import Collection


@dataclass(frozen=True)
class Programmer:
    name: str
    maps: frozenset[str]          # the programmer runs when the collection has all of these
    apply: Callable[..., None]    # (collection, scenario, endpoint pod, settings)


_PROGRAMMERS: list[Programmer] = []


def register(name: str, *maps: str):
    """Decorator: register ``fn(collection, scenario, endpoint, settings)`` for collections with *maps*
    (*settings*: node settings such as ``np_ipblock``, see program_maps)."""
    def wrap(fn):
        _PROGRAMMERS.append(Programmer(name, frozenset(maps), fn))
        return fn
    return wrap


def program_maps(collection: Collection, scenario, endpoint=None, settings: dict | None = None) -> list[str]:
    """Run the programmers that apply to *collection*; return their names in order.
    *settings* are node settings a programmer may read (``np_ipblock``: what a
    NetworkPolicy ipBlock selects, see harness.policy.resolve)."""
    ran = []
    for prog in _PROGRAMMERS:
        if prog.maps <= collection.maps.keys():
            prog.apply(collection, scenario, endpoint, settings or {})
            ran.append(prog.name)
    return ran
