"""Programming the LB maps: incremental, deduplicated, ordered, transactional."""
from __future__ import annotations

import pytest

from harness.node import datapath
from harness.lb.control import LbApplyError
from harness.lb.desired import lb_state

from . import lbkit as K
from .lbkit import endpoint, service

pytestmark = [pytest.mark.test_run_only,   # no topology: runs beside the others (ci/run-tests.sh)
              pytest.mark.beside_faults]  # ... and beside the fault suite (pyproject.toml)

LB_MAPS = ("cb_lb4_services", "cb_lb4_backends", "cb_lb4_reverse_nat")


def svc(i: int, backends: list[str], **kw):
    return service(f"svc-{i}", f"198.19.1.{i}", [("http", 80, 8080, "TCP")],
                   [endpoint(b) for b in backends], **kw)


def snapshot(coll) -> dict[str, dict[bytes, bytes]]:
    return {name: {bytes(k): bytes(v) for k, v in coll.maps[name].items()} for name in LB_MAPS}


@pytest.fixture
def lxc(load):
    return load("lxc", rodata=datapath.rodata_for("lxc"))


def test_apply_is_idempotent(lxc):
    scen = K.scenario(svc(1, ["198.18.1.20", "198.18.1.21"]))
    ctl = datapath.lb_control(lxc)
    first = ctl.apply(lb_state(scen))
    assert first.frontends_added == 1
    # backends 2, reverse NAT 1, slots 2, service entry 1, ClusterIP entry 1
    assert first.writes == 7
    again = ctl.apply(lb_state(scen))
    assert (again.writes, again.deletes) == (0, 0)


def test_one_service_change_touches_only_it(lxc):
    scen = K.scenario(*[svc(i, ["198.18.1.20", "198.18.1.21"]) for i in range(1, 21)])
    ctl = datapath.lb_control(lxc)
    ctl.apply(lb_state(scen))
    ids = {f.key: ctl.frontend_id(f.key) for f in lb_state(scen).frontends}
    before = snapshot(lxc)

    changed = K.scenario(*[svc(i, ["198.18.1.20", "198.18.1.21"] + (["198.18.1.22"] if i == 7
                                                                    else []))
                           for i in range(1, 21)])
    stats = ctl.apply(lb_state(changed), services=["default/svc-7"])
    # new backend, slot 3, service entry count, ClusterIP entry count
    assert (stats.frontends_changed, stats.writes, stats.deletes) == (1, 4, 0)
    after = snapshot(lxc)
    diff = {name: {k for k in after[name] if before[name].get(k) != after[name][k]}
            for name in LB_MAPS}
    assert len(diff["cb_lb4_services"]) == 3 and len(diff["cb_lb4_backends"]) == 1
    assert {f.key: ctl.frontend_id(f.key) for f in lb_state(changed).frontends} == ids


def test_backends_are_shared_and_released(lxc):
    shared = "198.18.1.30"
    ctl = datapath.lb_control(lxc)
    ctl.apply(lb_state(K.scenario(svc(1, [shared, "198.18.1.31"]), svc(2, [shared]))))
    assert len(lxc.maps["cb_lb4_backends"]) == 2
    # Remove svc-1: its own backend goes, the shared one stays for svc-2.
    ctl.apply(lb_state(K.scenario(svc(2, [shared]))))
    backends = [str(b.address) for b in (ctl.state.frontends[0].backends)]
    assert backends == [shared] and len(lxc.maps["cb_lb4_backends"]) == 1
    assert len(lxc.maps["cb_lb4_reverse_nat"]) == 1
    # svc-2 keeps working on the remaining entries.
    dp = K.Datapath(lxc, ctl)
    _, out = dp.run("from_container", K.tcp4("198.19.1.2", 80))
    assert out[K.IP].dst == shared


def test_shrinking_a_service_deletes_its_extra_slots(lxc):
    ctl = datapath.lb_control(lxc)
    ctl.apply(lb_state(K.scenario(svc(1, [f"198.18.1.{20 + i}" for i in range(5)]))))
    assert len(lxc.maps["cb_lb4_services"]) == 7          # 5 slots + service + ClusterIP
    stats = ctl.apply(lb_state(K.scenario(svc(1, ["198.18.1.20"]))))
    assert stats.deletes == 4 + 4                           # 4 slots, 4 backends
    assert len(lxc.maps["cb_lb4_services"]) == 3


def test_ids_are_reused_after_removal(lxc):
    ctl = datapath.lb_control(lxc)
    ctl.apply(lb_state(K.scenario(svc(1, ["198.18.1.20"]), svc(2, ["198.18.1.21"]))))
    ctl.apply(lb_state(K.scenario(svc(2, ["198.18.1.21"]))))
    ctl.apply(lb_state(K.scenario(svc(2, ["198.18.1.21"]), svc(3, ["198.18.1.22"]))))
    ids = sorted(rid for _, rid, _ in ctl.records())
    assert ids == [1, 2]


def test_failed_apply_rolls_back_everything(load):
    lxc = load("lxc", rodata=datapath.rodata_for("lxc"), max_entries={"cb_lb4_services": 40})
    ctl = datapath.lb_control(lxc)
    ctl.apply(lb_state(K.scenario(*[svc(i, ["198.18.1.20", "198.18.1.21"])
                                         for i in range(1, 6)])))
    before, state_before = snapshot(lxc), ctl.state
    too_big = K.scenario(*[svc(i, ["198.18.1.20", "198.18.1.21", "198.18.1.22"])
                           for i in range(1, 16)])
    with pytest.raises(LbApplyError, match="rolled back"):
        ctl.apply(lb_state(too_big))
    assert snapshot(lxc) == before
    assert ctl.state == state_before
    # The control plane is still consistent: a fitting change applies.
    stats = ctl.apply(lb_state(K.scenario(*[svc(i, ["198.18.1.20"]) for i in range(1, 6)])))
    assert stats.frontends_changed == 5
    dp = K.Datapath(lxc, ctl)
    assert dp.run("from_container", K.tcp4("198.19.1.3", 80))[1][K.IP].dst == "198.18.1.20"


def test_service_flags_and_affinity(lxc):
    ctl = datapath.lb_control(lxc)
    ctl.apply(lb_state(K.scenario(svc(1, ["198.18.1.20"], affinity=300))))
    master = next(v for k, v in lxc.maps["cb_lb4_services"].items()
                  if k.backend_slot == 0 and k.dport != 0)
    from harness.lb.entries import SVC_FLAGS
    assert master.flags == SVC_FLAGS["SVC_F_CLUSTERIP"] | SVC_FLAGS["SVC_F_AFFINITY"]
    assert master.affinity_timeout == 300 and master.count == 1


def test_conflicting_frontends_are_an_error():
    from harness.lb.desired import LbStateError
    scen = K.scenario(svc(1, ["198.18.1.20"]),
                      K.pod("hp", "198.18.0.40", "cb-node0", host_ports=[(8080, 31313, "TCP")]),
                      service("np", "198.19.1.9", [("http", 80, 8080, "TCP")],
                              [endpoint("198.18.1.20")], svc_type="NodePort",
                              node_ports={"http": 31313}))
    with pytest.raises(LbStateError, match="already"):
        lb_state(scen)


def test_maglev_tables_do_not_depend_on_backend_ids(load, lxc):
    backends = [f"198.18.1.{20 + i}" for i in range(5)]
    ctl = datapath.lb_control(lxc)
    ctl.apply(lb_state(K.scenario(svc(1, backends, maglev=True))))
    rid = ctl.frontend_id((K.ip("198.19.1.1"), 80, "TCP"))
    assert list(lxc.maps["cb_lb_maglev"].keys()) == [rid]

    # A second datapath where the same backends got other ids (another service
    # was programmed first).
    other = load("lxc", rodata=datapath.rodata_for("lxc"))
    ctl2 = datapath.lb_control(other)
    first = svc(2, ["198.18.1.90", "198.18.1.91"])
    ctl2.apply(lb_state(K.scenario(first)))
    ctl2.apply(lb_state(K.scenario(first, svc(1, backends, maglev=True))))
    assert ctl.backend_id((K.ip(backends[0]), 8080, "TCP")) != \
        ctl2.backend_id((K.ip(backends[0]), 8080, "TCP"))
    a, b = K.Datapath(lxc, ctl), K.Datapath(other, ctl2)
    for sport in range(30000, 30100):
        pkt = K.tcp4("198.19.1.1", 80, sport=sport)
        assert a.run("from_container", pkt)[1][K.IP].dst == b.run("from_container", pkt)[1][K.IP].dst

    ctl.apply(lb_state(K.scenario()))
    assert list(lxc.maps["cb_lb_maglev"].keys()) == []


def test_frontend_inside_the_pod_cidr_is_refused():
    from harness.lb.desired import LbStateError
    scen = K.scenario(svc(1, ["198.18.1.20"], external_ips=["198.18.5.5"]))
    with pytest.raises(LbStateError, match="lies in the pod CIDR"):
        lb_state(scen)
