"""A node's datapath settings that every loader on that node must agree on.

Pinned maps are created by the first program loaded on a node and reused by
every later load (the chained plugin per pod, the node programs, the CLI);
libbpf refuses to reuse a pinned map whose max_entries differ.  So the sizes
are a node setting, like Cilium's agent flag ``--bpf-lb-map-max``: written by
``chainbench up`` before the first pod is added, in the node's state directory
(``datapath.json``; harness.node.node.Node.settings), and read by every load
of the node's objects.
The same file keeps the node's policy settings (``np_ipblock``: what a
NetworkPolicy ipBlock selects, like Cilium's policy-cidr-match-mode), read
by harness.node.sync whenever the node's policy is resolved, and the scenario
``lb apply`` last programmed the node from (``lb_scenario``), so read commands
can name the maps' frontends by their Service, and the size of the ring of recent
flows the node's observer keeps (``hubble_buffer_size``, Hubble's
``--hubble-event-buffer-capacity``).
"""
from __future__ import annotations

import json
import os

from harness.abi.monitor import DEFAULT as DEFAULT_MONITOR_AGGREGATION, LEVELS as MONITOR_LEVELS
from harness.bpf.collection import list_maps

#: Maps sized by lb_map_max (the LB maps; Cilium's --bpf-lb-map-max covers the same).
LB_MAPS = ("cb_lb4_services", "cb_lb6_services", "cb_lb4_backends", "cb_lb6_backends",
           "cb_lb4_reverse_nat", "cb_lb6_reverse_nat", "cb_lb_stats")
#: The BPF programs' compiled-in size (bpf_src/lib/lb.h CB_LB_SERVICES_MAX).
DEFAULT_LB_MAP_MAX = 65536
SETTINGS_FILE = "datapath.json"
#: Hubble's default ring of recent flows (hubble-event-buffer-capacity).
DEFAULT_HUBBLE_BUFFER_SIZE = 4095
MAX_HUBBLE_BUFFER_SIZE = (1 << 16) - 1
#: The events ring buffer's compiled-in size (lib/events.h CB_EVENTS_SIZE).
DEFAULT_EVENTS_RING_SIZE = 1 << 22
LB_SCENARIO_FILE = "lb-scenario.yaml"


class NodeSettings:
    """The settings kept in a node's state directory *directory*."""

    def __init__(self, directory: str):
        self.directory = directory
        self.path = os.path.join(directory, SETTINGS_FILE)

    def _read(self) -> dict:
        try:
            with open(self.path) as f:
                return json.load(f)
        except FileNotFoundError:
            return {}

    def _write(self, values: dict) -> None:
        os.makedirs(self.directory, exist_ok=True)
        with open(self.path, "w") as f:
            json.dump(values, f)

    def save_lb_map_max(self, lb_map_max: int) -> None:
        if not 1024 <= lb_map_max <= 1 << 24:
            raise ValueError(f"--bpf-lb-map-max {lb_map_max}: expected 1024..16777216")
        self._write({**self._read(), "lb_map_max": lb_map_max})

    def save_np_ipblock(self, mode: str) -> None:
        """What a NetworkPolicy ipBlock selects on the node (harness.policy.desired NP_IPBLOCK_MODES)."""
        # lazy: harness.policy.desired (and the scenario model under it) would add ~60 ms
        # to every CNI ADD, which reads the settings but never saves them.
        from harness.policy.desired import NP_IPBLOCK_MODES
        if mode not in NP_IPBLOCK_MODES:
            raise ValueError(f"--netpol-ipblock {mode!r}: expected one of {', '.join(NP_IPBLOCK_MODES)}")
        self._write({**self._read(), "np_ipblock": mode})

    @property
    def np_ipblock(self) -> str:
        """The node's ipBlock setting ("pods", Kubernetes' semantics, unless set)."""
        return str(self._read().get("np_ipblock", "pods"))

    def save_hubble_buffer_size(self, size: int) -> None:
        self._write({**self._read(), "hubble_buffer_size": check_hubble_buffer_size(size)})

    @property
    def hubble_buffer_size(self) -> int:
        """Flows the node's observer keeps (Hubble's 4095 unless set)."""
        return int(self._read().get("hubble_buffer_size", DEFAULT_HUBBLE_BUFFER_SIZE))

    def save_events(self, monitor_aggregation: str | None = None,
                    ring_size: int | None = None) -> None:
        """The node's events: Cilium's monitor aggregation level and the ring buffer's
        size in bytes (a power of two, at least a page)."""
        values = self._read()
        if monitor_aggregation is not None:
            if monitor_aggregation not in MONITOR_LEVELS:
                raise ValueError(f"--monitor-aggregation {monitor_aggregation!r}: expected one of "
                                 f"{', '.join(MONITOR_LEVELS)}")
            values["monitor_aggregation"] = monitor_aggregation
        if ring_size is not None:
            self.check_events_ring_size(ring_size)
            values["events_ring_size"] = ring_size
        self._write(values)

    @staticmethod
    def check_events_ring_size(ring_size: int | None) -> None:
        if ring_size is not None and (ring_size < 4096 or ring_size & (ring_size - 1)
                                      or ring_size > 1 << 30):
            raise ValueError(f"--events-ring-size {ring_size}: expected a power of two from "
                             "4096 to 1073741824")

    @property
    def monitor_aggregation(self) -> str:
        return str(self._read().get("monitor_aggregation", DEFAULT_MONITOR_AGGREGATION))

    @property
    def events_ring_size(self) -> int:
        return int(self._read().get("events_ring_size", DEFAULT_EVENTS_RING_SIZE))

    def events_rodata(self, obj_path: str) -> dict[str, int]:
        """The monitor_aggregation constant of an object that sends events (has cb_events)."""
        if "cb_events" not in list_maps(obj_path):
            return {}
        return {"monitor_aggregation": MONITOR_LEVELS[self.monitor_aggregation]}

    def save_lb_scenario(self, text: str) -> None:
        """Keep the scenario the node's LB maps were last programmed from (``lb apply``; its
        text, as the file may be stdin, a template or gone by the time it is read)."""
        kept = os.path.join(self.directory, LB_SCENARIO_FILE)
        os.makedirs(self.directory, exist_ok=True)
        with open(kept + ".tmp", "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(kept + ".tmp", kept)
        self._write({**self._read(), "lb_scenario": kept})

    @property
    def lb_scenario(self) -> str | None:
        value = self._read().get("lb_scenario")
        return str(value) if value else None

    def remove(self) -> None:
        """Forget the node's settings (its state directory goes when empty)."""
        for name in (self.path, os.path.join(self.directory, LB_SCENARIO_FILE)):
            try:
                os.unlink(name)
            except OSError:
                pass
        try:
            os.rmdir(self.directory)
        except OSError:
            pass

    def max_entries(self, obj_path: str | None = None) -> dict[str, int] | None:
        """Map sizes for loads on the node (None: the compiled-in defaults), for the
        maps the object at *obj_path* has (all LB maps when not given)."""
        values = self._read()
        present = list_maps(obj_path) if obj_path is not None else LB_MAPS + ("cb_events",)
        sizes = {}
        if values.get("lb_map_max") is not None:
            sizes.update({name: int(values["lb_map_max"]) for name in LB_MAPS if name in present})
        if values.get("events_ring_size") is not None and "cb_events" in present:
            sizes["cb_events"] = int(values["events_ring_size"])
        return sizes or None


def check_hubble_buffer_size(size: int) -> int:
    """Hubble's rule for its ring's capacity: one less than a power of two, 1..65535."""
    if not 1 <= size <= MAX_HUBBLE_BUFFER_SIZE or (size + 1) & size:
        raise ValueError(f"--hubble-buffer-size {size}: must be one less than a power of two, "
                         f"1..{MAX_HUBBLE_BUFFER_SIZE} (as Hubble's; default "
                         f"{DEFAULT_HUBBLE_BUFFER_SIZE})")
    return size
