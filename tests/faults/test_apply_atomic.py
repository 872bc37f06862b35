"""Fault injection: an interrupted `lb apply` / `policy apply` leaves the maps
exactly as before or exactly as after, never in between.

A small topology (bench/scenarios/minimal.yaml, two nodes) is built once.  For
each command, a start state S is programmed on cb-node0 and snapshotted
(every LB or policy map of the node, read straight from the pins; Maglev
tables by content), and the "after" state is what an uninterrupted apply of
the big scenario B makes of S.  Then, for SIGINT, SIGTERM and SIGKILL and
FAULTS_POINTS seeded delays (env, default 3; seed FAULTS_SEED, default 12),
S is written back into the maps, the apply of B is started, the signal is
sent after the delay, and the maps are dumped again and compared.

Delays are drawn within the apply's measured write window (found by polling
a few keys that B changes during the uninterrupted run, widened by a quarter
on the early side so some points land before the first write).

SIGINT and SIGTERM are dumped straight from the pins.  SIGKILL cannot be
deferred: chainbench's write-ahead journal (harness/journal.py) is
replayed by the next command that opens the node's maps, so after a SIGKILL
the test first runs `chainbench services` (a read command) and then dumps
straight from the pins; whether the pins were between just after the kill,
before any repair, is printed (that is the window the datapath can see).
"""
from __future__ import annotations

import ctypes
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness.bpf import Map
from harness.bpf import _libbpf as L
from harness.host.bpffs import PIN_ROOT
from harness.paths import STATE_ROOT
from harness.scenario import SCENARIO_DIR

NODE = "cb-node0"
PINS = Path(PIN_ROOT) / NODE
STATE = Path(STATE_ROOT) / NODE
TOPOLOGY = str(SCENARIO_DIR / "minimal.yaml")
CLI = [sys.executable, "-m", "harness.cli"]
LOCK_NOTE = "this test builds its own topology: run `chainbench down` first"

POINTS = int(os.environ.get("FAULTS_POINTS", "3"))
SEED = int(os.environ.get("FAULTS_SEED", "12"))

LB_MAPS = ("cb_lb4_services", "cb_lb6_services", "cb_lb4_backends", "cb_lb6_backends",
           "cb_lb4_reverse_nat", "cb_lb6_reverse_nat")
POLICY_MAPS = ("cb_ipcache", "cb_ipcache_hosts", "cb_endpoints", "cb_policy", "cb_policy_exact")
MAGLEV = "cb_lb_maglev"
STATE_FILES = ("endpoints.json", "identities.json")
EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGKILL: -signal.SIGKILL}


# --- scenarios -------------------------------------------------------------------------

def _doc(obj: dict) -> str:
    return "---\n" + json.dumps(obj) + "\n"


def _lb_scenario(first: int, count: int, shift: int, maglev_every: int) -> str:
    """minimal.yaml plus *count* ClusterIP services svc-<first..> with 3 endpoints each
    (from a pool of 200 addresses, window shifted by *shift*), every *maglev_every*-th Maglev."""
    out = [Path(TOPOLOGY).read_text()]
    for i in range(first, first + count):
        meta = {"name": f"svc-{i}", "namespace": "default"}
        if maglev_every and i % maglev_every == 0:
            meta["annotations"] = {"service.cilium.io/lb-algorithm": "maglev"}
        out.append(_doc({"apiVersion": "v1", "kind": "Service", "metadata": meta,
                         "spec": {"type": "ClusterIP",
                                  "clusterIP": f"198.19.{16 + i // 250}.{1 + i % 250}",
                                  "ports": [{"name": "p", "protocol": "TCP", "port": 80,
                                             "targetPort": 8080}]}}))
        eps = [{"addresses": [f"198.18.0.{20 + (i * 3 + j + shift) % 200}"],
                "nodeName": NODE} for j in range(3)]
        out.append(_doc({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                         "metadata": {"name": f"svc-{i}-0", "namespace": "default",
                                      "labels": {"kubernetes.io/service-name": f"svc-{i}"}},
                         "addressType": "IPv4",
                         "ports": [{"name": "p", "protocol": "TCP", "port": 8080}],
                         "endpoints": eps}))
    return "".join(out)


def _policy_scenario(cidrs: int, ports: int) -> str:
    """minimal.yaml plus a CNP giving the backends ingress from *cidrs* world /32s on
    *ports* ports, and the client egress to the same: thousands of rule entries and
    hundreds of ipcache (CIDR identity) entries."""
    hosts = [f"203.0.113.{i}/32" for i in range(1, cidrs + 1)]
    port_list = [{"port": str(9000 + p), "protocol": "TCP"} for p in range(ports)]
    out = [Path(TOPOLOGY).read_text()]
    for name, sel, direction, peer in (("wide-in", "backend", "ingress", "fromCIDR"),
                                       ("wide-out", "client", "egress", "toCIDR")):
        out.append(_doc({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
                         "metadata": {"name": name, "namespace": "default"},
                         "spec": {"endpointSelector": {"matchLabels": {"app": sel}},
                                  direction: [{peer: hosts, "toPorts": [{"ports": port_list}]}]}}))
    return "".join(out)


# --- dumping and restoring the pinned maps --------------------------------------------------

def _maglev_tables() -> dict[bytes, bytes]:
    """Maglev frontend -> its table's bytes (inner maps compared by content, not id)."""
    out = {}
    if not (PINS / MAGLEV).exists():
        return out
    with Map.from_pin(str(PINS / MAGLEV)) as outer:
        for key in list(outer.keys()):
            try:
                inner_id = int.from_bytes(_raw(outer.lookup(key), 4), "little")
            except KeyError:
                continue
            fd = L.lib.bpf_map_get_fd_by_id(ctypes.c_uint32(inner_id))
            if fd < 0:
                continue
            value = ctypes.create_string_buffer(4 * 16381 * 4)
            zero = ctypes.c_uint32(0)
            rc = L.lib.bpf_map_lookup_elem(fd, ctypes.byref(zero), value)
            size = _inner_value_size(fd)
            os.close(fd)
            assert rc == 0, f"read Maglev table of {_raw(key, 4).hex()}"
            out[_raw(key, 4)] = value.raw[:size]
    return out


def _inner_value_size(fd: int) -> int:
    from harness.bpf.maps import _MapInfo
    info = _MapInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    assert L.lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)) == 0
    return info.value_size


def _raw(x, size: int) -> bytes:
    """A key or value as the kernel holds it (raw maps give small ones as integers)."""
    return x.to_bytes(size, "little") if isinstance(x, int) else bytes(x)


def dump(names: tuple[str, ...]) -> dict:
    """Every entry of the named pinned maps, as bytes (and Maglev tables, state files)."""
    out: dict = {}
    for name in names:
        with Map.from_pin(str(PINS / name)) as m:
            out[name] = {_raw(k, m.key_size): _raw(v, m.value_size) for k, v in m.items()}
    if names is LB_MAPS:
        out[MAGLEV] = _maglev_tables()
    else:
        out["files"] = {f: (STATE / f).read_bytes() if (STATE / f).exists() else None
                        for f in STATE_FILES}
    return out


def restore(snapshot: dict) -> None:
    """Write *snapshot* back: delete what it lacks, write what differs."""
    for name, entries in snapshot.items():
        if name == "files":
            for f, data in entries.items():
                if data is None:
                    (STATE / f).unlink(missing_ok=True)
                else:
                    (STATE / f).write_bytes(data)
            continue
        with Map.from_pin(str(PINS / name)) as m:
            if name == MAGLEV:
                _restore_maglev(m, entries)
                continue
            for k in [_raw(k, m.key_size) for k in m.keys()]:
                if k not in entries:
                    m.delete(k)
            for k, v in entries.items():
                m.update(k, v)


def _restore_maglev(outer: Map, tables: dict[bytes, bytes]) -> None:
    current = _maglev_tables()
    for k in current:
        if k not in tables:
            outer.delete(k)
    for k, table in tables.items():
        if current.get(k) == table:
            continue
        inner = Map.create("array", "cb_maglev_t", 4, len(table), 1)
        try:
            inner.update(0, table)
            outer.update(k, inner.fd.to_bytes(4, "little"))
        finally:
            inner.close()


def diff_summary(a: dict, b: dict) -> str:
    parts = []
    for name in a:
        x, y = a[name], b.get(name, {})
        if x != y:
            changed = sum(1 for k in set(x) | set(y) if x.get(k) != y.get(k))
            parts.append(f"{name}: {changed} entries differ")
    return ", ".join(parts) or "equal"


# --- running the command ----------------------------------------------------------------

def run(*args, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(CLI + list(args), capture_output=True, text=True,
                          start_new_session=True)
    if check and proc.returncode != 0:
        pytest.fail(f"chainbench {' '.join(args)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc


def measure_window(args: list[str], names: tuple[str, ...], before: dict,
                   after: dict) -> tuple[float, float, float]:
    """Run *args* uninterrupted from *before*; return (first write seen, last write seen,
    exit), in seconds after the start, by polling keys that differ between the states."""
    probes = []
    for name in names:
        changed = [k for k in set(before[name]) | set(after[name])
                   if before[name].get(k) != after[name].get(k)]
        rnd = random.Random(0)
        for k in sorted(rnd.sample(changed, min(4, len(changed)))):
            probes.append((name, k, before[name].get(k), after[name].get(k)))
    assert probes, "scenario B changes nothing"
    opened = {name: Map.from_pin(str(PINS / name)) for name, *_ in probes}
    seen: dict[str, float] = {}
    stop = threading.Event()

    def poll(t0: float) -> None:
        while not stop.is_set():
            states = []
            for name, k, old, new in probes:
                try:
                    v = _raw(opened[name].lookup(k), opened[name].value_size)
                except KeyError:
                    v = None
                states.append(v)
            now = time.perf_counter() - t0
            if "first" not in seen and any(v != p[2] for v, p in zip(states, probes)):
                seen["first"] = now
            if all(v == p[3] for v, p in zip(states, probes)):
                seen["last"] = now
                return
            time.sleep(0.0005)

    t0 = time.perf_counter()
    proc = subprocess.Popen(CLI + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    poller = threading.Thread(target=poll, args=(t0,))
    poller.start()
    _, err = proc.communicate()
    end = time.perf_counter() - t0
    stop.set()
    poller.join()
    for m in opened.values():
        m.close()
    assert proc.returncode == 0, err.decode()
    assert "first" in seen and "last" in seen, f"writes not seen: {seen}"
    return seen["first"], seen["last"], end


def interrupt(args: list[str], sig: int, delay: float) -> tuple[int, float, str]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(CLI + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    time.sleep(max(0.0, delay - (time.perf_counter() - t0)))
    sent = time.perf_counter() - t0
    if proc.poll() is None:
        os.kill(proc.pid, sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, sent, err.decode()


# --- fixtures -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def topology():
    nodes = [n for n in os.listdir(PIN_ROOT) if n.startswith("cb-")] \
        if os.path.isdir(PIN_ROOT) else []
    if nodes:
        pytest.fail(f"a topology is already up ({', '.join(nodes)}); {LOCK_NOTE}")
    try:
        run("up", "-f", TOPOLOGY)
        yield
    finally:
        run("down", check=False)


CASES = {
    # command, maps, start scenario, big scenario
    "lb": (("lb", "apply", "--node", NODE), LB_MAPS,
           lambda: _lb_scenario(0, 1500, 0, 0), lambda: _lb_scenario(500, 3000, 7, 150)),
    "policy": (("policy", "apply", "--node", NODE), POLICY_MAPS,
               lambda: Path(TOPOLOGY).read_text(), lambda: _policy_scenario(200, 20)),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, topology, tmp_path_factory):
    """(command, maps, B's args, start snapshot, after snapshot, write window)."""
    command, names, make_a, make_b = CASES[request.param]
    d = tmp_path_factory.mktemp(request.param)
    a, b = d / "a.yaml", d / "b.yaml"
    a.write_text(make_a())
    b.write_text(make_b())
    run(*command, "-f", str(a))
    before = dump(names)
    args_b = list(command) + ["-f", str(b)]
    run(*args_b)
    after = dump(names)
    assert before != after
    restore(before)
    assert dump(names) == before, "restoring the start state failed"
    window = measure_window(args_b, names, before, after)
    restore(before)
    print(f"\n{request.param} apply of B: writes seen {window[0]:.3f}-{window[1]:.3f} s, "
          f"exit at {window[2]:.3f} s; {diff_summary(before, after)}")
    return request.param, names, args_b, before, after, window


# --- tests ---------------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL],
                         ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_interrupted_apply_is_before_or_after(case, sig):
    name, names, args, before, after, (first, last, _end) = case
    rnd = random.Random(f"{SEED}/{name}/{int(sig)}")
    lo = max(0.0, first - 0.25 * (last - first))
    failures = []
    for point in range(POINTS):
        delay = rnd.uniform(lo, last)
        restore(before)
        rc, sent, err = interrupt(args, sig, delay)
        raw = dump(names)
        raw_is = "before" if raw == before else "after" if raw == after else "BETWEEN"
        if sig == signal.SIGKILL:
            run("services", "--node", NODE, "-o", "json")   # a read command: replays the journal
        got = dump(names)
        state = "before" if got == before else "after" if got == after else "BETWEEN"
        print(f"{name} {signal.Signals(sig).name} point {point}: signal at {sent:.3f} s, exit {rc}, "
              f"pins just after: {raw_is}, observed: {state}")
        if state == "BETWEEN":
            failures.append(f"point {point} ({sent:.3f} s): between: "
                            f"{diff_summary(before, got)} vs before; {diff_summary(after, got)} vs after")
        if rc != EXIT[sig] and not (rc == 0 and state == "after"):
            failures.append(f"point {point} ({sent:.3f} s): exit {rc}, expected {EXIT[sig]}: "
                            f"{err.strip()[-300:]}")
    restore(before)
    assert not failures, "\n".join(failures)


def test_refused_input_programs_nothing(case, tmp_path):
    """Bad input: exit 2, one line, and the maps are exactly the start state."""
    name, names, _args, before, _after, _window = case
    bad = tmp_path / "bad.yaml"
    if name == "lb":    # parses, but a frontend inside the pod CIDR is refused while planning
        bad.write_text(_lb_scenario(0, 100, 3, 0) + _doc(
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "bad", "namespace": "default"},
             "spec": {"type": "ClusterIP", "clusterIP": "198.19.0.99", "externalIPs": ["198.18.0.250"],
                      "ports": [{"name": "p", "protocol": "TCP", "port": 80}]}}))
    else:               # an L7 rule chainbench does not handle
        bad.write_text(_policy_scenario(50, 5) + _doc(
            {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
             "metadata": {"name": "l7", "namespace": "default"},
             "spec": {"endpointSelector": {"matchLabels": {"app": "backend"}},
                      "ingress": [{"toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}],
                                                "rules": {"http": [{"method": "GET"}]}}]}]}}))
    restore(before)
    proc = run(*_args[:-2], "-f", str(bad), check=False)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "bad.yaml" in proc.stderr, proc.stderr
    assert dump(names) == before, diff_summary(before, dump(names))
