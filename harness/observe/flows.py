"""Decoded datapath events (harness.observe.decode) enriched into Hubble's ``flow.Flow``.

``FlowBuilder(node_name, context).build(decoded)`` turns the columns of a decoded
batch into ``observer.GetFlowsResponse`` messages (flow, node_name, time), every
field set the way Hubble's parsers set it for the same Cilium event
(pkg/hubble/parser/threefour for drop, trace and policy-verdict events,
pkg/hubble/parser/sock for socket translations):

- verdict: DROPPED for drops; FORWARDED for traces; a policy verdict's
  allowed -> FORWARDED, denied -> DROPPED (drop_reason 133, POLICY_DENIED,
  unless the event's subtype names another reason); trace-sock: TRACED before,
  TRANSLATED after the translation;
- event_type {type, sub_type} with Cilium's message-type numbers (drop 1,
  trace 4, policy-verdict 5, trace-sock 7: ``MESSAGE_TYPES``; the datapath's
  own numbers are lib/events.h's);
- ethernet, IP, l4 and Summary from the packet's headers ("TCP Flags: SYN",
  "ICMPv4 EchoRequest", "UDP" ...); a reverse-translated trace
  (CB_EVF_REV_XLATED) has ``IP.source`` the address before translation and
  ``IP.source_xlated`` the packet's;
- source/destination Endpoint: a local endpoint by its address (ID, identity,
  namespace, pod_name, labels), else the identity the ipcache gives the address
  (the datapath's identity wins where the event carries one), the pod's
  namespace/name where the cluster knows the address, the identity's labels;
- source/destination_service: the Service whose frontend is the address and
  port (for a translated trace, the frontend before translation: orig_addr,
  orig_port);
- traffic_direction from the endpoint's direction and whether the packet is a
  reply; is_reply, trace_observation_point, trace_reason, policy_match_type,
  interface (traces), node_name, time (the event's CLOCK_MONOTONIC time on the
  wall clock), uuid.

``FlowBatch`` is a batch as the observer keeps it: the raw records and their
decoded columns, each flow built by a FlowBuilder only when first asked for
(GetFlows, one flow per group of alike rows for the metrics: ``groups``), its
uuid a uuid5 of where the record was read, so the flows rebuilt from the log
after a restart are the same.

``NodeContext`` holds what the enrichment looks up (``to_json``/``from_json``:
kept in the log with the records it enriched); ``NodeContext.from_node``
reads it from a running node (its endpoint registry, identities, pinned
ipcache and LB maps, the cluster the node was synced from), ``NodeContext(...)``
takes plain dicts (tests).
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import socket
import statistics
import time
import uuid as uuidlib
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from harness.abi.cheaders import defines
from harness.observe import decode as D, icmp_names
from harness.observe.proto import flow_pb2, observer_pb2
from harness.observe.store import LazyEntries, RawRecords

# Cilium's monitor message types (pkg/monitor/api/types.go), as Hubble reports them.
MSG_DROP, MSG_TRACE, MSG_POLICY_VERDICT, MSG_TRACE_SOCK = 1, 4, 5, 7
#: datapath event type (lib/events.h) -> Cilium's message type in flow.event_type.
MESSAGE_TYPES = {D.EVENT_DROP: MSG_DROP, D.EVENT_TRACE: MSG_TRACE,
                 D.EVENT_POLICY_VERDICT: MSG_POLICY_VERDICT, D.EVENT_TRACE_SOCK: MSG_TRACE_SOCK}

# Cilium's reserved identities (pkg/identity/numericidentity.go).
ID_UNKNOWN, ID_HOST, ID_WORLD, ID_REMOTE_NODE = 0, 1, 2, 6
RESERVED_NAMES = {0: "unknown", 1: "host", 2: "world", 3: "unmanaged", 4: "health", 5: "init",
                  6: "remote-node", 7: "kube-apiserver", 8: "ingress", 9: "world-ipv4",
                  10: "world-ipv6"}
RESERVED_LABELS = {1: ("reserved:host",), 2: ("reserved:world",), 3: ("reserved:unmanaged",),
                   4: ("reserved:health",), 5: ("reserved:init",), 6: ("reserved:remote-node",),
                   7: ("reserved:kube-apiserver", "reserved:remote-node"),
                   8: ("reserved:ingress",)}
LOCAL_IDENTITY_SCOPE = 1 << 24

CB_DIR_INGRESS, CB_DIR_EGRESS = 1, 2
CT_REPLY = 2                    # enum ct_status (lib/ct.h)
#: a trace made where no conntrack lookup was (lib/events.h)
TRACE_REASON_UNKNOWN = defines("lib/events.h", "TRACE_REASON_")["TRACE_REASON_UNKNOWN"]
SOCK_XLATE_PRE_FWD, SOCK_XLATE_POST_FWD, SOCK_XLATE_PRE_REV, SOCK_XLATE_POST_REV = 1, 2, 3, 4
DROP_POLICY = 133
PROTO_NAMES = {6: "TCP", 17: "UDP", 132: "SCTP"}

_TCP_FLAG_NAMES = (("SYN", D.TCP_SYN), ("ACK", D.TCP_ACK), ("RST", D.TCP_RST), ("FIN", D.TCP_FIN),
                   ("PSH", D.TCP_PSH), ("URG", D.TCP_URG), ("ECE", D.TCP_ECE), ("CWR", D.TCP_CWR),
                   ("NS", D.TCP_NS))
#: flags bitmask (decode.TCP_*) -> the TCPFlags fields set.
_TCP_FLAG_FIELDS = tuple(tuple(n for n, bit in _TCP_FLAG_NAMES if m & bit) for m in range(512))
#: flags bitmask (decode.TCP_*) -> "SYN, ACK" in Hubble's order.
TCP_FLAGS_TEXT = tuple(", ".join(n for n, bit in _TCP_FLAG_NAMES if m & bit) for m in range(512))



def sort_labels(labels: Iterable[str], identity: int) -> list[str]:
    """Hubble's SortAndFilterLabels: sorted; for a CIDR identity only the longest cidr: label."""
    labels = list(labels)
    if identity & LOCAL_IDENTITY_SCOPE:
        best, best_len, rest = None, 0, []
        for label in labels:
            if not label.startswith("cidr:"):
                rest.append(label)
                continue
            try:
                net = ipaddress.ip_network(label[5:].replace("-", ":"), strict=False)
            except ValueError:
                continue
            if net.prefixlen > best_len:
                best, best_len = label, net.prefixlen
        labels = rest + ([best] if best else [])
    return sorted(labels)


# ------------------------------------------------------------------ the context


@dataclass(frozen=True)
class EndpointInfo:
    """A local endpoint as the observer knows it."""
    id: int
    identity: int
    namespace: str = ""
    pod_name: str = ""
    labels: tuple[str, ...] = ()
    ipv4: str | None = None
    ipv6: str | None = None


def _pod_ref(ref: str) -> tuple[str, str]:
    """``ns/name`` -> (ns, name); a container outside Kubernetes has no namespace."""
    if "/" in ref:
        ns, name = ref.split("/", 1)
        return ns, name
    return "", ref


class NodeContext:
    """The lookups that enrich a node's flows.

    *endpoints*: the node's endpoints; *identities*: identity -> labels (reserved
    identities are known without it); *ipcache*: prefix (``"198.18.0.10/32"``) ->
    identity; *pods*: address -> (namespace, pod) of pods anywhere in the cluster;
    *services*: (frontend address, port, protocol ``TCP``/``UDP``/``SCTP``) ->
    (namespace, name); *interfaces*: ifindex -> name (*ifname_fallback* is asked
    for an index not in it, e.g. socket.if_indextoname inside the node's netns).
    """

    def __init__(self, *, endpoints: Iterable[EndpointInfo] = (),
                 identities: Mapping[int, Sequence[str]] | None = None,
                 ipcache: Mapping[str, int] | None = None,
                 pods: Mapping[str, tuple[str, str]] | None = None,
                 services: Mapping[tuple[str, int, str], tuple[str, str]] | None = None,
                 interfaces: Mapping[int, str] | None = None,
                 ifname_fallback: Callable[[int], str | None] | None = None,
                 sources: Mapping[str, float] | None = None):
        endpoints = list(endpoints)
        #: what it was made of, for to_json (a restarted observer rebuilds its flows with it)
        self._made_of = {
            "endpoints": [[e.id, e.identity, e.namespace, e.pod_name, list(e.labels), e.ipv4,
                           e.ipv6] for e in endpoints],
            "identities": {str(int(k)): list(v) for k, v in (identities or {}).items()},
            "ipcache": {str(k): int(v) for k, v in (ipcache or {}).items()},
            "pods": {str(a): list(v) for a, v in (pods or {}).items()},
            "services": sorted([str(a), int(p), str(pr), ns, name]
                               for (a, p, pr), (ns, name) in (services or {}).items()),
            "interfaces": {str(int(k)): v for k, v in (interfaces or {}).items()}}
        self._by_id = {e.id: e for e in endpoints}
        self._by_ip: dict[str, EndpointInfo] = {}
        for e in self._by_id.values():
            for a in (e.ipv4, e.ipv6):
                if a:
                    self._by_ip[str(ipaddress.ip_address(a))] = e
        self._identities = {**{k: tuple(v) for k, v in RESERVED_LABELS.items()},
                            **{int(k): tuple(v) for k, v in (identities or {}).items()}}
        # ipcache: per family, prefix length -> {network int: identity}, longest first
        self._lpm: dict[int, list[tuple[int, int, dict[int, int]]]] = {4: [], 6: []}
        tables: dict[tuple[int, int], dict[int, int]] = {}
        for prefix, ident in (ipcache or {}).items():
            net = ipaddress.ip_network(prefix, strict=False)
            tables.setdefault((net.version, net.prefixlen), {})[int(net.network_address)] = ident
        for (version, plen), table in sorted(tables.items(), key=lambda kv: -kv[0][1]):
            bits = 32 if version == 4 else 128
            mask = ((1 << plen) - 1) << (bits - plen) if plen else 0
            self._lpm[version].append((plen, mask, table))
        self._pods = {str(ipaddress.ip_address(a)): v for a, v in (pods or {}).items()}
        self._services = {(str(ipaddress.ip_address(a)), int(p), pr.upper()): v
                          for (a, p, pr), v in (services or {}).items()}
        self._svc_any = {}
        for (a, p, _), v in self._services.items():
            self._svc_any.setdefault((a, p), v)
        self._interfaces = dict(interfaces or {})
        self._ifname_fallback = ifname_fallback
        self._identity_cache: dict[str, int] = {}
        self.sources = dict(sources or {})

    # -- kept with raw records
    def to_json(self) -> bytes:
        """What the context was made of (not its sources' times nor the fallback), as
        canonical JSON: the same context gives the same bytes."""
        return json.dumps(self._made_of, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, blob: bytes, *,
                  ifname_fallback: Callable[[int], str | None] | None = None) -> "NodeContext":
        d = json.loads(blob)
        return cls(endpoints=[EndpointInfo(i, ident, ns, pod, tuple(labels), v4, v6)
                              for i, ident, ns, pod, labels, v4, v6 in d["endpoints"]],
                   identities={int(k): tuple(v) for k, v in d["identities"].items()},
                   ipcache=d["ipcache"], pods={a: tuple(v) for a, v in d["pods"].items()},
                   services={(a, p, pr): (ns, name) for a, p, pr, ns, name in d["services"]},
                   interfaces={int(k): v for k, v in d["interfaces"].items()},
                   ifname_fallback=ifname_fallback)

    # -- lookups
    def endpoint_by_id(self, endpoint_id: int) -> EndpointInfo | None:
        return self._by_id.get(endpoint_id)

    def endpoint_by_ip(self, ip: str) -> EndpointInfo | None:
        return self._by_ip.get(ip)

    def labels_of(self, identity: int) -> tuple[str, ...] | None:
        """The identity's labels, None for an identity the node does not know."""
        return self._identities.get(identity)

    def identity_of(self, ip: str) -> int | None:
        """The ipcache's identity of *ip* (longest prefix), None when no prefix covers it
        (the datapath then says world)."""
        hit = self._identity_cache.get(ip, -1)
        if hit != -1:
            return hit
        addr = ipaddress.ip_address(ip)
        value = int(addr)
        found = None
        for _, mask, table in self._lpm[addr.version]:
            found = table.get(value & mask)
            if found is not None:
                break
        if len(self._identity_cache) > 65536:
            self._identity_cache.clear()
        self._identity_cache[ip] = found
        return found

    def pod_of(self, ip: str) -> tuple[str, str] | None:
        """(namespace, pod) of the pod with address *ip* anywhere in the cluster."""
        return self._pods.get(ip)

    def service_at(self, ip: str, port: int, proto: str | None = None) -> tuple[str, str] | None:
        """(namespace, name) of the Service with frontend *ip*:*port* (/*proto*)."""
        if proto is not None:
            hit = self._services.get((ip, port, proto))
            if hit is not None:
                return hit
        return self._svc_any.get((ip, port))

    def ifname(self, ifindex: int) -> str:
        name = self._interfaces.get(ifindex)
        if name is None and self._ifname_fallback is not None:
            try:
                name = self._ifname_fallback(ifindex) or ""
            except OSError:
                name = ""
            self._interfaces[ifindex] = name
        return name or ""

    def service_names(self) -> dict[tuple[str, int, str], str]:
        """(frontend address, port, protocol) -> the Service's ``namespace/name``."""
        return {k: f"{ns}/{name}" for k, (ns, name) in self._services.items()}

    def is_stale(self) -> bool:
        """Whether a file this context was read from changed since (from_node)."""
        for path, mtime in self.sources.items():
            try:
                if os.stat(path).st_mtime_ns != mtime:
                    return True
            except FileNotFoundError:
                if mtime:
                    return True
        return False

    # -- building one from a running node
    @classmethod
    def from_node(cls, node, *, resolve_ifnames: bool = True) -> "NodeContext":
        """The context of *node* (a harness.node.node.Node or its name): its endpoint
        registry, identities, pinned ipcache, the cluster's pods and Services from the
        scenario it was synced from.  *resolve_ifnames*: names of interfaces are read
        with if_indextoname (call it in the node's network namespace)."""
        from harness.abi.structs import IpcacheEntry, IpcacheKey, from_be32
        from harness.bpf import Map
        from harness.node.node import Node

        if not isinstance(node, Node):
            node = Node(node)
        registry = node.endpoints
        joined = registry.identity_labels()
        identities = {i: tuple(x for x in text.split(",") if x) for i, text in joined.items()}
        endpoints = []
        for rec in registry.records.values():
            ns, name = _pod_ref(rec.pod)
            labels = identities.get(rec.identity, ()) if rec.identity else ()
            labels = tuple(sorted({*labels, *(rec.labels or ())}))
            endpoints.append(EndpointInfo(rec.id, rec.identity, ns, name, labels, rec.ipv4,
                                          rec.ipv6))
        ipcache: dict[str, int] = {}
        for mname in ("cb_ipcache", "cb_ipcache_hosts"):
            # read only: opened by its pin, not through Node.open_pinned (which first
            # finishes a map change a killed apply left, a write)
            path = os.path.join(node.pin_dir, mname)
            if not os.path.exists(path):
                continue
            with Map.from_pin(path, IpcacheKey, IpcacheEntry) as m:
                for k, v in m.items():
                    plen = k.prefixlen - 32
                    addr = str(from_be32(k.addr.p[0])) if k.family == 4 else str(k.addr.ipv6())
                    ipcache[f"{addr}/{plen}"] = v.identity
        pods, services = _cluster_facts(node)
        sources = {}
        for path in (registry.path, registry.identities_path, node.record.cluster_path):
            try:
                sources[path] = os.stat(path).st_mtime_ns
            except FileNotFoundError:
                sources[path] = 0
        interfaces = {}
        if resolve_ifnames:
            try:
                interfaces = {i: n for i, n in socket.if_nameindex()}
            except OSError:
                pass
        return cls(endpoints=endpoints, identities=identities, ipcache=ipcache, pods=pods,
                   services=services, interfaces=interfaces,
                   ifname_fallback=socket.if_indextoname if resolve_ifnames else None,
                   sources=sources)


def _cluster_facts(node) -> tuple[dict, dict]:
    """(address -> (ns, pod), frontend -> (ns, service)) from the scenario *node* was
    synced from (empty before ``up`` wrote it)."""
    scenario = node.record.cluster()
    if scenario is None:
        return {}, {}
    pods = {}
    for pod in scenario.pods:
        if getattr(pod, "host_network", False):
            continue
        for a in pod.pod_ips:
            pods[str(a)] = (pod.meta.namespace, pod.meta.name)
    services = {}
    try:
        from harness.lb.desired import lb_state, node_addresses
        state = lb_state(scenario, node_addresses(scenario))
    except Exception:      # a scenario the LB cannot program has no frontends to name
        state = None
    if state is not None:
        for f in state.frontends:
            if f.type == "HostPort":
                continue
            services[(str(f.address), f.port, f.protocol)] = _pod_ref(f.service)
    return pods, services


# ------------------------------------------------------------------- building


#: DECODED_DTYPE with its byte arrays as raw bytes (tolist() gives bytes objects, not
#: lists of ints), and the fields build_one reads.
_ROW_VIEW = np.dtype({
    "names": list(D.DECODED_DTYPE.names),
    "formats": [f"V{D.DECODED_DTYPE.fields[n][0].itemsize}" if D.DECODED_DTYPE.fields[n][0].subdtype
                else D.DECODED_DTYPE.fields[n][0] for n in D.DECODED_DTYPE.names],
    "offsets": [D.DECODED_DTYPE.fields[n][1] for n in D.DECODED_DTYPE.names],
    "itemsize": D.DECODED_DTYPE.itemsize})
_ROW_FIELDS = ("wall_ns", "type", "subtype", "endpoint_id", "ifindex", "flags", "dir",
               "remote_identity", "match_type", "trace_reason", "l4_proto", "orig_port",
               "orig_addr", "xlate_addr", "xlate_port", "cookie", "cgroup_id", "layers",
               "eth_src", "eth_dst", "ip_version", "ip_src", "ip_dst", "sport", "dport",
               "tcp_flags", "icmp_type", "icmp_code")


class _Uuid4:
    """Random (version 4) UUIDs as text, from one os.urandom read per 4096."""

    def __init__(self):
        self._pool: list[str] = []

    def __call__(self) -> str:
        if not self._pool:
            raw = bytearray(os.urandom(16 * 4096))
            pool = []
            for i in range(0, len(raw), 16):
                raw[i + 6] = (raw[i + 6] & 0x0F) | 0x40
                raw[i + 8] = (raw[i + 8] & 0x3F) | 0x80
                h = raw[i:i + 16].hex()
                pool.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
            self._pool = pool
        return self._pool.pop()


class FlowBuilder:
    """Builds ``GetFlowsResponse`` messages of node *node_name*'s events with *context*."""

    def __init__(self, node_name: str, context: NodeContext, *,
                 uuid_factory: Callable[[], str] | None = None):
        self.node_name = node_name
        self.context = context
        self._uuid = uuid_factory or _Uuid4()
        self._endpoint_cache: dict[tuple, flow_pb2.Endpoint] = {}

    # -- endpoints
    def resolve_endpoint(self, ip: str | None, datapath_identity: int) -> flow_pb2.Endpoint:
        """Hubble's EndpointResolver.ResolveEndpoint for *ip* and the identity the datapath
        saw (0: none)."""
        key = (ip, datapath_identity)
        ep = self._endpoint_cache.get(key)
        if ep is not None:
            return ep
        ctx = self.context
        local = ctx.endpoint_by_ip(ip) if ip else None
        if local is not None:
            ident = datapath_identity or local.identity
            labels = local.labels if ident == local.identity else (ctx.labels_of(ident) or ())
            ep = flow_pb2.Endpoint(ID=local.id, identity=ident, namespace=local.namespace,
                                   pod_name=local.pod_name, labels=sort_labels(labels, ident))
        else:
            ident = datapath_identity
            if ip and not datapath_identity:
                # an address no prefix covers is the world, as the datapath's ipcache says
                cached = ctx.identity_of(ip)
                ident = cached if cached is not None else ID_WORLD
            ns, pod = (ctx.pod_of(ip) if ip else None) or ("", "")
            labels = ctx.labels_of(ident)
            ep = flow_pb2.Endpoint(identity=ident, namespace=ns, pod_name=pod,
                                   labels=sort_labels(labels or (), ident))
        if len(self._endpoint_cache) > 16384:
            self._endpoint_cache.clear()
        self._endpoint_cache[key] = ep
        return ep

    def _service(self, ip: str | None, port: int, proto: str | None):
        if not ip:
            return None
        hit = self.context.service_at(ip, port, proto)
        if hit is None:
            return None
        return flow_pb2.Service(namespace=hit[0], name=hit[1])

    # -- flows
    def build(self, decoded: np.ndarray) -> list:
        """One GetFlowsResponse per row of *decoded* (decode.DECODED_DTYPE)."""
        return list(self.iter_build(decoded))

    def iter_build(self, decoded: np.ndarray) -> Iterator:
        """GetFlowsResponse messages of *decoded*'s rows, one at a time."""
        rows = decoded.view(_ROW_VIEW)[list(_ROW_FIELDS)].tolist()
        build_one = self.build_one
        for row in rows:
            yield build_one(dict(zip(_ROW_FIELDS, row)))

    def build_one(self, r: Mapping, uuid: str | None = None) -> "observer_pb2.GetFlowsResponse":
        """A GetFlowsResponse of one decoded row (a mapping of DECODED_DTYPE's fields;
        array fields as sequences of bytes); *uuid*: the flow's (default: a random one)."""
        kind = r["type"]
        resp = observer_pb2.GetFlowsResponse(node_name=self.node_name)
        f = resp.flow
        seconds, nanos = divmod(r["wall_ns"], 1_000_000_000)
        f.time.seconds = resp.time.seconds = seconds
        f.time.nanos = resp.time.nanos = nanos
        f.uuid = uuid or self._uuid()
        f.node_name = self.node_name
        if kind == D.EVENT_TRACE_SOCK:
            self._sock(f, r)
        else:
            self._l34(f, r, kind)
        return resp

    def _l34(self, f, r: Mapping, kind: int) -> None:
        ctx = self.context
        layers = r["layers"]
        flags = r["flags"]
        subtype = r["subtype"]
        f.Type = flow_pb2.L3_L4
        f.event_type.type = MESSAGE_TYPES.get(kind, kind)
        f.event_type.sub_type = subtype
        summary = ""
        src_ip = dst_ip = None
        sport = dport = 0
        proto_name = None
        if layers & D.L_ETH:
            f.ethernet.source = bytes(r["eth_src"]).hex(":")
            f.ethernet.destination = bytes(r["eth_dst"]).hex(":")
            summary = "Ethernet"
        version = r["ip_version"]
        if version:
            n = 4 if version == 4 else 16
            family = socket.AF_INET if version == 4 else socket.AF_INET6
            src_ip = socket.inet_ntop(family, bytes(r["ip_src"][:n]))
            dst_ip = socket.inet_ntop(family, bytes(r["ip_dst"][:n]))
            f.IP.source = src_ip
            f.IP.destination = dst_ip
            f.IP.ipVersion = flow_pb2.IPv4 if version == 4 else flow_pb2.IPv6
            summary = "IPv4" if version == 4 else "IPv6"
        if layers & D.L_TCP:
            sport, dport = r["sport"], r["dport"]
            tf = r["tcp_flags"]
            t = f.l4.TCP
            t.source_port, t.destination_port = sport, dport
            t.flags.SetInParent()
            fl = t.flags
            for name in _TCP_FLAG_FIELDS[tf & 0x1FF]:
                setattr(fl, name, True)
            summary = "TCP Flags: " + TCP_FLAGS_TEXT[tf & 0x1FF]
            proto_name = "TCP"
        elif layers & D.L_UDP:
            sport, dport = r["sport"], r["dport"]
            f.l4.UDP.source_port, f.l4.UDP.destination_port = sport, dport
            summary = "UDP"
            proto_name = "UDP"
        elif layers & D.L_SCTP:
            sport, dport = r["sport"], r["dport"]
            f.l4.SCTP.source_port, f.l4.SCTP.destination_port = sport, dport
            summary = "SCTP"
            proto_name = "SCTP"
        elif layers & D.L_ICMPV4:
            f.l4.ICMPv4.type, f.l4.ICMPv4.code = r["icmp_type"], r["icmp_code"]
            summary = "ICMPv4 " + icmp_names.type_code(4, r["icmp_type"], r["icmp_code"])
        elif layers & D.L_ICMPV6:
            f.l4.ICMPv6.type, f.l4.ICMPv6.code = r["icmp_type"], r["icmp_code"]
            summary = "ICMPv6 " + icmp_names.type_code(6, r["icmp_type"], r["icmp_code"])
        f.Summary = summary

        # the packet's source before a reverse translation (Hubble: OrigIP, source_xlated)
        header_src = src_ip
        if kind == D.EVENT_TRACE and flags & D.EVF_REV_XLATED and version:
            orig = _ip_text_bytes(r["orig_addr"], version)
            if orig != src_ip:
                if _HAS_SOURCE_XLATED:
                    f.IP.source_xlated = src_ip
                f.IP.source = orig
                src_ip = orig

        # identities the datapath saw: the endpoint's own and the remote one, by the
        # packet's direction relative to the endpoint
        local = ctx.endpoint_by_id(r["endpoint_id"]) if r["endpoint_id"] else None
        local_id = local.identity if local is not None else 0
        remote_id = r["remote_identity"]
        egress = r["dir"] == CB_DIR_EGRESS
        if kind == D.EVENT_POLICY_VERDICT:
            src_label, dst_label = (0, remote_id) if egress else (remote_id, 0)
        else:
            src_label, dst_label = (local_id, remote_id) if egress else (remote_id, local_id)
            if r["dir"] not in (CB_DIR_INGRESS, CB_DIR_EGRESS):
                src_label = dst_label = 0
        f.source.CopyFrom(self.resolve_endpoint(src_ip, src_label))
        f.destination.CopyFrom(self.resolve_endpoint(dst_ip, dst_label))

        # services: the frontend the packet is for (before translation where it was)
        svc_dst_ip, svc_dport = dst_ip, dport
        if flags & D.EVF_XLATED and version:
            svc_dst_ip, svc_dport = _ip_text_bytes(r["orig_addr"], version), r["orig_port"]
        dsvc = self._service(svc_dst_ip, svc_dport, proto_name)
        if dsvc is not None:
            f.destination_service.CopyFrom(dsvc)
        ssvc = self._service(src_ip, sport, proto_name) or (
            self._service(header_src, sport, proto_name) if header_src != src_ip else None)
        if ssvc is not None:
            f.source_service.CopyFrom(ssvc)

        reply = bool(flags & D.EVF_REPLY) or (kind == D.EVENT_TRACE and r["trace_reason"] == CT_REPLY)
        if kind == D.EVENT_DROP:
            f.verdict = flow_pb2.DROPPED
            f.drop_reason = subtype
            f.drop_reason_desc = subtype
            if r["endpoint_id"] and r["dir"]:
                f.traffic_direction = flow_pb2.EGRESS if egress else flow_pb2.INGRESS
        elif kind == D.EVENT_TRACE:
            f.verdict = flow_pb2.FORWARDED
            f.trace_observation_point = subtype if subtype else flow_pb2.TO_ENDPOINT
            reason = r["trace_reason"]
            if _HAS_TRACE_REASON:
                # Cilium's TraceReasonUnknown (5) is Hubble's 0; the ones before it move up one
                f.trace_reason = 0 if reason == 5 else reason + 1 if reason < 5 else reason
            if reason != TRACE_REASON_UNKNOWN:
                # no conntrack lookup (FROM_*, TO_NETWORK, untracked): is_reply stays unset
                # and the direction unknown, as Hubble leaves them
                f.is_reply.value = reply
                f.reply = reply
                if r["endpoint_id"] and r["dir"]:
                    f.traffic_direction = flow_pb2.EGRESS if egress != reply else flow_pb2.INGRESS
            if r["ifindex"]:
                f.interface.index = r["ifindex"]
                name = ctx.ifname(r["ifindex"])
                if name:
                    f.interface.name = name
        elif kind == D.EVENT_POLICY_VERDICT:
            allowed = bool(flags & D.EVF_ALLOWED)
            f.policy_match_type = r["match_type"]
            f.traffic_direction = flow_pb2.EGRESS if egress else flow_pb2.INGRESS
            if allowed:
                f.verdict = flow_pb2.FORWARDED
                f.is_reply.value = False
            else:
                f.verdict = flow_pb2.DROPPED
                reason = subtype or DROP_POLICY
                f.drop_reason = reason
                f.drop_reason_desc = reason

    def _sock(self, f, r: Mapping) -> None:
        """Hubble's sock parser: the socket's pod (by its endpoint) to the address it
        connects to; TRACED before, TRANSLATED after the translation; reversed for the
        reverse path."""
        ctx = self.context
        point = r["subtype"]
        v6 = bool(r["flags"] & D.EVF_IPV6)
        version = 6 if v6 else 4
        f.Type = flow_pb2.SOCK
        f.event_type.type = MSG_TRACE_SOCK
        f.event_type.sub_type = point
        local = ctx.endpoint_by_id(r["endpoint_id"]) if r["endpoint_id"] else None
        src_ip = (local.ipv6 if v6 else local.ipv4) if local is not None else None
        if src_ip:
            src_ip = str(ipaddress.ip_address(src_ip))
        # the address the socket talks to at this point: before the translation the
        # frontend (orig_*), after it the backend (xlate_*)
        if point in (SOCK_XLATE_POST_FWD, SOCK_XLATE_POST_REV):
            dst_raw, dst_port = r["xlate_addr"], r["xlate_port"]
        else:
            dst_raw, dst_port = r["orig_addr"], r["orig_port"]
        dst_ip = _ip_text_bytes(dst_raw, version)
        src_port = 0
        if src_ip:
            src_ep = self.resolve_endpoint(src_ip, 0)
        else:
            # the sock programs sit on the nodes' host cgroups: a socket with no
            # endpoint is the node's own (its address is not bound yet at connect())
            src_ep = flow_pb2.Endpoint(identity=ID_HOST, labels=RESERVED_LABELS[ID_HOST])
        dst_ep = self.resolve_endpoint(dst_ip, 0)
        if point in (SOCK_XLATE_PRE_REV, SOCK_XLATE_POST_REV):
            src_ip, dst_ip = dst_ip, src_ip
            src_port, dst_port = dst_port, src_port
            src_ep, dst_ep = dst_ep, src_ep
        f.verdict = (flow_pb2.TRACED if point in (SOCK_XLATE_PRE_FWD, SOCK_XLATE_PRE_REV)
                     else flow_pb2.TRANSLATED if point in (SOCK_XLATE_POST_FWD,
                                                           SOCK_XLATE_POST_REV)
                     else flow_pb2.VERDICT_UNKNOWN)
        f.IP.source = src_ip or ""
        f.IP.destination = dst_ip or ""
        f.IP.ipVersion = flow_pb2.IPv6 if v6 else flow_pb2.IPv4
        proto = r["l4_proto"]
        proto_name = PROTO_NAMES.get(proto)
        if proto == D.IPPROTO_TCP:
            f.l4.TCP.source_port, f.l4.TCP.destination_port = src_port, dst_port
        elif proto == D.IPPROTO_UDP:
            f.l4.UDP.source_port, f.l4.UDP.destination_port = src_port, dst_port
        f.source.CopyFrom(src_ep)
        f.destination.CopyFrom(dst_ep)
        ssvc = self._service(src_ip, src_port, proto_name)
        if ssvc is not None:
            f.source_service.CopyFrom(ssvc)
        dsvc = self._service(dst_ip, dst_port, proto_name)
        if dsvc is not None:
            f.destination_service.CopyFrom(dsvc)
        f.sock_xlate_point = point
        f.socket_cookie = r["cookie"]
        f.cgroup_id = r["cgroup_id"]
        f.Summary = {D.IPPROTO_TCP: "TCP", D.IPPROTO_UDP: "UDP"}.get(proto, "Unknown")


def _ip_text_bytes(raw, version: int) -> str:
    b = bytes(raw)
    if version == 4:
        return socket.inet_ntop(socket.AF_INET, b[:4])
    return socket.inet_ntop(socket.AF_INET6, b[:16])


def _has_field(message_class, name: str) -> bool:
    return name in message_class.DESCRIPTOR.fields_by_name


#: Fields Hubble sets that the schema compiled into build/proto may lack (proto/ is the
#: subset of Hubble's API chainbench serves): set when it has them.
_HAS_TRACE_REASON = _has_field(flow_pb2.Flow, "trace_reason")
_HAS_SOURCE_XLATED = _has_field(flow_pb2.IP, "source_xlated")


def build_flows(node_name: str, context: NodeContext, records, offset_ns: int | None = None) -> list:
    """Decode raw records and build their GetFlowsResponse messages (the whole path)."""
    return FlowBuilder(node_name, context).build(D.decode(records, offset_ns))


# ------------------------------------------------------------ batches kept lazily

#: The namespace of the flows' uuids (uuid5 of where the record was read: see FlowBatch.uuid).
FLOW_UUID_NAMESPACE = uuidlib.UUID("6c1d3b0e-8f7e-4f9a-9a43-3c2f0c5d1e14")

#: DECODED_DTYPE's fields in order (a row's ``item()``).
_ALL_FIELDS = tuple(D.DECODED_DTYPE.names)

#: What Hubble's metrics read off a flow built from a row, as the row's columns: the
#: event (type, subtype, flags, trace reason, direction, whether an endpoint is named:
#: verdict, drop reason, is_reply, traffic direction, observation point), the layers
#: (L4 protocol, family, TCP flags, ICMP type and code) and the L4 protocol of a socket
#: translation; ``dport`` where port-distribution counts the row (see groups).
_KEY_BASE = (("type", "u1"), ("subtype", "u1"), ("flags", "u1"), ("layers", "<u2"),
             ("ip_version", "u1"), ("tcp_flags", "<u2"), ("icmp_type", "u1"),
             ("icmp_code", "u1"), ("trace_reason", "u1"), ("dir", "u1"), ("l4_proto", "u1"))
#: ... and with source/destination context labels: all the endpoints and addresses are
#: resolved from.
_KEY_CONTEXT = (("endpoint_id", "<u2"), ("remote_identity", "<u4"), ("ip_src", "u1", (16,)),
                ("ip_dst", "u1", (16,)), ("orig_addr", "u1", (16,)),
                ("xlate_addr", "u1", (16,)), ("orig_port", "<u2"), ("xlate_port", "<u2"))
_KEY_DTYPES = {
    (context, ports): np.dtype(list(_KEY_BASE) + [("has_endpoint", "u1")]
                               + ([("dport", "<u2")] if ports else [])
                               + (list(_KEY_CONTEXT) if context else []))
    for context in (False, True) for ports in (False, True)}


class FlowBatch(LazyEntries):
    """A batch of records as the observer keeps it: the raw records and their decoded
    columns, each turned into its ``GetFlowsResponse`` by *builder* only when something
    asks for it (``entry``: GetFlows, a metric's representative), then kept.

    Its flows' uuids are uuid5 of where each record was read (node, ring buffer map id,
    the batch's start position, the record's index in the batch, its ktime): the same
    after a restart rebuilds them from the log (``log_item``, ``from_log``).
    """

    def __init__(self, builder: FlowBuilder, records: bytes, *, offset_ns: int,
                 context_id: int, context_blob: bytes, map_id: int, start: int,
                 first: int = 0, decoded: np.ndarray | None = None):
        self.builder = builder
        self.records = records
        self.offset_ns = offset_ns
        self.context_id, self.context_blob = context_id, context_blob
        self.map_id, self.start, self.first = map_id, start, first
        self.decoded = D.decode(records, offset_ns) if decoded is None else decoded
        self._rows = self.decoded.view(_ROW_VIEW)
        self._built: list = [None] * len(self.decoded)

    def __len__(self) -> int:
        return len(self._built)

    def uuid(self, i: int) -> str:
        name = (f"{self.builder.node_name}/{self.map_id}/{self.start}/{self.first + i}/"
                f"{int(self.decoded['ktime_ns'][i])}")
        return str(uuidlib.uuid5(FLOW_UUID_NAMESPACE, name))

    def entry(self, i: int):
        """The GetFlowsResponse of row *i* (built once)."""
        built = self._built[i]
        if built is None:
            row = dict(zip(_ALL_FIELDS, self._rows[i].item()))
            built = self._built[i] = self.builder.build_one(row, self.uuid(i))
        return built

    def groups(self, *, context: bool = False, ports: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(a representative row, how many rows) of each group of rows whose flows Hubble's
        metrics count under the same labels: rows equal in every column a metric reads
        (``_KEY_BASE``; with *context*, also every column the endpoints, addresses and
        services come from; with *ports*, the destination port where port-distribution
        counts the row: a forwarded trace that is no reply, an allowed policy verdict)."""
        d = self.decoded
        key = np.zeros(len(d), dtype=_KEY_DTYPES[(context, ports)])
        for name, *_ in _KEY_BASE:
            key[name] = d[name]
        key["has_endpoint"] = d["endpoint_id"] != 0
        if ports:
            kind, flags = d["type"], d["flags"]
            reply = ((flags & D.EVF_REPLY) != 0) | (d["trace_reason"] == CT_REPLY)
            known = d["trace_reason"] != TRACE_REASON_UNKNOWN       # is_reply set and false
            counted = (((kind == D.EVENT_TRACE) & ~reply & known)
                       | ((kind == D.EVENT_POLICY_VERDICT) & ((flags & D.EVF_ALLOWED) != 0)))
            key["dport"] = np.where(counted, d["dport"], 0)
        if context:
            for name, *_ in _KEY_CONTEXT:
                key[name] = d[name]
        _, first, counts = np.unique(key.view(f"V{key.dtype.itemsize}"), return_index=True,
                                     return_counts=True)
        return first, counts

    def log_item(self) -> RawRecords:
        """The batch as the flow log keeps it (harness.observe.store.RawRecords)."""
        return RawRecords(self.records, D.EVENT_SIZE, self.context_id, self.context_blob,
                          self.offset_ns, self.map_id, self.start, self.first)

    @classmethod
    def from_log(cls, item: RawRecords, builder: FlowBuilder) -> "FlowBatch":
        """The batch a log item holds, its flows built by *builder* (made with the context
        ``item.context`` gives: NodeContext.from_json)."""
        return cls(builder, item.records, offset_ns=item.offset_ns, context_id=item.context_id,
                   context_blob=item.context, map_id=item.map_id, start=item.start,
                   first=item.first)


def context_id(blob: bytes) -> int:
    """The id of a context's JSON (NodeContext.to_json) in the flow log: its hash."""
    return int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "little")


# ------------------------------------------------------------------ benchmark


def sample_context() -> NodeContext:
    """The context of decode.sample_packets()' addresses (bench and tests)."""
    return NodeContext(
        endpoints=[EndpointInfo(1, 47652, "default", "client",
                                ("k8s:app=client", "k8s:io.kubernetes.pod.namespace=default"),
                                "198.18.0.10", "2001:db8::a")],
        identities={62969: ("k8s:app=echo", "k8s:io.kubernetes.pod.namespace=default")},
        ipcache={"198.18.0.10/32": 47652, "198.18.1.20/32": 62969, "2001:db8::a/128": 47652,
                 "2001:db8::1:14/128": 62969},
        pods={"198.18.1.20": ("default", "echo"), "2001:db8::1:14": ("default", "echo")},
        services={("198.18.1.20", 8080, "TCP"): ("default", "echo")})


def bench(count: int = 100_000, runs: int = 5) -> dict:
    """Flows/s FlowBuilder.build reaches on one core over *count* decoded synthetic
    records (decode not included), *runs* times."""
    decoded = D.decode(D.synthetic_records(count), 0)
    rates = []
    for _ in range(runs):
        builder = FlowBuilder("cb-node0", sample_context())
        t0 = time.perf_counter()
        builder.build(decoded)
        rates.append(count / (time.perf_counter() - t0))
    return {"flows": count, "runs": runs, "median": statistics.median(rates),
            "min": min(rates), "max": max(rates)}
