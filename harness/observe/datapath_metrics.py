"""The datapath's own counters as Prometheus metrics, read from a node's pinned maps at
scrape time (a custom prometheus-client collector: nothing is cached between scrapes).

``DatapathCollector(node)`` reports, for the node whose maps are pinned under
``pin_dir`` (by default the node's, harness.node.node.Node.pin_dir):

- ``cilium_drop_count_total{reason,direction}`` / ``cilium_drop_bytes_total``,
  ``cilium_forward_count_total{direction}`` / ``cilium_forward_bytes_total``: Cilium's
  names and labels (reason as Cilium's monitor words it, ``Policy denied``; direction
  ``INGRESS`` / ``EGRESS``), summed over the node's endpoints from ``cb_metrics``
  (whose reason 0 is "forwarded": the forward families appear once a program counts
  forwarded packets there; today the datapath counts its drops only);
- ``chainbench_endpoint_drop_count_total{endpoint,endpoint_id,reason,direction}`` /
  ``..._drop_bytes_total`` and ``chainbench_endpoint_forward_count_total{endpoint,
  endpoint_id,direction}`` / ``..._forward_bytes_total``: the same per endpoint (its
  pod ``namespace/name`` from the node's endpoint registry; id 0, ``endpoint=""``: the
  node's own programs);
- ``chainbench_service_packets_total{service,frontend,type,service_id}`` /
  ``chainbench_service_bytes_total``: per frontend from ``cb_lb_stats`` (socket-LB
  translations count one packet each), ``service`` the Service's ``namespace/name``
  when *service_names* knows the frontend;
- ``cilium_bpf_map_pressure{map_name}`` (entries in use / max entries, as Cilium's),
  ``chainbench_bpf_map_entries{map_name}`` and ``chainbench_bpf_map_max_entries{map_name}``
  for every pinned map whose entries can be counted (arrays and ring buffers are always
  full, so they have a size and no pressure);
- ``chainbench_conntrack_entries{family,status}``: conntrack entries alive or expired
  (not yet collected);
- ``chainbench_events_lost_total``: flow events the ring buffer had no room for
  (``cb_events_lost``, summed over CPUs); absent while the node has no such map.

A map that is not pinned is left out, never an error.
"""
from __future__ import annotations

import ctypes
import os
from typing import Callable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from harness.abi import drop_reasons
from harness.abi import structs as S
from harness.bpf import Map
from harness.bpf.errors import BpfError, NotSupportedError
from harness.lb import listing
from harness.node import conntrack
from harness.node.endpoints import EndpointRegistry
from harness.node.node import Node

METRICS_MAP, LB_STATS_MAP, EVENTS_LOST_MAP = "cb_metrics", "cb_lb_stats", "cb_events_lost"
_LB_MAPS = {"cb_lb4_services": (S.Lb4Key, S.LbService), "cb_lb6_services": (S.Lb6Key, S.LbService),
            "cb_lb4_backends": (ctypes.c_uint32, S.Lb4Backend),
            "cb_lb6_backends": (ctypes.c_uint32, S.Lb6Backend),
            LB_STATS_MAP: (ctypes.c_uint32, S.TrafficCounter)}
_CT_MAPS = {"cb_ct4": (4, S.Ct4Tuple), "cb_ct6": (6, S.Ct6Tuple)}
_DIRECTIONS = {1: "INGRESS", 2: "EGRESS"}          # lib/common.h CB_DIR_*, as Cilium prints them
#: Map types whose every slot exists: a size, no pressure.
_FIXED_SIZE = {"array", "percpu_array", "prog_array", "perf_event_array", "cgroup_array",
               "array_of_maps", "ringbuf", "user_ringbuf", "devmap", "cpumap", "xskmap"}
_BATCHED = {"hash", "percpu_hash", "lru_hash", "lru_percpu_hash", "hash_of_maps"}

#: (frontend address, port, protocol) -> (the Service's namespace/name, its labels)
ServiceNames = Mapping[tuple[str, int, str], tuple[str, Mapping[str, str]]]


class DatapathCollector(Collector):
    """Metrics of *node*'s pinned maps, read on every scrape.

    *pin_dir*: where the maps are pinned (default: the node's pin directory).
    *service_names*: called at each scrape, names frontends by their Service (the CLI
    passes the topology's; default: none, ``service=""``).  *endpoint_names*: called at
    each scrape, endpoint id -> ``namespace/pod`` (default: the node's endpoint registry).
    """

    def __init__(self, node: str, *, pin_dir: str | None = None,
                 service_names: Callable[[], ServiceNames] | None = None,
                 endpoint_names: Callable[[], Mapping[int, str]] | None = None):
        self.node = node
        self.pin_dir = pin_dir or Node(node).pin_dir
        self._service_names = service_names or (lambda: {})
        self._endpoint_names = endpoint_names or self._registry_names

    def _registry_names(self) -> dict[int, str]:
        registry = EndpointRegistry(self.node, directory=Node(self.node).state_dir)
        return {rec.id: rec.pod for rec in registry.records.values()}

    def describe(self) -> list[Metric]:
        return []           # what exists depends on what is pinned at scrape time

    def collect(self) -> Iterator[Metric]:
        if not os.path.isdir(self.pin_dir):
            return
        yield from self._traffic()
        yield from self._services()
        yield from self._maps()
        yield from self._conntrack()
        yield from self._events_lost()

    # ------------------------------------------------------------------ the maps
    def _open(self, name: str, key_type=None, value_type=None) -> Map | None:
        path = os.path.join(self.pin_dir, name)
        if not os.path.exists(path):
            return None
        try:
            return Map.from_pin(path, key_type, value_type)
        except BpfError:
            return None     # removed meanwhile (a `down`), or not a map

    def _traffic(self) -> Iterator[Metric]:
        m = self._open(METRICS_MAP, S.MetricsKey, S.TrafficCounter)
        if m is None:
            return
        with m:
            rows = [(key.endpoint_id, key.reason, key.dir, sum(v.packets for v in per_cpu),
                     sum(v.bytes for v in per_cpu)) for key, per_cpu in _entries(m)]
        names = self._endpoint_names()
        ep_labels = ["endpoint", "endpoint_id"]
        drops = CounterMetricFamily("cilium_drop_count", "Total dropped packets, tagged by "
                                    "drop reason and ingress/egress direction",
                                    labels=["reason", "direction"])
        drop_bytes = CounterMetricFamily("cilium_drop_bytes", "Total dropped bytes, tagged by "
                                         "drop reason and ingress/egress direction",
                                         labels=["reason", "direction"])
        fwd = CounterMetricFamily("cilium_forward_count", "Total forwarded packets, tagged by "
                                  "ingress/egress direction", labels=["direction"])
        fwd_bytes = CounterMetricFamily("cilium_forward_bytes", "Total forwarded bytes, tagged "
                                        "by ingress/egress direction", labels=["direction"])
        ep_drops = CounterMetricFamily("chainbench_endpoint_drop_count", "Dropped packets per "
                                       "endpoint, drop reason and direction",
                                       labels=ep_labels + ["reason", "direction"])
        ep_drop_bytes = CounterMetricFamily("chainbench_endpoint_drop_bytes", "Dropped bytes per "
                                            "endpoint, drop reason and direction",
                                            labels=ep_labels + ["reason", "direction"])
        ep_fwd = CounterMetricFamily("chainbench_endpoint_forward_count", "Forwarded packets "
                                     "per endpoint and direction", labels=ep_labels + ["direction"])
        ep_fwd_bytes = CounterMetricFamily("chainbench_endpoint_forward_bytes", "Forwarded bytes "
                                           "per endpoint and direction",
                                           labels=ep_labels + ["direction"])
        node_drops: dict[tuple[str, str], list[int]] = {}
        node_fwd: dict[str, list[int]] = {}
        for ep_id, reason, direction, packets, nbytes in sorted(rows):
            dirname = _DIRECTIONS.get(direction, str(direction))
            ep = [names.get(ep_id, ""), str(ep_id)]
            if reason:
                why = drop_reasons.describe(reason)
                ep_drops.add_metric(ep + [why, dirname], packets)
                ep_drop_bytes.add_metric(ep + [why, dirname], nbytes)
                total = node_drops.setdefault((why, dirname), [0, 0])
            else:
                ep_fwd.add_metric(ep + [dirname], packets)
                ep_fwd_bytes.add_metric(ep + [dirname], nbytes)
                total = node_fwd.setdefault(dirname, [0, 0])
            total[0] += packets
            total[1] += nbytes
        for (why, dirname), (packets, nbytes) in sorted(node_drops.items()):
            drops.add_metric([why, dirname], packets)
            drop_bytes.add_metric([why, dirname], nbytes)
        for dirname, (packets, nbytes) in sorted(node_fwd.items()):
            fwd.add_metric([dirname], packets)
            fwd_bytes.add_metric([dirname], nbytes)
        yield from (drops, drop_bytes, ep_drops, ep_drop_bytes)
        if node_fwd:        # lib/drop.h counts drops; forwards only where a program counts them
            yield from (fwd, fwd_bytes, ep_fwd, ep_fwd_bytes)

    def _services(self) -> Iterator[Metric]:
        maps: dict[str, Map] = {}
        try:
            for name, (key_type, value_type) in _LB_MAPS.items():
                m = self._open(name, key_type, value_type)
                if m is None:
                    return
                maps[name] = m
            rows = listing.read_services(maps)
        finally:
            for m in maps.values():
                m.close()
        listing.name_services(rows, self.node, self._service_names())
        labels = ["service", "frontend", "type", "service_id"]
        packets = CounterMetricFamily("chainbench_service_packets", "Packets (and socket-LB "
                                      "translations) load-balanced per service frontend",
                                      labels=labels)
        nbytes = CounterMetricFamily("chainbench_service_bytes", "Bytes load-balanced per "
                                     "service frontend", labels=labels)
        for row in rows:
            values = [row.service, row.frontend, row.type, str(row.id)]
            packets.add_metric(values, row.packets)
            nbytes.add_metric(values, row.bytes)
        yield packets
        yield nbytes

    def _maps(self) -> Iterator[Metric]:
        pressure = GaugeMetricFamily("cilium_bpf_map_pressure", "Fill percentage of map, "
                                     "tagged by map name", labels=["map_name"])
        entries = GaugeMetricFamily("chainbench_bpf_map_entries", "Entries in use in a pinned "
                                    "map (maps whose entries can be counted)", labels=["map_name"])
        sizes = GaugeMetricFamily("chainbench_bpf_map_max_entries", "Max entries of a pinned map",
                                  labels=["map_name"])
        for name in sorted(os.listdir(self.pin_dir)):
            m = self._open(name)
            if m is None:
                continue
            with m:
                if not _is_map(m.fd):
                    continue                  # a pinned program or link
                sizes.add_metric([name], m.max_entries)
                if m.type in _FIXED_SIZE:
                    continue
                count = _count(m)
                if count is None:
                    continue
                entries.add_metric([name], count)
                if m.max_entries:
                    pressure.add_metric([name], count / m.max_entries)
        yield from (pressure, entries, sizes)

    def _conntrack(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("chainbench_conntrack_entries", "Conntrack entries by IP "
                                   "family, alive or expired (not yet collected)",
                                   labels=["family", "status"])
        now = conntrack.now()
        for name, (version, key_type) in _CT_MAPS.items():
            m = self._open(name, key_type, S.CtEntry)
            if m is None:
                continue
            with m:
                rows = _entries(m)
            alive = sum(1 for _, v in rows if v.lifetime >= now)
            family.add_metric([f"ipv{version}", "alive"], alive)
            family.add_metric([f"ipv{version}", "expired"], len(rows) - alive)
        yield family

    def _events_lost(self) -> Iterator[Metric]:
        m = self._open(EVENTS_LOST_MAP, ctypes.c_uint32, ctypes.c_uint64)
        if m is None:
            return
        with m:
            per_cpu = m.get(0) or []
        lost = sum(per_cpu) if isinstance(per_cpu, list) else int(per_cpu)
        family = CounterMetricFamily("chainbench_events_lost", "Flow events the node's ring "
                                     "buffer had no room for (cb_events_lost)")
        family.add_metric([], lost)
        yield family


def _entries(m: Map) -> list[tuple]:
    try:
        return m.lookup_batch()
    except NotSupportedError:
        return list(m.items())


def _count(m: Map) -> int | None:
    """Entries in *m*, or None when they cannot be walked."""
    try:
        if m.type in _BATCHED:
            try:
                return len(m.lookup_batch())
            except NotSupportedError:
                pass
        return sum(1 for _ in m.keys())
    except BpfError:
        return None


def _is_map(fd: int) -> bool:
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            return any(line.startswith("map_type:") for line in f)
    except OSError:
        return False
