"""Policy at scale: the generated scenario (bench/scenarios/policies.yaml.j2), the fast
paths of resolution and programming against the old ones and the reference, and the
control suite's policy section (bench.policy_control).

- The template gives exactly the identities asked for.
- LabelIndex.select (all identities at once) selects what Selector.matches selects one
  identity at a time, for every selector of the scenario.
- policy_state(local_only=True) gives the local endpoints exactly as the full resolution
  does, and its verdicts agree with harness.policy.reference on sampled connections.
- PolicyControl.apply (packed entries, one batch per map and phase) leaves every policy map
  holding exactly the bytes the per-entry path (entries.endpoint_keys, PolicyEntryKey.value,
  endpoint_value, ipcache_key / ipcache_value) gives, on a fresh node and after a change
  (the other generation, the old one deleted).
"""
from __future__ import annotations

import ipaddress
import random

import jsonschema
import pytest

from bench import policy_control
from bench.report import schema as result_schema
from harness.node import datapath
from harness.bpf import Collection, Packed
from harness.policy import entries as E
from harness.policy.control import PolicyControl, endpoint_ids
from harness.policy.desired import _compile, policy_state
from harness.policy.identity import security_labels
from harness.policy.model import IpcacheEntry
from harness.policy.reference import verdict
from harness.policy.selectors import LabelIndex, LabelView
from harness.scenario.errors import ScenarioError
from harness.scenario.load import load_scenario_text
from harness.scenario.templates import load_template_scenario, render_template

from .support import object_path
from .test_policy_resolve import matched

pytestmark = pytest.mark.test_run_only   # no topology: runs beside the others (ci/run-tests.sh)

NODE = "cb-node0"
MID = 300           # identities of the mid-size scenario


@pytest.fixture(scope="module")
def mid():
    return load_template_scenario("policies", identities=MID)


def _local_ids(scenario) -> dict[str, int]:
    return endpoint_ids(p.ref for p in scenario.pods if p.node_name == NODE and not p.host_network)


# -- the template --------------------------------------------------------------------------
@pytest.mark.parametrize("n", [4, 5, 43, 44, 123])
def test_template_gives_exactly_the_identities_asked(n):
    s = load_template_scenario("policies", identities=n, per_node=7)
    label_sets = {security_labels(p, s.namespace_labels(p.meta.namespace)) for p in s.pods}
    assert len(label_sets) == n
    apps = n - 3
    assert len(s.pods) == 5 + apps + (apps + 3) // 4            # 1.25 pods per app identity
    nodes = {p.node_name for p in s.pods}
    assert nodes == {f"cb-node{i}" for i in range(-(-len(s.pods) // 7))}
    assert max(sum(p.node_name == n_ for p in s.pods) for n_ in nodes) <= 7
    state = policy_state(s, local_node=NODE)
    assert sum(1 for i in state.identities if i.kind == "endpoint") == n


def test_template_refuses_what_it_cannot_place():
    with pytest.raises(ScenarioError, match="identities must be"):
        render_template("policies", identities=3)
    with pytest.raises(ScenarioError, match="raise per_node"):
        render_template("policies", identities=60_000, per_node=110)


# -- resolution ---------------------------------------------------------------------------
def test_label_index_selects_what_selectors_match(mid):
    state = policy_state(mid, local_node=NODE)
    views = {i.id: LabelView(i.labels) for i in state.identities}
    indexes = (LabelIndex(views), LabelIndex.of_labels({i.id: i.labels for i in state.identities}))
    selectors = set()
    for policy in _compile(mid, True):
        selectors.add(policy.subject)
        for _, entry in policy.entries:
            selectors.update(p.selector for p in entry.peers if p.selector is not None)
    assert len(selectors) > 100
    for sel in selectors:
        want = {i for i, v in views.items() if sel.matches(v)}
        assert [index.select(sel) for index in indexes] == [want, want], sel


def test_local_only_resolves_the_local_endpoints_as_the_full_resolution(mid):
    full = policy_state(mid, local_node=NODE)
    local = policy_state(mid, local_node=NODE, local_only=True)
    ids = _local_ids(mid)
    assert {ep.pod for ep in local.endpoints} == set(ids)
    assert local.endpoints == tuple(ep for ep in full.endpoints if ep.pod in ids)
    assert (local.identities, local.ipcache) == (full.identities, full.ipcache)
    assert sum(len(ep.ingress) + len(ep.egress) for ep in local.endpoints) > 1000


def test_local_only_also_resolves_the_pods_a_node_holds(mid):
    """A node's registry may hold a pod the scenario places elsewhere (or nowhere):
    *held* resolves it too, exactly as the full resolution does (harness.node.sync)."""
    full = policy_state(mid, local_node=NODE)
    ids = _local_ids(mid)
    elsewhere = sorted(p.ref for p in mid.pods
                       if p.node_name != NODE and not p.host_network and p.pod_ips)[:3]
    assert elsewhere
    local = policy_state(mid, local_node=NODE, local_only=True, held=elsewhere + ["ns/absent"])
    assert {ep.pod for ep in local.endpoints} == set(ids) | set(elsewhere)
    assert local.endpoints == tuple(ep for ep in full.endpoints
                                    if ep.pod in ids or ep.pod in elsewhere)


def test_generated_scenario_verdicts_agree_with_the_reference(mid):
    """Random connections, and connections aimed at each sampled endpoint's rules (a remote
    the ipcache gives the rule's identity, at the rule's first port)."""
    state = policy_state(mid, local_node=NODE, local_only=True)
    rng = random.Random(16)
    by_identity: dict[int, list[str]] = {}
    for e in state.ipcache:
        host = e.prefix.network_address + (0 if e.prefix.num_addresses == 1 else 1)
        by_identity.setdefault(e.identity, []).append(str(host))
    remotes = [str(ip) for p in mid.pods for ip in p.pod_ips] + \
        ["203.0.113.5", "203.0.113.130", "203.0.113.201", "198.19.128.1", "198.19.128.2"]
    endpoints = rng.sample(list(state.endpoints), 20) + \
        [ep for ep in state.endpoints if any(r.deny for r in ep.ingress)][:5]
    checked = {"allow": 0, "deny-default": 0, "deny-rule": 0}
    for ep in endpoints:
        local = str(mid.pod(ep.pod).pod_ips[0])
        queries = [(rng.choice(["ingress", "egress"]), rng.choice(remotes),
                    *rng.choice([(6, 8080), (6, 9090), (6, 5432), (6, 9007), (6, 443), (6, 8443),
                                 (17, 53), (6, 53), (6, 22)])) for _ in range(10)]
        for direction, rules in (("ingress", ep.ingress), ("egress", ep.egress)):
            for rule in rng.sample(list(rules), min(6, len(rules))):
                for remote in by_identity.get(rule.identity, [])[:1]:
                    queries.append((direction, remote, rule.proto or 6, rule.ports.lo))
        for direction, remote, proto, port in queries:
            if remote == local:
                continue
            want = verdict(mid, ep.pod, direction, remote, proto, port, local_node=NODE)
            assert matched(state, ep.pod, direction, remote, proto, port) == want, \
                (ep.pod, direction, remote, proto, port)
            checked[want] += 1
    assert all(checked.values()), checked


# -- programming: the packed path writes what the per-entry path gives -----------------------
def _expected(state, ids, generations: dict[int, tuple[int, int]]) -> dict[str, dict[bytes, bytes]]:
    """Every policy map's entries, built one entry at a time with the per-entry functions."""
    out: dict[str, dict[bytes, bytes]] = {m: {} for m in policy_control.POLICY_MAPS}
    for e in state.ipcache:
        out[E.ipcache_map(e.prefix)][E.ipcache_key(e.prefix)] = E.ipcache_value(e)
    for ep in state.endpoints:
        eid = ids[ep.pod]
        gen, revision = generations[eid]
        for k in E.endpoint_keys(eid, gen, ep):
            out["cb_policy_exact" if k.exact else "cb_policy"][k.to_bytes()] = k.value()
        out["cb_endpoints"][eid.to_bytes(4, "little")] = E.endpoint_value(ep, gen, revision)
    return out


def _held(coll) -> dict[str, dict[bytes, bytes]]:
    out = {}
    for name in policy_control.POLICY_MAPS:
        items = {bytes(k) if not isinstance(k, int) else k.to_bytes(4, "little"): bytes(v)
                 for k, v in coll.maps[name].items()}
        out[name] = {k: v for k, v in items.items() if name != "cb_endpoints" or any(v)}
    return out


def _without_namespace_policies(scenario_text: str, ns: str) -> str:
    docs = scenario_text.split("\n---\n")
    return "\n---\n".join(d for d in docs if not (f'"namespace": "{ns}"' in d and "Policy" in d))


def test_apply_writes_exactly_the_per_entry_bytes_fresh_and_after_a_change():
    text = render_template("policies", identities=MID)
    scenario = load_scenario_text(text, source="policies")
    changed = load_scenario_text(_without_namespace_policies(text, "ns-1"), source="changed")
    ids = _local_ids(scenario)
    first = policy_state(scenario, local_node=NODE, local_only=True)
    second = policy_state(changed, local_node=NODE, local_only=True)
    differ = {ids[a.pod] for a, b in zip(first.endpoints, second.endpoints) if a != b}
    assert differ and len(differ) < len(ids)
    with Collection.load(str(object_path("lxc")), rodata=datapath.rodata_for("lxc")) as coll:
        ctl = PolicyControl(coll.maps)
        stats = ctl.apply(first, ids)
        assert stats.endpoints_changed == len(ids) and stats.plan_seconds > 0 < stats.write_seconds
        want = _expected(first, ids, {eid: (0, 1) for eid in ids.values()})
        assert _held(coll) == want
        assert stats.rule_writes == len(want["cb_policy"]) + len(want["cb_policy_exact"])
        stats = ctl.apply(second, ids)
        assert stats.endpoints_changed == len(differ)
        assert _held(coll) == _expected(second, ids, {eid: (1, 2) if eid in differ else (0, 1)
                                                      for eid in ids.values()})
        steps, planned = ctl.plan(second, ids)          # nothing left to do
        assert steps == [] and planned.endpoints_changed == 0


def test_packed_batches_write_as_they_are_and_check_their_size():
    with Collection.load(str(object_path("lxc")), rodata=datapath.rodata_for("lxc")) as coll:
        for name in ("cb_ipcache_hosts", "cb_ipcache"):   # a hash map and an LPM trie
            m = coll.maps[name]
            prefixlen = 32 if name == "cb_ipcache_hosts" else 24
            entries = E.packed_ipcache(
                [IpcacheEntry(ipaddress.ip_network(f"198.18.{i}.0/{prefixlen}"
                                                     if prefixlen == 24 else f"198.18.0.{i}/32"), 300 + i)
                 for i in range(1, 40)])[name]
            keys, values = b"".join(entries), b"".join(entries.values())
            assert m.update_batch(Packed(keys, m.key_size),
                                  Packed(values, m.value_size)) == len(entries)
            assert {bytes(k): bytes(v) for k, v in m.items()} == entries
            with pytest.raises(ValueError, match="are not records of"):
                Packed(keys[:10], m.key_size)
            with pytest.raises(ValueError, match="the map's are"):
                m.update_batch(Packed(keys, m.key_size), Packed(keys, m.key_size))


# -- the control suite's policy section ------------------------------------------------------
def test_policy_section_has_every_figure_and_the_floor_is_below_the_total():
    rows = policy_control.run([60], rounds=2)
    (r,) = rows
    assert r["status"] == "ok" and r["identities"] == 60 and r["node"] == NODE
    for key in ("resolve", "plan", "write", "total", "floor"):
        s = r[f"{key}_seconds"]
        assert s["n"] == 2 and s["median"] > 0 and len(r["samples_s"][key]) == 2
    for total, floor in zip(r["samples_s"]["total"], r["samples_s"]["floor"]):
        assert floor <= total
    assert r["entries"]["cb_endpoints"] == r["endpoints"] > 0
    assert r["entries"]["cb_policy_exact"] > 0 and r["entries"]["cb_ipcache_hosts"] >= r["pods"]
    header, table = policy_control.table(rows)
    assert header[0] == "IDENTITIES" and "FLOOR S" in header and table[0][0] == "60"
    section = {"config": {}, "results": [], "policy": rows}
    doc_schema = result_schema.load()
    jsonschema.validate(section, {"$schema": doc_schema["$schema"], "$defs": doc_schema["$defs"],
                                  "$ref": "#/$defs/control"})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**section, "policy": [{**r, "total_seconds": None}]},
                            {"$schema": doc_schema["$schema"], "$defs": doc_schema["$defs"],
                             "$ref": "#/$defs/control"})


def test_control_suite_section_carries_the_policy_list_and_the_cli_prints_its_table(capsys):
    from bench import control
    from bench.profiles import ControlSettings, get
    from harness.cli import _print_bench_tables
    assert get("quick").control.policy_identities == (1_000, 16_000)
    section = control.run_suite(ControlSettings(scales=(), rounds=1, timeout=60,
                                                policy_identities=(40,)))
    assert section["results"] == [] and [r["identities"] for r in section["policy"]] == [40]
    assert section["policy"][0]["cpu_seconds"]["median"] > 0
    _print_bench_tables({"control": section})
    out = capsys.readouterr().out
    assert "IDENTITIES" in out and "FLOOR S" in out and "\n40 " in out


def test_dashboard_shows_the_policy_table(tmp_path):
    from bench.report.dashboard import render
    from .test_dashboard import documents, write_results
    doc = documents()[1]
    summary = {"n": 3, "median": 0.5, "mad": 0.01, "mad_pct": 2.0, "min": 0.4, "max": 0.6,
               "mean": 0.5, "stdev": 0.05}
    doc["suites"]["control"]["policy"] = [
        {"identities": 16000, "node": NODE, "status": "ok", "detail": None, "pods": 20002,
         "nodes": 182, "endpoints": 110, "network_policies": 8299, "cilium_network_policies": 190,
         "entries": {"cb_policy": 30000, "cb_policy_exact": 21000},
         **{f"{k}_seconds": summary for k in ("resolve", "plan", "write", "total", "cpu", "floor")},
         "floor_ratio": summary, "samples_s": {"total": [0.4, 0.5, 0.6]}},
        {"identities": 64000, "node": NODE, "status": "error", "detail": "too many pods"}]
    assert result_schema.validate(doc, result_schema.load()) == []
    html = render(write_results(tmp_path, [doc])).read_text()
    assert "Policy: resolved and programmed" in html and ">16,000<" in html
    assert ">51,000<" in html and "too many pods" in html


def test_label_index_of_labels_takes_the_first_source_of_a_key_as_label_views_do():
    labels = {1: ("k8s:world=x", "reserved:world"), 2: ("reserved:world",), 3: ("k8s:world=y",),
              4: ("k8s:app=a", "k8s:world=")}
    views = {i: LabelView(lbls) for i, lbls in labels.items()}
    from harness.policy.selectors import parse_selector
    for sel in ({"matchLabels": {"world": "x"}}, {"matchLabels": {"world": ""}},
                {"matchExpressions": [{"key": "world", "operator": "Exists"}]},
                {"matchExpressions": [{"key": "world", "operator": "NotIn", "values": ["y"]}]},
                {"matchExpressions": [{"key": "reserved:world", "operator": "Exists"}]},
                {"matchExpressions": [{"key": "k8s:world", "operator": "DoesNotExist"}]}):
        selector = parse_selector(sel, "s", cilium=True)
        want = {i for i, v in views.items() if selector.matches(v)}
        assert LabelIndex.of_labels(labels).select(selector) == want == \
            LabelIndex(views).select(selector), sel


def test_compilation_cache_keys_tell_values_apart_and_take_any_decoded_value():
    import datetime
    from harness.policy.desired import _text
    assert _text({"port": 53, "protocol": "UDP"}) == _text({"port": 53, "protocol": "UDP"})
    assert len({_text(v) for v in ({"port": 53}, {"port": "53"}, {"port": 53.0}, {"port": True},
                                   {"port": 1}, [53], None)}) == 7
    assert _text({"since": datetime.date(2026, 12, 7)}) == repr({"since": datetime.date(2026, 12, 7)})


def test_equal_rules_in_two_namespaces_select_each_its_own_pods():
    """Rules are compiled once per namespace and text: the same podSelector text in two
    namespaces must still mean each policy's own namespace."""
    docs = []
    for ns in ("a", "b"):
        docs.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        for app, ip in (("web", 10), ("db", 11)):
            docs.append({"apiVersion": "v1", "kind": "Pod",
                         "metadata": {"name": app, "namespace": ns, "labels": {"app": app}},
                         "spec": {"nodeName": NODE}, "status": {"podIP": f"198.18.0.{ip + (ns == 'b') * 10}"}})
        docs.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                     "metadata": {"name": "db", "namespace": ns},
                     "spec": {"podSelector": {"matchLabels": {"app": "db"}},
                              "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}]}})
    import json
    scenario = load_scenario_text("\n---\n".join(json.dumps(d) for d in docs), source="two")
    state = policy_state(scenario, local_node=NODE, local_only=True)
    for ns in ("a", "b"):
        web = state.endpoint(f"{ns}/web").identity
        assert {r.identity for r in state.endpoint(f"{ns}/db").ingress} == {web, 1}   # + host
