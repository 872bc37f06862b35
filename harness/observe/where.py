"""Where a node's flow observer keeps its files, all under the node's state directory
(``harness.node.node.Node.state_dir``, /run/chainbench/<node>), so ``chainbench down``
removes them with the node's state:

- ``hubble.sock``: the observer's gRPC socket (Hubble's Observer API);
- ``observer/flows.log``: the flows it recorded (harness.observe.store.FlowLog);
- ``observer/supervisor.json``: the supervisor's state (pids, restarts);
- ``observer/observer.log``: what the supervisor and the observer print.

The observer also listens on ``127.0.0.1:4245`` (Hubble's port) inside the node's
network namespace; nothing listens in the root namespace.
"""
from __future__ import annotations

import os

from harness.node.node import Node

SOCKET_NAME = "hubble.sock"
#: Hubble's gRPC port, served on the loopback of the node's namespace.
GRPC_PORT = 4245
GRPC_ADDRESS = f"127.0.0.1:{GRPC_PORT}"
#: The node's pinned ring buffer and lost-event counter (bpf_src/lib/events.h).
EVENTS_MAP = "cb_events"
LOST_MAP = "cb_events_lost"


def socket_path(node: Node) -> str:
    return os.path.join(node.state_dir, SOCKET_NAME)


def socket_target(node: Node) -> str:
    """The gRPC target of the node's observer (``unix:///run/chainbench/<node>/hubble.sock``)."""
    return f"unix://{socket_path(node)}"


def observer_dir(node: Node) -> str:
    return os.path.join(node.state_dir, "observer")


def supervisor_state(node: Node) -> str:
    return os.path.join(observer_dir(node), "supervisor.json")


def log_file(node: Node) -> str:
    return os.path.join(observer_dir(node), "observer.log")


def events_pin(node: Node) -> str:
    return os.path.join(node.pin_dir, EVENTS_MAP)


def lost_pin(node: Node) -> str:
    return os.path.join(node.pin_dir, LOST_MAP)
