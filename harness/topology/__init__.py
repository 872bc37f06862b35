"""The multi-node topology: node, pod, underlay and world namespaces wired by a real CNI.

``plan`` decides (pure) what exists, ``build`` creates and removes it
(``up``/``down``), ``state`` records it in /run/chainbench/topology.json for
the other commands, ``signals`` makes building safe to interrupt.
"""
