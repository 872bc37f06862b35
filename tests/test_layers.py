"""The package's layers: every import (at module level or inside a function)
goes down or sideways, never up, and no modules import each other in a loop.

Layers, from the ground up (README "Layout"):

  0  harness.paths, harness.addressing, harness.errors      where things are; the address plan
  1  harness.bpf, harness.host                             libbpf; namespaces, cgroups, bpffs, processes
  2  harness.abi                                           the C structs and constants, mirrored
  3  harness.journal, harness.scenario                     all-or-nothing map writes; scenario files
  4  harness.lb, harness.policy, harness.kubeproxy         control planes: desired state -> map entries
  5  harness.validate, harness.node, harness.testrun       the one scenario validation; a node's
                                                           pinned datapath; BPF_PROG_TEST_RUN
  6  harness.topology                                      namespaces, CNI, chaining, connectivity
  7  bench                                                 the suites and their reports
  8  harness.cli                                           parse and dispatch
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("harness", "bench")
LAYERS = (
    ("harness.paths", "harness.addressing", "harness.errors"),
    ("harness.bpf", "harness.host"),
    ("harness.abi",),
    ("harness.journal", "harness.scenario"),
    ("harness.lb", "harness.policy", "harness.kubeproxy"),
    ("harness.validate", "harness.node", "harness.testrun"),
    ("harness.topology",),
    ("bench",),
    ("harness.cli",),
)


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def layer(module: str) -> int:
    if module == "harness":         # the package's face: a docstring
        return 0
    best, depth = None, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > depth:
                best, depth = index, len(prefix)
    if best is None:
        raise AssertionError(f"{module} is on no layer: add it to LAYERS")
    return best


def _resolve(name: str) -> str | None:
    """The project module *name* refers to (a module, or the nearest package)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str) -> list[tuple[str, int]]:
    """(imported project module, line) for every import statement in *module*."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] or [base]
            targets = [t if t in MODULES else base for t in targets]
        for target in targets:
            resolved = _resolve(target)
            if resolved is not None and resolved != module:
                found.append((resolved, node.lineno))
    return found


GRAPH = {module: imports(module) for module in MODULES}


def test_every_module_is_on_a_layer():
    for module in MODULES:
        layer(module)


def test_no_import_runs_up_a_layer():
    upward = [f"{MODULES[m].relative_to(ROOT)}:{line}: {m} (layer {layer(m)}) imports "
              f"{target} (layer {layer(target)})"
              for m, edges in GRAPH.items() for target, line in edges if layer(target) > layer(m)]
    assert not upward, "\n".join(upward)


def _cycle() -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for target, _ in GRAPH[m]:
            # a package's face (its __init__) handing on its own submodules is no loop
            if m.startswith(target + ".") and MODULES[target].name == "__init__.py":
                continue
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if not state.get(target):
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(GRAPH):
        if not state.get(m):
            found = visit(m)
            if found:
                return found
    return None


def test_no_import_circle():
    cycle = _cycle()
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_bpf_binding_stays_generic():
    """harness.bpf knows no struct, map or program of the project (the project
    registers its mirrors by defining them); of the rest it uses only the host
    facilities: the namespace to attach in, the guard on cgroups."""
    outside = [f"{m} imports {t}" for m, edges in GRAPH.items() if m.startswith("harness.bpf")
               for t, _ in edges if not t.startswith(("harness.bpf", "harness.host"))]
    assert not outside, "\n".join(outside)


def test_the_host_layer_uses_only_libbpf_of_the_binding():
    """harness.host sits beside harness.bpf: it may read libbpf's version, nothing more."""
    outside = [f"{m} imports {t}" for m, edges in GRAPH.items() if m.startswith("harness.host")
               for t, _ in edges if t.startswith("harness.bpf") and t != "harness.bpf._libbpf"]
    assert not outside, "\n".join(outside)
