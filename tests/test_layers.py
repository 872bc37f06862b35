"""The package's layers (ci/architecture.py ``LAYERS``, drawn in the README's
architecture picture): every import, at module level or inside a function,
goes down or sideways, never up a layer, and no modules import each other in
a loop; the picture is the one the code gives."""
from __future__ import annotations

from ci import architecture as A

GRAPH = A.graph()


def test_every_module_is_on_a_layer():
    for module in A.MODULES:
        A.layer(module)


def test_no_import_runs_up_a_layer():
    upward = [f"{A.MODULES[m].relative_to(A.ROOT)}:{line}: {m} (layer {A.layer(m)}) imports "
              f"{target} (layer {A.layer(target)})"
              for m, edges in GRAPH.items() for target, line in edges
              if A.layer(target) > A.layer(m)]
    assert not upward, "\n".join(upward)


def test_no_import_circle():
    loop = A.cycle(GRAPH)
    assert loop is None, "import circle: " + " -> ".join(loop)


def test_the_bpf_binding_stays_generic():
    """harness.bpf knows no struct, map or program of the project (the project
    registers its mirrors by defining them); of the rest it uses only the host
    facilities: the namespace to attach in, the guard on cgroups."""
    outside = [f"{m} imports {t}" for m, edges in GRAPH.items() if m.startswith("harness.bpf")
               for t, _ in edges if not t.startswith(("harness.bpf", "harness.host"))]
    assert not outside, "\n".join(outside)


def test_the_architecture_picture_is_the_codes():
    assert A.main(["--check"]) == 0, "docs/architecture.dot is out of date: run `make architecture`"
