"""An endpoint record is filled in one place (EndpointRegistry.fill): the chained
plugin, the node's sync and ``policy apply`` call it with what they know."""
from __future__ import annotations

import pytest

from harness.node.endpoints import NOT_READY, READY, WAITING_FOR_IDENTITY, EndpointConflict, \
    EndpointRegistry

pytestmark = pytest.mark.test_run_only


def test_fill_moves_an_endpoint_to_ready_only_once_attached_and_identified(tmp_path):
    reg = EndpointRegistry("cb-node0", directory=str(tmp_path))
    rec = reg.fill("default/a", attachment=("c" * 64, "eth0"), state=NOT_READY,
                   interface="veth1", ipv4="198.18.0.5", ipv6=None)
    assert (rec.id, rec.state, rec.container_id, rec.labels) == (1, NOT_READY, "c" * 64, None)
    reg.fill("default/a", identity=4242)            # a sync before the programs are attached
    assert (rec.state, rec.identity) == (NOT_READY, 4242)
    reg.fill("default/a", state=WAITING_FOR_IDENTITY)
    reg.fill("default/a", identity=4242)
    assert rec.state == READY and rec.interface == "veth1" and rec.ipv4 == "198.18.0.5"
    reg.save()
    again = EndpointRegistry("cb-node0", directory=str(tmp_path)).records["default/a"]
    assert again == rec


def test_fill_refuses_an_attachment_or_container_name_of_another_endpoint(tmp_path):
    reg = EndpointRegistry("cb-node0", directory=str(tmp_path))
    reg.fill("container:web", attachment=("a" * 64, "eth0"), labels=("container:name=web",))
    assert reg.records["container:web"].labels == ["container:name=web"]
    with pytest.raises(EndpointConflict, match="already attached as container:web"):
        reg.fill("default/b", attachment=("a" * 64, "eth0"))
    with pytest.raises(EndpointConflict, match="belongs to container aaaaaaaaaaaa"):
        reg.fill("container:web", attachment=("b" * 64, "eth0"))
    assert list(reg.records) == ["container:web"]
