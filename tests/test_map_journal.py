"""An LB or policy apply interrupted mid-write leaves its maps before or after
(harness.journal), without a topology: SIGINT held until the last write,
and a SIGKILLed writer's journal replayed to the end."""
from __future__ import annotations

import os
import signal

import pytest

from harness.node import datapath
from harness import journal as map_journal
from harness.node import recovery
from harness.lb.desired import lb_state
from harness.policy.control import PolicyControl
from harness.policy.desired import policy_state

from . import lbkit as K
from .lbkit import endpoint, service

pytestmark = [pytest.mark.test_run_only,   # no topology: runs beside the others (ci/run-tests.sh)
              pytest.mark.beside_faults]  # ... and beside the fault suite (pyproject.toml)

LB_MAPS = ("cb_lb4_services", "cb_lb4_backends", "cb_lb4_reverse_nat")
POLICY_MAPS = ("cb_ipcache", "cb_ipcache_hosts", "cb_endpoints", "cb_policy", "cb_policy_exact")


def snapshot(coll, names) -> dict:
    out = {name: {bytes(k): bytes(v) for k, v in coll.maps[name].items()} for name in names}
    if "cb_lb_maglev" in coll.maps and names is LB_MAPS:
        out["maglev"] = sorted(coll.maps["cb_lb_maglev"].keys())
    return out


def scenario(n: int, shift: int):
    return K.scenario(*[service(f"svc-{i}", f"198.19.1.{i}", [("http", 80, 8080, "TCP")],
                                [endpoint(f"198.18.1.{20 + (i + j + shift) % 50}") for j in range(3)],
                                maglev=(i % 10 == 0))
                        for i in range(1, n + 1)])


@pytest.fixture
def lxc(load):
    return lambda: load("lxc", rodata=datapath.rodata_for("lxc"))


def _reference(lxc) -> dict:
    coll = lxc()
    ctl = datapath.lb_control(coll)
    ctl.apply(lb_state(scenario(40, 0)))
    ctl.apply(lb_state(scenario(60, 7)))
    return snapshot(coll, LB_MAPS)


def test_sigint_during_lb_writes_takes_effect_after_the_last(lxc):
    # Python's Ctrl-C handler, as the CLI installs it (pytest started as a background
    # job inherits SIGINT ignored, and the held signal would then be dropped).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _sigint_during_lb_writes(lxc)
    finally:
        signal.signal(signal.SIGINT, previous)


def _sigint_during_lb_writes(lxc):
    expected = _reference(lxc)
    coll = lxc()
    ctl = datapath.lb_control(coll)
    ctl.apply(lb_state(scenario(40, 0)))
    install_many, remove_many = ctl._maglev_many

    def interrupting_install(items):                # Ctrl-C in the middle of the writes
        os.kill(os.getpid(), signal.SIGINT)
        install_many(items)
    ctl._maglev_many = (interrupting_install, remove_many)
    with pytest.raises(KeyboardInterrupt):
        ctl.apply(lb_state(scenario(60, 7)))
    assert snapshot(coll, LB_MAPS) == expected


def test_sigkilled_lb_apply_is_finished_from_its_journal(lxc, tmp_path):
    expected = _reference(lxc)
    coll = lxc()
    ctl = datapath.lb_control(coll)
    ctl.apply(lb_state(scenario(40, 0)))
    before = snapshot(coll, LB_MAPS)
    journal = map_journal.Journal(str(tmp_path / "cb-node0"))
    ctl._journal = journal
    install, calls = ctl._maglev_install, []

    def dying_install(rid, ids, keys):              # kill -9 after the first Maglev table
        calls.append(rid)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        install(rid, ids, keys)
    ctl._maglev_install = dying_install
    ctl._maglev_many = (None, None)     # tables one at a time, so the kill lands between two
    pid = os.fork()
    if pid == 0:                                     # the writer, sharing the maps
        try:
            ctl.apply(lb_state(scenario(60, 7)))
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    between = snapshot(coll, LB_MAPS)
    assert between not in (before, expected), "the kill did not land between two writes"
    assert journal.exists()
    fresh = datapath.lb_control(coll)
    writer = map_journal.Writer(coll.maps, fresh._maglev_install, fresh._maglev_remove)
    assert recovery.recover("cb-node0", journal=journal, writer=writer) == "forward"
    assert snapshot(coll, LB_MAPS) == expected
    assert not journal.exists()
    assert recovery.recover("cb-node0", journal=journal, writer=writer) is None


def _pod(i: int) -> dict:
    doc = K.pod(f"p{i}", f"198.18.0.{10 + i}")
    doc["metadata"]["labels"] = {"app": f"a{i}"}
    return doc


def _cnp(i: int, ports: int) -> dict:
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": f"allow-{i}", "namespace": "default"},
            "spec": {"endpointSelector": {"matchLabels": {"app": f"a{i}"}},
                     "ingress": [{"fromCIDR": ["203.0.113.1/32", "203.0.113.2/32"],
                                  "toPorts": [{"ports": [{"port": str(8000 + j), "protocol": "TCP"}
                                                         for j in range(ports)]}]}]}}


def test_failed_policy_apply_undoes_every_endpoint(load):
    """The third endpoint's rules do not fit: the first two endpoints' new rules,
    their switches and the ipcache are all undone."""
    from harness.policy.control import PolicyApplyError
    pods = [_pod(i) for i in range(4)]
    small = K.scenario(*pods, _cnp(0, 1))
    coll = load("lxc", rodata=datapath.rodata_for("lxc"), max_entries={"cb_policy_exact": 12})
    ids = datapath.test_run_endpoint_ids(small)
    ctl = PolicyControl(coll.maps)
    ctl.apply(policy_state(small, local_node="cb-node0"), ids)
    before = snapshot(coll, POLICY_MAPS)
    big = K.scenario(*pods, *[_cnp(i, 4) for i in range(4)])
    with pytest.raises(PolicyApplyError, match="not changed"):
        ctl.apply(policy_state(big, local_node="cb-node0"), ids)
    assert snapshot(coll, POLICY_MAPS) == before
    # Still consistent: a change that fits applies.
    assert ctl.apply(policy_state(K.scenario(*pods, _cnp(1, 1)), local_node="cb-node0"),
                     ids).endpoints_changed == 2
