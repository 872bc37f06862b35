"""What a node holds: its pinned datapath maps and programs, settings, endpoint
registry, sync with the cluster's objects, readers of its maps, and the chained
CNI plugin that attaches its pods.  ``Node`` (harness.node.node) is a node's home:
where all of that lives."""
from harness.node.node import Node

__all__ = ["Node"]
