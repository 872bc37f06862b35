"""The split ci/run-tests.sh relies on: a module marked beside_faults runs while the
fault suite counts what the project left on the machine after each point
(tests/faults/leftovers.py: processes with this checkout's or venv's path, wrk, nginx,
cb-* temporary directories, namespaces and cgroups, pins under /sys/fs/bpf/chainbench,
records under /run/chainbench).  Such a module, and every test helper it imports, may start no
process and make none of those: this reads their source for the ways to do it.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.test_run_only   # reads files: runs beside the others (ci/run-tests.sh)

TESTS = Path(__file__).resolve().parent
#: the ways a test could start a process or leave what the fault suite looks for
FORBIDDEN = {
    "a process": re.compile(r"\bsubprocess\b|\bPopen\b|\bos\.system\b|\bos\.exec|\bsys\.executable\b|"
                            r"\bpexpect\b|\bmultiprocessing\b|harness\.cli|chromium|pyperf"),
    "a temporary directory": re.compile(r"\btempfile\b|\bmkdtemp\b"),
    "a pin under the pin root": re.compile(r"\bpin_path\b|\bPIN_ROOT\b"),
    "a record or scratch directory": re.compile(r"\bSTATE_ROOT\b|\bPROC_ROOT\b|\bSCRATCH_ROOT\b|"
                                                r"\bprocs\.record"),
}

#: ... and in the module itself (helpers such as tests/support.py hold these for others)
FORBIDDEN_IN_MODULE = {
    "a namespace or cgroup": re.compile(r"\bnetns\b|\bcgroups\b|\bunshare\b|scratch_netns|"
                                        r"socket_lb_env"),
}


def _marked_beside_faults(path: Path) -> bool:
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "pytestmark"
                                                for t in node.targets):
            return "beside_faults" in ast.unparse(node.value)
    return False


def _local_imports(path: Path) -> set[Path]:
    """The test helper modules (under tests/) *path* imports."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = path.parent
                for _ in range(node.level - 1):
                    base = base.parent
            elif node.module and node.module.split(".")[0] == "tests":
                base = TESTS.parent
            else:
                continue
            parts = (node.module or "").split(".") if node.module else []
            stem = base.joinpath(*parts)
            candidates = [stem.with_suffix(".py")] if parts else []
            candidates += [stem / f"{alias.name}.py" for alias in node.names]
            out |= {c for c in candidates if c.is_file() and TESTS in c.parents}
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "tests":
                    c = TESTS.parent.joinpath(*alias.name.split(".")).with_suffix(".py")
                    if c.is_file():
                        out.add(c)
    return out


def _with_helpers(path: Path) -> set[Path]:
    """*path* and the helpers it imports, transitively.  Another test module imported for
    its constants or strategies is not followed: its tests do not run with *path*'s."""
    seen, todo = set(), [path]
    while todo:
        p = todo.pop()
        if p not in seen:
            seen.add(p)
            todo += [q for q in _local_imports(p) if not q.name.startswith("test_")]
    return seen


BESIDE_FAULTS = sorted(p for p in TESTS.glob("test_*.py") if _marked_beside_faults(p))


def test_some_modules_run_beside_the_fault_suite():
    assert len(BESIDE_FAULTS) >= 10, [p.name for p in BESIDE_FAULTS]


@pytest.mark.parametrize("module", BESIDE_FAULTS, ids=lambda p: p.name)
def test_a_module_beside_the_fault_suite_leaves_nothing_it_looks_for(module: Path):
    found = []
    for path in sorted(_with_helpers(module)):
        text = "\n".join(line.split("#", 1)[0] for line in path.read_text().splitlines())
        rules = {**FORBIDDEN, **FORBIDDEN_IN_MODULE} if path == module else FORBIDDEN
        for what, pattern in rules.items():
            for m in pattern.finditer(text):
                found.append(f"{path.relative_to(TESTS.parent)}: {what} ({m.group(0)!r})")
    assert not found, "marked beside_faults, yet:\n" + "\n".join(found)


def test_the_check_follows_helpers_and_sees_what_it_looks_for():
    """The check itself: it reads the helpers a module imports (relative and absolute,
    in sub-packages), and its patterns catch a process and a cb- temporary directory."""
    names = {p.relative_to(TESTS).as_posix() for p in _with_helpers(TESTS / "test_adversarial_corpus.py")}
    assert {"adversarial/node.py", "adversarial/drive.py", "support.py", "nodekit.py"} <= names
    assert FORBIDDEN["a process"].search("subprocess.run([sys.executable, '-m', 'harness.cli'])")
    assert FORBIDDEN["a temporary directory"].search("tempfile.mkdtemp(prefix='cb-obs-')")
    assert FORBIDDEN["a pin under the pin root"].search("bpffs.pin_path('x', 'hash_map')")
    assert FORBIDDEN_IN_MODULE["a namespace or cgroup"].search("with socket_lb_env(pin_dir=pins):")
    assert not _marked_beside_faults(TESTS / "test_observer_store.py")   # cb-obs- directories
