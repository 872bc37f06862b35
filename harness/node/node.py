"""A node's home: where its pinned maps and its state live, and what is kept there.

``Node("cb-node0")`` names one node.  Its maps, programs and links are pinned
under ``/sys/fs/bpf/chainbench/<node>`` (``pin_dir``); its state lives in
``/run/chainbench/<node>`` (``state_dir``): the lock every writer of the node
holds (``lock()``, re-entrant in a process), the settings every loader agrees
on (``settings``, harness.node.config), the endpoint registry (``endpoints``,
harness.node.endpoints), the write-ahead journal of its maps (``journal``) and
the node's record for the chained plugin (``record``, harness.node.record).
Nothing else builds a node's paths.

The lxc programs every pod veth runs (``LXC_PROGRAMS``) are loaded once per node
(``ensure_lxc_programs``, the ``lxc-shared`` build) and pinned under
``programs/``; each endpoint is then an entry of ``cb_endpoint_config``, keyed by
the ifindex of its host-side veth (``set_endpoint_config``,
``remove_endpoint_config``, ``endpoint_config``; lib/endpoint.h).

``load(obj)`` loads a BPF object with the node's shared pinned maps and
``open_pinned()`` opens those maps typed with the struct mirrors (closed on
leaving the block); both first finish a map change a killed ``lb apply`` /
``policy apply`` left in the journal (harness.node.recovery).
"""
from __future__ import annotations

import contextlib
import ctypes
import os
from typing import Any, Iterator

from harness import paths
from harness.abi import structs as S
from harness.abi.structs import EndpointConfig
from harness.bpf import Collection, Map, Program
from harness.host import bpffs
from harness.host.locks import directory_lock
from harness.journal import Journal, Writer
from harness.node import recovery
from harness.node.config import NodeSettings
from harness.node.endpoints import EndpointRegistry
from harness.node.record import NodeRecord
from harness.node.rodata import endpoint_config, rodata_for
from harness.paths import STATE_ROOT

#: The programs of a pod's host-side veth: (program, tc direction).
LXC_PROGRAMS = (("from_container", "ingress"), ("to_container", "egress"))
#: The build of bpf_src/lxc.bpf.c a node loads once for every veth (lib/endpoint.h).
SHARED_LXC = "lxc-shared"
#: The map of the node's endpoints by host-side veth ifindex (lib/endpoint.h).
ENDPOINT_CONFIG_MAP = "cb_endpoint_config"


class Node:
    """One node (``cb-node<i>``, or a name a test or benchmark pins under)."""

    def __init__(self, name: str):
        if not name or "/" in name or name in (".", "..") or "\0" in name:
            raise ValueError(f"{name!r} is not a node name")
        self.name = name

    def __repr__(self) -> str:
        return f"Node({self.name!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Node) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    # ------------------------------------------------------------- where it lives

    @property
    def pin_dir(self) -> str:
        """Where the node's maps, programs and links are pinned."""
        return os.path.join(bpffs.PIN_ROOT, self.name)

    @property
    def state_dir(self) -> str:
        """Where the node's lock, settings, endpoints, journal and record live."""
        return os.path.join(STATE_ROOT, self.name)

    @property
    def is_pinned(self) -> bool:
        return os.path.isdir(self.pin_dir)

    @property
    def has_state(self) -> bool:
        return os.path.isdir(self.state_dir)

    def pin_path(self, *parts: str) -> str:
        """A path below the node's pin directory (bpffs mounted if need be)."""
        return bpffs.pin_path(self.name, *parts)

    # ------------------------------------------------------------ what it keeps

    def lock(self) -> contextlib.AbstractContextManager:
        """The node's exclusive lock (CNI ADDs run concurrently); re-entrant within a
        process: writing the maps (harness.journal) takes it again under its holder."""
        return directory_lock(self.state_dir)

    @property
    def settings(self) -> NodeSettings:
        return NodeSettings(self.state_dir)

    @property
    def endpoints(self) -> EndpointRegistry:
        """The endpoint registry as it is now on disk (keep the object while changing it)."""
        return EndpointRegistry(self.name, directory=self.state_dir)

    @property
    def journal(self) -> Journal:
        """The write-ahead journal of the node's pinned maps."""
        return Journal(self.state_dir)

    @property
    def record(self) -> NodeRecord:
        """What ``up`` and the node's sync left for the chained plugin."""
        return NodeRecord(self.state_dir)

    # --------------------------------------------------------------- its maps

    def load(self, obj: str, max_entries: dict[str, int] | None = None,
             **rodata: Any) -> Collection:
        """bpf_src/<obj>.bpf.c configured for this node, its maps shared through the pins."""
        path = str(paths.bpf_object(obj))
        if max_entries is None:
            max_entries = self.settings.max_entries(path)
        values = {**rodata_for(obj, self.name), **self.settings.events_rodata(path), **rodata}
        coll = Collection.load(path, rodata=values or None,
                               max_entries=max_entries, pin_dir=self.pin_path())
        try:
            self.recover(coll.maps)
        except BaseException:
            coll.close()
            raise
        return coll

    def recover(self, maps=None) -> str | None:
        """Finish a map change a killed ``lb apply`` / ``policy apply`` left, if any."""
        return recovery.recover(self.name, maps, journal=self.journal, pin_dir=self.pin_dir,
                                lb_writer=self._lb_writer)

    def _lb_writer(self, stack: contextlib.ExitStack) -> Writer:
        coll = stack.enter_context(self.load("lxc"))
        lb = lb_control(coll)
        return Writer(coll.maps, lb._maglev_install, lb._maglev_remove)

    def lb_control(self, coll: Collection):
        """An LbControl over a collection of this node's, writing through its journal."""
        return lb_control(coll, self.journal)

    @contextlib.contextmanager
    def open_pinned(self) -> Iterator[dict[str, Map]]:
        """The node's pinned maps that exist, typed with the struct mirrors; closed on exit."""
        with contextlib.ExitStack() as stack:
            maps: dict[str, Map] = {}
            for name, (key_type, value_type) in _pinned_types().items():
                path = os.path.join(self.pin_dir, name)
                if os.path.exists(path):
                    maps[name] = stack.enter_context(Map.from_pin(path, key_type, value_type))
            self.recover(maps)
            yield maps

    # ------------------------------------------------- its shared lxc programs

    def lxc_program_pin(self, program: str) -> str:
        """Where the node's shared *program* (from_container, to_container) is pinned."""
        return os.path.join(self.pin_dir, "programs", f"lxc_{program}")

    def ensure_lxc_programs(self) -> bool:
        """Load the node's lxc object once (lxc-shared: each packet's endpoint is its
        veth's cb_endpoint_config entry) and pin its veth programs (``up`` does it; an ADD on a node without them too).  True if loaded
        now, False if they were pinned already."""
        with self.lock():
            pins = [self.lxc_program_pin(name) for name, _ in LXC_PROGRAMS]
            if all(os.path.exists(p) for p in pins):
                return False
            with self.load(SHARED_LXC) as coll:
                for (name, _), path in zip(LXC_PROGRAMS, pins):
                    if os.path.exists(path):
                        os.unlink(path)
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    coll.programs[name].pin(path)
            return True

    @contextlib.contextmanager
    def lxc_programs(self) -> Iterator[list[tuple[Program, str]]]:
        """The node's pinned veth programs with their tc directions; closed on exit."""
        with contextlib.ExitStack() as stack:
            progs = []
            for name, direction in LXC_PROGRAMS:
                prog = Program.from_pin(self.lxc_program_pin(name))
                stack.callback(prog.close)
                progs.append((prog, direction))
            yield progs

    def _endpoint_config_map(self) -> Map:
        return Map.from_pin(os.path.join(self.pin_dir, ENDPOINT_CONFIG_MAP), ctypes.c_uint32,
                            EndpointConfig)

    def set_endpoint_config(self, ifindex: int, endpoint_id: int, ipv4: str | None,
                            ipv6: str | None) -> None:
        """Endpoint *endpoint_id* is the one on the veth *ifindex*; an entry it had on
        another veth (a re-ADD) goes."""
        with self._endpoint_config_map() as m:
            for key, value in list(m.items()):
                if value.id == endpoint_id and key != ifindex:
                    m.delete(key)
            m.update(ifindex, endpoint_config(endpoint_id, ipv4, ipv6))

    def remove_endpoint_config(self, endpoint_id: int) -> int:
        """Forget endpoint *endpoint_id*'s veth entries (its veth may be gone already);
        returns how many went."""
        path = os.path.join(self.pin_dir, ENDPOINT_CONFIG_MAP)
        if not os.path.exists(path):
            return 0
        with self._endpoint_config_map() as m:
            gone = [key for key, value in m.items() if value.id == endpoint_id]
            for key in gone:
                m.delete(key)
        return len(gone)

    def endpoint_config(self, ifindex: int):
        """The EndpointConfig the node's programs find for veth *ifindex*, or None."""
        if not os.path.exists(os.path.join(self.pin_dir, ENDPOINT_CONFIG_MAP)):
            return None
        with self._endpoint_config_map() as m:
            return m.get(ifindex)


def lb_control(coll: Collection, journal: Journal | None = None):
    """An LbControl for a loaded lxc/netdev collection, Maglev tables included;
    writes go through *journal* when given (a node's pinned maps)."""
    # Imported here: the chained plugin's ADD loads the node's objects but never
    # programs LB itself, and harness.lb.* costs ~80 ms of its start-up (-X importtime).
    from harness.lb import maglev, maglev_bulk
    from harness.lb.control import LbControl
    tables = maglev_bulk.PreparedTables(coll)
    return LbControl(coll.maps, maglev_install=tables.install,
                     maglev_remove=lambda rid: maglev.remove_table(coll, rid),
                     journal=journal, maglev_prepare=tables.prepare,
                     maglev_install_many=tables.install_many,
                     maglev_remove_many=tables.remove_many)


def _pinned_types() -> dict[str, tuple[type, type]]:
    u32 = ctypes.c_uint32
    return {
        "cb_lb4_services": (S.Lb4Key, S.LbService), "cb_lb6_services": (S.Lb6Key, S.LbService),
        "cb_lb4_backends": (u32, S.Lb4Backend), "cb_lb6_backends": (u32, S.Lb6Backend),
        "cb_lb4_reverse_nat": (u32, S.Lb4ReverseNat), "cb_lb6_reverse_nat": (u32, S.Lb6ReverseNat),
        "cb_lb4_source_range": (S.Lb4SrcRangeKey, ctypes.c_uint8),
        "cb_lb6_source_range": (S.Lb6SrcRangeKey, ctypes.c_uint8),
        "cb_lb_stats": (u32, S.TrafficCounter), "cb_ct4": (S.Ct4Tuple, S.CtEntry),
        "cb_ct6": (S.Ct6Tuple, S.CtEntry), "cb_metrics": (S.MetricsKey, S.TrafficCounter),
        "cb_lb_affinity": (S.LbAffinityKey, S.LbAffinityVal),
        "cb_endpoints": (u32, S.EndpointInfo), "cb_endpoint_config": (u32, S.EndpointConfig),
        "cb_policy": (S.PolicyKey, S.PolicyEntry),
        "cb_policy_exact": (S.PolicyKey, S.PolicyEntry),
        "cb_ipcache": (S.IpcacheKey, S.IpcacheEntry), "cb_ipcache_hosts": (S.IpcacheKey, S.IpcacheEntry),
        "cb_snat4_fwd": (S.Ct4Tuple, S.SnatEntry), "cb_snat4_rev": (S.Ct4Tuple, S.SnatEntry),
        "cb_snat6_fwd": (S.Ct6Tuple, S.SnatEntry), "cb_snat6_rev": (S.Ct6Tuple, S.SnatEntry),
        "cb_snat_stats": (u32, S.SnatStats),
    }
