"""The CNI runtime against the real ptp/host-local plugins, and a recording test plugin.

Each test gets a node namespace and a pod namespace of its own (cb-cnit-*);
the plugins run inside the node namespace, IPAM state and the result cache
live under the test's tmp directory.
"""
from __future__ import annotations

import ipaddress
import json
import os
import sys
from pathlib import Path

import pytest

from harness.host import netns
from harness.topology.conflist import node_conflist
from harness.topology.cni_runtime import (
    CNIError,
    CNIRuntime,
    RuntimeConf,
    host_interfaces,
    sandbox_addresses,
)

ECHO = Path(__file__).parent / "helpers" / "cni_echo_plugin.py"
NODE_INDEX = 7                      # pod CIDR 198.18.7.0/24, gateway .1


@pytest.fixture
def env(tmp_path):
    """(runtime, RuntimeConf, node namespace, pod namespace, tmp dir)."""
    node, pod = f"cb-cnit-node-{os.getpid()}", f"cb-cnit-pod-{os.getpid()}"
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    for name in ("cb-echo", "cb-echo2"):
        wrapper = plugins / name
        wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} {ECHO} \"$@\"\n")
        wrapper.chmod(0o755)
    try:
        for ns in (node, pod):
            netns.create(ns)
            with netns.entered(ns):
                for key in ("all", "default"):
                    Path(f"/proc/sys/net/ipv6/conf/{key}/accept_dad").write_text("0")
        from harness.topology.cni_runtime import discover_cni_path
        runtime = CNIRuntime(node, [str(plugins), *discover_cni_path()], cache_dir=str(tmp_path / "cache"),
                             timeout=10)
        rt = RuntimeConf(container_id="default_client", netns=f"/run/netns/{pod}",
                         args=(("IgnoreUnknown", "1"), ("K8S_POD_NAMESPACE", "default"),
                               ("K8S_POD_NAME", "client")))
        yield runtime, rt, node, pod, tmp_path
    finally:
        netns.delete(pod)
        netns.delete(node)


def conflist(tmp_path: Path, *, chained=(), ipv6: bool = False) -> dict:
    return node_conflist(NODE_INDEX, ipv6=ipv6, data_dir=str(tmp_path / "ipam"), chained=chained)


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_add_check_del_with_ptp_and_host_local(env):
    runtime, rt, node, pod, tmp = env
    conf = conflist(tmp)
    result = runtime.add(conf, rt)

    assert result["cniVersion"] == "1.0.0"
    host, sandbox = result["interfaces"]
    assert host["name"].startswith("veth") and "sandbox" not in host
    assert sandbox == {"name": "eth0", "mac": sandbox["mac"], "sandbox": f"/run/netns/{pod}"}
    assert result["ips"] == [{"interface": 1, "address": "198.18.7.2/24", "gateway": "198.18.7.1"}]
    assert {"dst": "0.0.0.0/0"} in result["routes"]
    assert host_interfaces(result) == [host]
    assert sandbox_addresses(result, "eth0") == [ipaddress.ip_interface("198.18.7.2/24")]

    # The kernel agrees: the routed veth of the aws-cni model.
    assert "198.18.7.1/32" in netns.run(node, "ip", "-o", "addr", "show", "dev", host["name"]).stdout
    assert f"198.18.7.2 dev {host['name']}" in netns.run(node, "ip", "route").stdout
    assert "default via 198.18.7.1 dev eth0" in netns.run(pod, "ip", "route").stdout
    netns.run(node, "ping", "-c", "1", "-W", "1", "198.18.7.2")
    assert (tmp / "ipam" / "chainbench" / "198.18.7.2").exists()

    runtime.check(conf, rt)
    netns.run(pod, "ip", "addr", "flush", "dev", "eth0")
    with pytest.raises(CNIError) as broken:
        runtime.check(conf, rt)
    assert broken.value.plugin == "ptp" and broken.value.command == "CHECK"

    runtime.delete(conf, rt)
    assert host["name"] not in netns.run(node, "ip", "-o", "link").stdout
    assert not (tmp / "ipam" / "chainbench" / "198.18.7.2").exists()
    assert runtime.cached_result(conf, rt) is None
    runtime.delete(conf, rt)                                   # DEL is idempotent
    with pytest.raises(CNIError) as no_add:
        runtime.check(conf, rt)
    assert no_add.value.code == 3


def test_dual_stack_ranges(env):
    runtime, rt, node, pod, tmp = env
    result = runtime.add(conflist(tmp, ipv6=True), rt)
    addrs = {ip["address"]: ip for ip in result["ips"]}
    assert set(addrs) == {"198.18.7.2/24", "2001:db8:1:7::2/64"}
    assert all(ip["interface"] == 1 for ip in result["ips"])
    netns.run(node, "ping", "-c", "1", "-W", "1", "2001:db8:1:7::2")
    runtime.delete(conflist(tmp, ipv6=True), rt)


def test_requested_ip_through_the_ips_capability(env):
    runtime, rt, node, pod, tmp = env
    rt = RuntimeConf(rt.container_id, rt.netns, args=rt.args, capability_args={"ips": ["198.18.7.40/24"]})
    result = runtime.add(conflist(tmp), rt)
    assert result["ips"][0]["address"] == "198.18.7.40/24"
    runtime.delete(conflist(tmp), rt)


def test_chain_passes_prev_result_and_env(env):
    runtime, rt, node, pod, tmp = env
    log = tmp / "calls.jsonl"
    conf = conflist(tmp, chained=[
        {"type": "cb-echo", "tag": "a", "recordFile": str(log), "capabilities": {"ips": True}},
        {"type": "cb-echo2", "tag": "b", "recordFile": str(log)},
    ])
    result = runtime.add(conf, rt)
    first, second = records(log)
    assert first["config"]["tag"] == "a" and second["config"]["tag"] == "b"
    # The first chained plugin saw ptp's result; the second saw what the first returned.
    assert first["config"]["prevResult"] == result == second["config"]["prevResult"]
    assert result["interfaces"][1]["name"] == "eth0"
    for call in (first, second):
        assert call["config"]["name"] == "chainbench" and call["config"]["cniVersion"] == "1.0.0"
        assert call["env"]["CNI_COMMAND"] == "ADD"
        assert call["env"]["CNI_CONTAINERID"] == "default_client"
        assert call["env"]["CNI_NETNS"] == f"/run/netns/{pod}"
        assert call["env"]["CNI_IFNAME"] == "eth0"
        assert call["env"]["CNI_ARGS"] == "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=client"
        assert call["env"]["CNI_PATH"].split(":") == runtime.cni_path
        # Plugins run inside the node namespace.
        assert call["netns_inode"] == os.stat(f"/run/netns/{node}").st_ino

    runtime.check(conf, rt)
    checks = records(log)[2:]
    assert [c["config"]["tag"] for c in checks] == ["a", "b"]
    assert all(c["env"]["CNI_COMMAND"] == "CHECK" and c["config"]["prevResult"] == result for c in checks)

    runtime.delete(conf, rt)
    dels = records(log)[4:]
    assert [c["config"]["tag"] for c in dels] == ["b", "a"]        # reverse order
    assert all(c["env"]["CNI_COMMAND"] == "DEL" and c["config"]["prevResult"] == result for c in dels)
    assert "veth" not in netns.run(node, "ip", "-o", "link").stdout


def test_runtime_config_only_for_declared_capabilities(env):
    runtime, rt, node, pod, tmp = env
    log = tmp / "calls.jsonl"
    conf = {"cniVersion": "1.0.0", "name": "caps", "plugins": [
        {"type": "cb-echo", "recordFile": str(log), "capabilities": {"portMappings": True}},
        {"type": "cb-echo", "recordFile": str(log)}]}
    mappings = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]
    runtime.add(conf, RuntimeConf("c1", rt.netns, capability_args={"portMappings": mappings, "ips": []}))
    first, second = records(log)
    assert first["config"]["runtimeConfig"] == {"portMappings": mappings}
    assert "runtimeConfig" not in second["config"] and "prevResult" not in first["config"]


def test_bad_config_json_is_a_spec_error_object(env):
    runtime, rt, *_ = env
    with pytest.raises(CNIError) as err:
        runtime.add('{"cniVersion": "1.0.0", "name": ', rt)
    obj = err.value.to_dict()
    assert obj["cniVersion"] == "1.0.0" and obj["code"] == 6
    assert obj["msg"] == "failed to decode network configuration list" and obj["details"]
    with pytest.raises(CNIError) as version:
        runtime.add({"cniVersion": "0.9.9", "name": "x", "plugins": [{"type": "ptp"}]}, rt)
    assert version.value.code == 1
    with pytest.raises(CNIError) as empty:
        runtime.add({"cniVersion": "1.0.0", "name": "x", "plugins": []}, rt)
    assert empty.value.code == 7
    with pytest.raises(CNIError) as env_err:
        runtime.add({"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "ptp"}]},
                    RuntimeConf("bad id!", rt.netns))
    assert env_err.value.code == 4


def test_plugin_rejecting_its_config_is_surfaced(env):
    runtime, rt, node, pod, tmp = env
    conf = {"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "ptp", "mtu": "large"}]}
    with pytest.raises(CNIError) as err:
        runtime.add(conf, rt)
    assert err.value.plugin == "ptp" and err.value.code == 999       # ptp's own error object
    assert err.value.msg.startswith("failed to load netconf") and "unmarshal" in err.value.msg


def test_missing_plugin_binary(env):
    runtime, rt, *_ = env
    conf = {"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "cb-no-such-plugin"}]}
    with pytest.raises(CNIError) as err:
        runtime.add(conf, rt)
    assert err.value.code == 7 and "failed to find plugin 'cb-no-such-plugin'" in err.value.msg
    with pytest.raises(CNIError):
        runtime.validate(conf)


def test_unknown_netns_surfaces_the_plugins_error(env):
    runtime, rt, node, pod, tmp = env
    missing = RuntimeConf("default_ghost", "/run/netns/cb-cnit-does-not-exist")
    with pytest.raises(CNIError) as err:
        runtime.add(conflist(tmp), missing)
    assert err.value.plugin == "ptp" and err.value.command == "ADD"
    assert err.value.code == 999                                     # ptp's generic code
    assert "failed to open netns" in err.value.msg and "cb-cnit-does-not-exist" in err.value.msg
    runtime.delete(conflist(tmp), missing)                           # DEL of a vanished pod succeeds


def test_failing_chained_plugin_then_del_cleans_up(env):
    runtime, rt, node, pod, tmp = env
    conf = conflist(tmp, chained=[{"type": "cb-echo", "fail": {"code": 101, "msg": "no endpoint",
                                                               "details": "map full"}}])
    with pytest.raises(CNIError) as err:
        runtime.add(conf, rt)
    assert (err.value.code, err.value.msg, err.value.details, err.value.plugin) == \
        (101, "no endpoint", "map full", "cb-echo")
    assert err.value.to_dict() == {"cniVersion": "1.0.0", "code": 101, "msg": "no endpoint",
                                   "details": "map full"}
    assert "veth" in netns.run(node, "ip", "-o", "link").stdout      # ptp's part is still there
    ok = conflist(tmp)                                                # DEL as the caller handles it
    runtime.delete(ok, rt)
    assert "veth" not in netns.run(node, "ip", "-o", "link").stdout
    assert not (tmp / "ipam" / "chainbench" / "198.18.7.2").exists()


def test_invalid_result_and_timeout(env):
    runtime, rt, *_ = env
    bad = {"cniVersion": "1.0.0", "ips": [{"address": "198.18.7.9/24", "interface": 3}]}
    conf = {"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "cb-echo", "result": bad}]}
    with pytest.raises(CNIError) as err:
        runtime.add(conf, rt)
    assert err.value.code == 6 and "ips[0].interface 3" in err.value.details

    slow = CNIRuntime(runtime.host_netns, runtime.cni_path, timeout=0.3)
    conf = {"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "cb-echo", "sleep": 5}]}
    with pytest.raises(CNIError) as late:
        slow.add(conf, rt)
    assert late.value.code == 5 and "timed out" in late.value.msg


def test_version_and_host_namespace_guard(env):
    runtime, *_ = env
    assert "1.0.0" in runtime.version("ptp")["supportedVersions"]
    runtime.validate(node_conflist(NODE_INDEX))
    with pytest.raises(ValueError, match="project namespaces"):
        CNIRuntime("default", runtime.cni_path)


def test_conflist_builder_hook():
    conf = node_conflist("cb-node3", ipv6=True, mtu=1450, portmap=True,
                         chained=[{"type": "chainbench-cni", "datapath": "bpf"}])
    assert [p["type"] for p in conf["plugins"]] == ["ptp", "portmap", "chainbench-cni"]
    ptp = conf["plugins"][0]
    assert ptp["mtu"] == 1450 and ptp["ipMasq"] is False
    assert ptp["ipam"]["ranges"] == [[{"subnet": "198.18.3.0/24", "gateway": "198.18.3.1"}],
                                     [{"subnet": "2001:db8:1:3::/64", "gateway": "2001:db8:1:3::1"}]]
    assert ptp["ipam"]["dataDir"] == "/run/chainbench/cb-node3/ipam"
    assert node_conflist(0, primary="bridge")["plugins"][0]["type"] == "bridge"
    with pytest.raises(ValueError, match="chained plugin 0"):
        node_conflist(0, chained=[{"name": "x"}])
    with pytest.raises(ValueError, match="come from the list"):
        node_conflist(0, chained=[{"type": "x", "cniVersion": "0.4.0"}])
