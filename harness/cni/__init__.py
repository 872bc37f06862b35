"""A small CNI runtime (``runtime``) and the node conflists chainbench runs with it (``conflist``).

The runtime executes a network configuration list as the CNI 1.0.0 spec says:
plugins are executables found on ``CNI_PATH``, driven by ``CNI_*`` environment
variables and a JSON configuration on stdin, chained by passing each result
to the next plugin as ``prevResult``.  Plugins run inside a project (``cb-*``)
namespace that stands in for the node, never in the root namespace.
"""
