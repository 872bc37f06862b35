"""What policy resolution produces, and what the datapath is programmed from.

Resolution (harness/policy/desired.py) turns a scenario's pods, Cilium and
Kubernetes network policies into:

- identities: one numeric security identity per distinct set of
  security-relevant labels (namespace included), stable across runs for the
  same labels, plus Cilium's reserved identities and CIDR identities;
- the ipcache: prefix -> identity (pods /32 and /128, nodes, policy CIDRs,
  workloads outside the scenario; anything else is world);
- per endpoint and direction: whether policy is enforced (some policy selects
  the endpoint in that direction: default deny) and the rules, each an allow
  or a deny for (remote identity or any, protocol or any, port range or any).

The datapath keeps rules in an LPM map (harness/policy/entries.py) and lets
a deny win over any allow.  Everything here is plain data.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal

Direction = Literal["ingress", "egress"]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Cilium's reserved identities (pkg/identity/numericidentity.go).
ID_UNKNOWN = 0
ID_HOST = 1
ID_WORLD = 2
ID_UNMANAGED = 3
ID_HEALTH = 4
ID_INIT = 5
ID_REMOTE_NODE = 6
ID_KUBE_APISERVER = 7
ID_INGRESS = 8
RESERVED = {
    ID_HOST: "reserved:host", ID_WORLD: "reserved:world", ID_UNMANAGED: "reserved:unmanaged",
    ID_HEALTH: "reserved:health", ID_INIT: "reserved:init", ID_REMOTE_NODE: "reserved:remote-node",
    ID_KUBE_APISERVER: "reserved:kube-apiserver", ID_INGRESS: "reserved:ingress",
}
#: First identity for label sets (Cilium's cluster-local range starts at 256).
MIN_LABEL_IDENTITY = 256
MAX_LABEL_IDENTITY = 65535
#: CIDR identities carry Cilium's local-scope bit.
LOCAL_IDENTITY_SCOPE = 1 << 24

ANY_IDENTITY = 0          # a rule for every remote identity
ANY_PROTO = 0             # every protocol
PROTOCOLS = {"TCP": 6, "UDP": 17, "SCTP": 132, "ICMP": 1, "ICMPv6": 58}


@dataclass(frozen=True, order=True)
class Identity:
    id: int
    labels: tuple[str, ...]      # sorted, Cilium's "source:key=value" form
    kind: Literal["reserved", "endpoint", "cidr"] = "endpoint"


@dataclass(frozen=True, order=True)
class PortRange:
    lo: int                      # 0..65535; (0, 65535) with proto ANY means any port
    hi: int


ANY_PORT = PortRange(0, 65535)


@dataclass(frozen=True, order=True)
class Rule:
    """One resolved rule of one endpoint in one direction."""
    deny: bool
    identity: int                # ANY_IDENTITY: every remote identity
    proto: int                   # ANY_PROTO: every protocol (then ports are ANY_PORT)
    ports: PortRange = ANY_PORT
    source: str = field(default="", compare=False)   # "CiliumNetworkPolicy ns/name" etc.


@dataclass(frozen=True)
class EndpointPolicy:
    pod: str                     # namespace/name
    identity: int
    ingress_enforced: bool
    egress_enforced: bool
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()


@dataclass(frozen=True)
class Workload:
    """An endpoint outside the scenario: a container a runtime outside Kubernetes
    attached to a node (harness/node/cni_plugin.py).  It has no pod, hence no labels
    a policy can select; it gets Cilium's ``reserved:unmanaged`` identity."""
    name: str                    # its endpoint name, ``container:<name>``
    node: str
    addresses: tuple[str, ...]


@dataclass(frozen=True)
class IpcacheEntry:
    prefix: IPNetwork
    identity: int


@dataclass(frozen=True)
class PolicyState:
    identities: tuple[Identity, ...]
    ipcache: tuple[IpcacheEntry, ...]
    endpoints: tuple[EndpointPolicy, ...]

    def endpoint(self, pod: str) -> EndpointPolicy:
        for ep in self.endpoints:
            if ep.pod == pod:
                return ep
        raise KeyError(f"no endpoint {pod}")
