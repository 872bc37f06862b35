"""What the read commands show, node by node: services, conntrack entries, SNAT
counters, endpoints and an endpoint's policy entries, read from the pinned maps and
the endpoint registries of the nodes a command covers (harness.topology.lookup:
``--node`` or every pinned node).  Plain data: the CLI prints it.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from harness.errors import InputError
from harness.lb import listing
from harness.node import conntrack, datapath, snat
from harness.node.endpoints import READY
from harness.node.node import Node
from harness.policy import entries as PE
from harness.policy.control import read_rules
from harness.topology import lookup


@contextlib.contextmanager
def node_maps(node: str | None) -> Iterator[list[tuple[str, dict]]]:
    """[(node, its pinned maps)] for every node covered (*node*: that one), closed after."""
    with contextlib.ExitStack() as stack:
        yield [(name, stack.enter_context(Node(name).open_pinned()))
               for name in lookup.select(node)]


def one_node_maps(node: str | None) -> contextlib.AbstractContextManager:
    """The pinned maps of *node*, or of the only pinned node; closed after."""
    return Node(datapath.resolve_node(node)).open_pinned()


def services(node: str | None) -> list[listing.ServiceRow]:
    """The frontends of every node covered, named by the Service they came from."""
    rows = []
    with node_maps(node) as covered:
        for name, maps in covered:
            node_rows = listing.read_services(maps)
            listing.name_services(node_rows, name, lookup.service_names(name))
            rows += node_rows
    return rows


def conntrack_records(node: str | None) -> list[tuple[str, conntrack.CtRecord]]:
    """(node, entry) for the conntrack entries of every node covered."""
    with node_maps(node) as covered:
        return [(name, r) for name, maps in covered for r in conntrack.records(maps)]


def conntrack_clean(node: str | None, expired_only: bool) -> dict[str, int]:
    """Entries removed per conntrack map of *node*: the expired ones (gc) or all (flush)."""
    with one_node_maps(node) as maps:
        return conntrack.gc(maps) if expired_only else conntrack.flush(maps)


def snat_stats(node: str | None) -> dict[str, dict[int, snat.SnatStats]]:
    """node -> IP family -> SNAT port allocation counters, for every node covered that has
    the counters (a named node without them is an error)."""
    per_node = {}
    with node_maps(node) as covered:
        for name, maps in covered:
            if snat.STATS_MAP in maps:
                per_node[name] = snat.read_stats(maps)
            elif node is not None:
                raise InputError(f"node {name} has no {snat.STATS_MAP} map (its from_netdev "
                                 "predates it)")
    return per_node


def label_list(joined: str | None) -> list[str]:
    """An identity's labels as the registry keeps them (comma-separated) -> a list."""
    return [x for x in (joined or "").split(",") if x]


def _enforcement(flags: int) -> tuple[bool, bool]:
    return (bool(flags & PE.EP_FLAGS["EP_F_INGRESS_ENFORCED"]),
            bool(flags & PE.EP_FLAGS["EP_F_EGRESS_ENFORCED"]))


def endpoints(node: str | None) -> list[dict]:
    """The endpoints of every node covered (*node*: that one; no --node and nothing pinned:
    none), as ``kubectl get cep`` lists them, in node order then endpoint id (an id is
    unique per node)."""
    rows = []
    covered = [datapath.resolve_node(node)] if node else datapath.pinned_nodes()
    for name in covered:
        registry = Node(name).endpoints
        labels = registry.identity_labels()
        with one_node_maps(name) as maps:
            for rec in registry.records.values():
                info = maps["cb_endpoints"].get(rec.id) if rec.state == READY else None
                identity = info.identity if info is not None else None
                ingress, egress = _enforcement(info.flags if info is not None else 0)
                rows.append({
                    "name": rec.pod, "node": name, "endpoint_id": rec.id,
                    "identity_id": identity,
                    "labels": sorted({*(rec.labels or []),
                                      *(label_list(labels.get(identity)) if identity else [])}),
                    "ingress_enforcement": ingress, "egress_enforcement": egress,
                    "state": rec.state, "ipv4": rec.ipv4, "ipv6": rec.ipv6,
                    "interface": rec.interface})
    rows.sort(key=lambda r: (covered.index(r["node"]), r["endpoint_id"]))
    return rows


def endpoint_names() -> list[str]:
    """Every endpoint of the pinned nodes (for shell completion)."""
    return sorted({p for n in datapath.pinned_nodes() for p in Node(n).endpoints.records})


def policy_entries(endpoint: str, node: str | None) -> dict:
    """The live policy entries of *endpoint* (``NS/POD`` or ``POD``) with their hit
    counters, as ``cilium bpf policy get`` shows them; *node*: default the pod's."""
    ref = lookup.pod_ref(endpoint)
    node = datapath.resolve_node(node) if node else lookup.pod_node(ref)
    registry = Node(node).endpoints
    if ref not in registry.records:
        raise InputError(f"no endpoint {ref} on {node} (known: "
                         f"{', '.join(sorted(registry.records)) or 'none'})")
    rec = registry.records[ref]
    with one_node_maps(node) as maps:
        info = maps["cb_endpoints"].lookup(rec.id)
        rules = read_rules(maps, rec.id)
    ingress, egress = _enforcement(info.flags)
    labels = registry.identity_labels()
    return {"endpoint": ref, "node": node, "id": rec.id, "identity": info.identity,
            "revision": info.policy_revision,
            "ingress": "enforced" if ingress else "allow-all",
            "egress": "enforced" if egress else "allow-all",
            "rules": [{"verdict": "Deny" if k.deny else "Allow",
                       "direction": "Egress" if k.egress else "Ingress",
                       "identity": k.identity if k.identity else None,
                       "labels": label_list(labels.get(k.identity)) if k.identity else [],
                       "port_proto": k.port_proto_text(), "bytes": b, "packets": p}
                      for k, p, b in rules]}
