"""A program's collection loaded as ``chainbench test-run`` loads it: the rodata a
node's datapath gets (the endpoint's too when an lxc program runs for a pod), the
knobs the user set on top, and the maps programmed from a scenario, as the node
would hold them for that pod.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

from harness.bpf import Collection
from harness.node import datapath


@contextlib.contextmanager
def collection(obj: Path, scenario=None, endpoint=None, rodata: dict[str, Any] | None = None,
               np_ipblock: str = "pods") -> Iterator[Collection]:
    """*obj* loaded (not attached) for a test run: *endpoint* is the scenario's pod whose
    program runs (its node's and its own rodata), *rodata* overrides, and *scenario*
    programs the maps (*np_ipblock*: what a NetworkPolicy ipBlock selects)."""
    node = endpoint.node_name if endpoint is not None else None
    values = datapath.rodata_for(obj.name.removesuffix(".bpf.o"), node)
    if endpoint is not None and obj.name == "lxc.bpf.o":
        values.update(datapath.endpoint_rodata(
            datapath.test_run_endpoint_ids(scenario).get(endpoint.ref, 0),
            str(endpoint.ipv4) if endpoint.ipv4 else None,
            str(endpoint.ipv6) if endpoint.ipv6 else None))
    values.update(rodata or {})
    with Collection.load(str(obj), rodata=values or None) as coll:
        if scenario is not None:
            datapath.program_maps(coll, scenario, endpoint, {"np_ipblock": np_ipblock})
        yield coll
