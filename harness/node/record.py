"""What a node keeps for its chained CNI plugin, so a pod ADD reads no scenario.

``chainbench up`` writes it in the node's state directory (harness.node.node.Node.record):

- ``pods.json``, before the first pod is added: every pod of the scenario that
  gets a CNI attachment (``namespace/name``), each with whether it is annotated
  ``chainbench.io/chaining: skip``; and ``complete`` (false until ``up`` has
  synced the node).  Every ADD reads this small file: is the pod the
  scenario's, does it get programs, must it sync the node now.
- ``cluster.pickle``, once every pod is in and the node is synced: the
  scenario as the topology runs it (the pods' real addresses and nodes), the
  cluster as this node knows it (Cilium's agent likewise holds every Service
  and the whole ipcache).  Read only by an ADD or DEL that must re-sync the
  node's maps after ``up`` (a runtime's ADD, a podman container).  Written and
  read by this project only, under root's ``/run/chainbench``, like the maps'
  journal (harness.journal).
"""
from __future__ import annotations

import json
import os
import pickle
from typing import Any

#: A pod annotated ``chainbench.io/chaining: skip`` stands for one created before
#: chaining was enabled: the plugin gives it no programs (harness.node.cni_plugin).
SKIP_ANNOTATION = "chainbench.io/chaining"
PODS_FILE = "pods.json"
CLUSTER_FILE = "cluster.pickle"


def _replace(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class NodeRecord:
    """The record in a node's state directory *directory*."""

    def __init__(self, directory: str):
        self.directory = directory
        self.pods_path = os.path.join(directory, PODS_FILE)
        self.cluster_path = os.path.join(directory, CLUSTER_FILE)

    def write_pods(self, skip: dict[str, bool]) -> None:
        """The scenario's attached pods (``ns/name`` -> annotated skip); not complete."""
        _replace(self.pods_path, json.dumps({"complete": False, "pods": skip},
                                            sort_keys=True).encode())

    def write_cluster(self, scenario: Any) -> None:
        """The scenario with the topology's real addresses; the node is complete."""
        _replace(self.cluster_path, pickle.dumps(scenario, protocol=pickle.HIGHEST_PROTOCOL))
        data = self._pods()
        data["complete"] = True
        _replace(self.pods_path, json.dumps(data, sort_keys=True).encode())

    def _pods(self) -> dict:
        try:
            with open(self.pods_path) as f:
                return json.load(f)
        except FileNotFoundError:
            return {"complete": False, "pods": {}}

    def exists(self) -> bool:
        return os.path.exists(self.pods_path)

    def read(self) -> tuple[dict[str, bool], bool]:
        """(pod -> skip, complete)."""
        data = self._pods()
        return data.get("pods", {}), bool(data.get("complete"))

    def cluster_exists(self) -> bool:
        return os.path.exists(self.cluster_path)

    def cluster(self) -> Any | None:
        """The scenario the node syncs from, None before ``up`` has written it."""
        try:
            with open(self.cluster_path, "rb") as f:
                return pickle.load(f)
        except FileNotFoundError:
            return None
