"""The package's layers and the imports between its parts, read from the code.

Owns the one list of layers (``LAYERS``) that tests/test_layers.py holds the
code to (no import runs up a layer, no circle), and the architecture picture
in the README: ``python -m ci.architecture`` writes docs/architecture.dot from
the imports as they are, and renders docs/architecture.svg with Graphviz's
``dot`` (``make architecture``).  The picture shows each package (and each
top-level module) once, on its layer, with an arrow wherever some module of one
imports some module of the other.
"""
from __future__ import annotations

import argparse
import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("harness", "bench")
DOT_FILE = ROOT / "docs" / "architecture.dot"
SVG_FILE = ROOT / "docs" / "architecture.svg"

#: From the ground up: (what the layer is, the modules and packages on it).
LAYERS = (
    ("where things are; the address plan; the error base; pausing the garbage collector",
     ("harness.paths", "harness.addressing", "harness.errors", "harness.gcpause")),
    ("host facilities: netns, cgroups, bpffs, processes, signals, locks",
     ("harness.host",)),
    ("libbpf binding: objects, maps, programs, attachment",
     ("harness.bpf",)),
    ("the C ABI mirrored (structs, header constants, drop reasons); machine facts",
     ("harness.abi", "harness.facts")),
    ("all-or-nothing map writes; scenario files",
     ("harness.journal", "harness.scenario")),
    ("control planes: desired state to map entries; kube-proxy's rules",
     ("harness.lb", "harness.policy", "harness.kubeproxy")),
    ("the one scenario validation; a node's pinned datapath; BPF_PROG_TEST_RUN",
     ("harness.validate", "harness.node", "harness.testrun")),
    ("flows: datapath events decoded, the observer, Hubble's API, metrics, service map",
     ("harness.observe",)),
    ("namespaces, CNI, chaining, connectivity checks",
     ("harness.topology",)),
    ("benchmark suites and their reports",
     ("bench",)),
    ("command line: parse and dispatch",
     ("harness.cli",)),
)


def modules() -> dict[str, Path]:
    """Every module of the packages: dotted name -> file."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = modules()


def part_of(module: str) -> tuple[int, str]:
    """(layer, the listed module or package *module* belongs to)."""
    if module == "harness":             # the package's face: a docstring
        return 0, "harness"
    best = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > len(best[1]):
                    best = (index, prefix)
    if best is None:
        raise LookupError(f"{module} is on no layer: add it to LAYERS in ci/architecture.py")
    return best


def layer(module: str) -> int:
    return part_of(module)[0]


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(module: str) -> list[tuple[str, int]]:
    """(imported project module, line) for every import statement in *module*,
    at module level or inside a function."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        targets: list[str] = []
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


def graph() -> dict[str, list[tuple[str, int]]]:
    return {module: imports(module) for module in MODULES}


def cycle(edges: dict[str, list[tuple[str, int]]]) -> list[str] | None:
    """A loop of imports, if there is one (a package's face handing on its own
    submodules is no loop)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for target, _ in edges[m]:
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

    for m in sorted(edges):
        if not state.get(m):
            found = visit(m)
            if found:
                return found
    return None


def _part_arrows() -> set[tuple[str, str]]:
    """Part -> part wherever a module of one imports a module of the other; arrows
    into layer 0, which everything may use, are left out."""
    return {(part_of(m)[1], part_of(t)[1]) for m, targets in graph().items() for t, _ in targets
            if part_of(m)[1] != part_of(t)[1] and part_of(t)[0] != 0}


def _reduced(arrows: set[tuple[str, str]]) -> list[tuple[str, str]]:
    """The transitive reduction: an arrow another path already implies is left out."""
    succ: dict[str, set[str]] = {}
    for a, b in arrows:
        succ.setdefault(a, set()).add(b)

    def reaches(a: str, b: str, skip: tuple[str, str]) -> bool:
        seen, todo = set(), [a]
        while todo:
            n = todo.pop()
            for m in succ.get(n, ()):
                if (n, m) == skip or m in seen:
                    continue
                if m == b:
                    return True
                seen.add(m)
                todo.append(m)
        return False

    return sorted(e for e in arrows if not reaches(e[0], e[1], e))


def dot() -> str:
    """The picture in Graphviz's language: layers top (the CLI) to bottom."""
    arrows = _reduced(_part_arrows())
    out = ["// Generated by `python -m ci.architecture` from the code's imports: do not edit.",
           "digraph chainbench {",
           '  graph [rankdir=TB, newrank=true, nodesep=0.25, ranksep=0.35, fontname="Helvetica", '
           'fontsize=11, label="chainbench: packages by layer. An arrow: imports (arrows another path implies, and arrows into layer 0, left out)", labelloc=t];',
           '  node [shape=box, style="rounded,filled", fillcolor="#eef3fb", color="#5b7bb5", '
           'fontname="Helvetica", fontsize=11];',
           '  edge [color="#8a9bb8", arrowsize=0.6];']
    for index in range(len(LAYERS) - 1, -1, -1):
        what, parts = LAYERS[index]
        out.append(f"  subgraph cluster_{index} {{")
        out.append(f'    label="{index}: {what}"; labeljust=l; fontsize=9; '
                   'style="rounded,dashed"; color="#b8c4d8";')
        out.append(f'    "layer{index}" [style=invis, shape=point, width=0];')
        shown_parts = [p for p in parts if p in MODULES]
        out.append("    { rank=same; " + " ".join(f'"{p}";' for p in [f"layer{index}", *shown_parts])
                   + " }")
        for part in parts:
            if part not in MODULES:
                continue
            kind = "/" if MODULES[part].name == "__init__.py" else ".py"
            shown = part.replace(".", "/") + (kind if kind == "/" else ".py")
            out.append(f'    "{part}" [label="{shown}"];')
        out.append("  }")
    out.append('  subgraph cluster_c {')
    out.append('    label="the datapath, in C (CO-RE, built to build/bpf/)"; labeljust=l; fontsize=9; '
               'style="rounded,dashed"; color="#c9b38a";')
    out.append('    "bpf_src" [label="bpf_src/*.bpf.c\\nbpf_src/lib/*.h", fillcolor="#fbf3e4", '
               'color="#b58a3b"];')
    out.append("  }")
    for index in range(len(LAYERS) - 1, 0, -1):      # keeps the layers in order, top down
        out.append(f'  "layer{index}" -> "layer{index - 1}" [style=invis];')
    out.append('  "layer0" -> "bpf_src" [style=invis];')
    for src, dst in arrows:
        out.append(f'  "{src}" -> "{dst}";')
    out.append('  "harness.bpf" -> "bpf_src" [style=dashed, label=" loads", fontsize=9];')
    out.append('  "harness.abi" -> "bpf_src" [style=dashed, label=" mirrors, checked\\n against BTF", '
               'fontsize=9];')
    out.append("}")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ci.architecture", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if docs/architecture.dot is not what the code gives")
    args = parser.parse_args(argv)
    text = dot()
    if args.check:
        if not DOT_FILE.is_file() or DOT_FILE.read_text() != text:
            print(f"{DOT_FILE.relative_to(ROOT)}: out of date; run `make architecture`", file=sys.stderr)
            return 1
        return 0
    DOT_FILE.parent.mkdir(parents=True, exist_ok=True)
    DOT_FILE.write_text(text)
    if shutil.which("dot") is None:
        print("dot: not found (Debian package graphviz); wrote the .dot only", file=sys.stderr)
        return 1
    subprocess.run(["dot", "-Tsvg", str(DOT_FILE), "-o", str(SVG_FILE)], check=True)
    print(f"wrote {DOT_FILE.relative_to(ROOT)} and {SVG_FILE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
