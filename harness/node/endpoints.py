"""The endpoints of a node: pod -> endpoint id, kept beside its pinned maps.

Endpoint ids index ``cb_endpoints`` and prefix the policy keys; they are
assigned smallest-free-first and kept in the node's state directory
(``endpoints.json``; harness.node.node.Node.endpoints) so every later command (``policy get``, ``endpoints``) finds the same ones.
``chainbench down`` removes the state directory with everything else.

A record's ``state`` follows Cilium's endpoint states: the CNI plugin creates
it ``not-ready`` (nothing attached yet), makes it ``waiting-for-identity``
once its programs are attached to the pod's veth, and the node's sync makes
it ``ready`` when it sets the identity and the policy.  ``EndpointRegistry.fill``
is the one place a record is filled in (the plugin, the sync and ``policy
apply`` call it with what they know) and the state moves.  So a pod whose ADD was
cut short (a killed ``up``) is never listed ``ready``.  ``unmanaged``: a pod
the plugin was told to skip.

An endpoint is a scenario pod (``namespace/name``) or a container a runtime
outside Kubernetes attached (``container:<name>``, see harness/node/cni_plugin.py):
``workloads()`` lists the latter on every node for the ipcache.  A record
keeps the CNI attachment (container id, interface) that made it, so DEL finds
it by what every runtime passes.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from harness.paths import STATE_ROOT

if TYPE_CHECKING:
    from harness.policy.model import Workload

MAX_ENDPOINT_ID = 4095          # cb_endpoints holds 4096 slots; id 0 means "no endpoint"
NOT_READY, WAITING_FOR_IDENTITY, READY, UNMANAGED = ("not-ready", "waiting-for-identity", "ready",
                                                     "unmanaged")
#: Name prefix of an endpoint that is a container outside Kubernetes (no pod).
CONTAINER_PREFIX = "container:"


@dataclass
class EndpointRecord:
    pod: str                    # namespace/name, or container:<name>
    id: int
    identity: int = 0
    ipv4: str | None = None
    ipv6: str | None = None
    interface: str | None = None   # host-side veth, when a topology runs
    state: str = "ready"           # not-ready, waiting-for-identity, ready, unmanaged
    container_id: str | None = None    # the CNI attachment: CNI_CONTAINERID ...
    ifname: str | None = None          # ... and CNI_IFNAME
    labels: list[str] | None = None    # a container's labels from its runtime (container:name=...)

    @property
    def external(self) -> bool:
        """A container outside Kubernetes, not a scenario pod."""
        return self.pod.startswith(CONTAINER_PREFIX)


class EndpointConflict(ValueError):
    """A CNI attachment or an endpoint name already belongs to another endpoint."""


_KEEP = object()


class EndpointRegistry:
    def __init__(self, node: str, root: str = STATE_ROOT, *, directory: str | None = None):
        """*node*'s registry, in *directory* (its state directory; by default the one
        under *root*, as harness.node.node.Node.state_dir names it)."""
        self.node = node
        self.path = os.path.join(directory or os.path.join(root, node), "endpoints.json")
        self.records: dict[str, EndpointRecord] = {}
        if os.path.exists(self.path):
            with open(self.path) as f:
                for item in json.load(f):
                    rec = EndpointRecord(**item)
                    self.records[rec.pod] = rec

    def ensure(self, pod: str) -> EndpointRecord:
        """The pod's record, creating it with the smallest free id."""
        rec = self.records.get(pod)
        if rec is None:
            used = {r.id for r in self.records.values()}
            free = next((i for i in range(1, MAX_ENDPOINT_ID + 1) if i not in used), None)
            if free is None:
                raise RuntimeError(f"node {self.node}: no free endpoint id (max {MAX_ENDPOINT_ID})")
            rec = self.records[pod] = EndpointRecord(pod, free)
        return rec

    def fill(self, ref: str, *, attachment: tuple[str, str] | None = None,
             labels: tuple[str, ...] | list[str] = (), interface: str | None = _KEEP,
             ipv4: str | None = _KEEP, ipv6: str | None = _KEEP, state: str = _KEEP,
             identity: int = _KEEP) -> EndpointRecord:
        """The endpoint *ref*'s record (created with the smallest free id), filled in with
        what the caller knows; fields not given are kept.

        *attachment*: the CNI attachment making it (container id, interface name): it
        must not already be another endpoint's, nor may a container endpoint of that
        name belong to another container (EndpointConflict); it is recorded, with the
        runtime's *labels* for a container outside Kubernetes.  *identity*: the node's
        sync resolved it; an endpoint waiting for its identity is ready once it has one
        (its programs are attached and its policy is set with the identity).
        """
        if attachment is not None:
            cid, ifname = attachment
            rec = self.attachment(cid, ifname) if cid else None
            if rec is not None and rec.pod != ref:
                raise EndpointConflict(f"container {cid[:12]} is already attached as {rec.pod} "
                                       f"on {self.node}")
            rec = self.records.get(ref)
            if (rec is not None and ref.startswith(CONTAINER_PREFIX) and rec.container_id
                    and rec.container_id != cid):
                raise EndpointConflict(f"endpoint {ref} on {self.node} belongs to container "
                                       f"{rec.container_id[:12]}")
        rec = self.ensure(ref)
        if attachment is not None:
            rec.container_id, rec.ifname = attachment[0] or None, attachment[1] or None
            rec.labels = list(labels) if rec.external else None
        if interface is not _KEEP:
            rec.interface = interface
        if ipv4 is not _KEEP:
            rec.ipv4 = ipv4
        if ipv6 is not _KEEP:
            rec.ipv6 = ipv6
        if state is not _KEEP:
            rec.state = state
        if identity is not _KEEP:
            rec.identity = identity
            if rec.state == WAITING_FOR_IDENTITY and identity:
                rec.state = READY
        return rec

    def remove(self, pod: str) -> EndpointRecord | None:
        return self.records.pop(pod, None)

    def attachment(self, container_id: str, ifname: str | None) -> EndpointRecord | None:
        """The endpoint a CNI attachment (container id, interface name) made, if any."""
        return next((r for r in self.records.values() if r.container_id == container_id
                     and (ifname is None or r.ifname in (None, ifname))), None)

    def ids(self) -> dict[str, int]:
        return {pod: r.id for pod, r in self.records.items()}

    @property
    def identities_path(self) -> str:
        return os.path.join(os.path.dirname(self.path), "identities.json")

    def save_identities(self, labels: dict[int, str]) -> None:
        """Identity -> labels, so commands reading the maps can name identities."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with open(self.identities_path, "w") as f:
            json.dump({str(k): v for k, v in labels.items()}, f, indent=1)

    def identity_labels(self) -> dict[int, str]:
        if not os.path.exists(self.identities_path):
            return {}
        with open(self.identities_path) as f:
            return {int(k): v for k, v in json.load(f).items()}

    def save(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump([asdict(r) for r in sorted(self.records.values(), key=lambda r: r.id)], f,
                      indent=1)
        os.replace(tmp, self.path)

    def serialized(self, labels: dict[int, str]) -> dict[str, bytes]:
        """What save() and save_identities(labels) would write: path -> content."""
        records = [asdict(r) for r in sorted(self.records.values(), key=lambda r: r.id)]
        return {self.path: json.dumps(records, indent=1).encode(),
                self.identities_path: json.dumps({str(k): v for k, v in labels.items()},
                                                 indent=1).encode()}


def workloads(root: str = STATE_ROOT) -> list[Workload]:
    """The containers outside Kubernetes attached on every node (their ready endpoints)."""
    # Imported here: harness.policy's package face pulls in the scenario model and
    # jinja2, ~50 ms of the chained plugin's start-up (-X importtime), which never
    # calls this on an ADD during `up`.
    from harness.policy.model import Workload
    out = []
    nodes = sorted(os.listdir(root)) if os.path.isdir(root) else []
    for node in nodes:
        if not os.path.isfile(os.path.join(root, node, "endpoints.json")):
            continue
        for rec in EndpointRegistry(node, root).records.values():
            # attached (its identity may still be waiting for this very sync)
            if rec.external and rec.state in (WAITING_FOR_IDENTITY, READY):
                out.append(Workload(rec.pod, node, tuple(a for a in (rec.ipv4, rec.ipv6) if a)))
    return out


def remove_state() -> list[str]:
    """Remove every node's state directory; return the nodes removed."""
    if not os.path.isdir(STATE_ROOT):
        return []
    nodes = sorted(os.listdir(STATE_ROOT))
    shutil.rmtree(STATE_ROOT)
    return nodes
