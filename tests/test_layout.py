"""The tree's shape: imports flow one way (no circles; what decodes never
imports the training package) and the top level holds only what the product
card names."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "llmfs"
RUNTIME = ("llmfs.model", "llmfs.codec", "llmfs.store", "llmfs.fs")


def _name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the llmfs modules it imports anywhere (functions included)."""
    mods = {_name(p): p for p in PKG.rglob("*.py")}
    graph = {}
    for mod, path in mods.items():
        pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = pkg.split(".")[:len(pkg.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                deps |= {f"{target}.{a.name}" if f"{target}.{a.name}" in mods else target
                         for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
        graph[mod] = {d for d in deps if d in mods and d != mod}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(u: str) -> None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == 1:
                found.append(stack[stack.index(v):] + [v])
            elif v not in state:
                visit(v)
        stack.pop()
        state[u] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return found


def test_no_import_circles_but_the_cli_registering_its_commands():
    graph = import_graph()
    assert "llmfs.training.tune" in graph and "llmfs.model.engine" in graph
    # click's pattern: the group's package imports its command modules, which import the group
    assert [c for c in cycles(graph) if c[0] != "llmfs.cli"] == []


def test_what_decodes_never_imports_the_training_package():
    graph = import_graph()
    runtime = [m for m in graph if m.startswith(RUNTIME)]
    assert len(runtime) > 20
    assert {(m, d) for m in runtime for d in graph[m] if d.startswith("llmfs.training")} == set()
    code = ("import sys, llmfs.fs.operations, llmfs.codec.policy, llmfs.model.native, "
            "llmfs.compactor; bad = [m for m in sys.modules if m.startswith(('llmfs.training', "
            "'torch'))]; print(bad); sys.exit(bool(bad))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_top_level_holds_only_what_the_product_card_names():
    tracked = subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=ROOT,
                             check=True).stdout.split()
    top = {p.split("/")[0] for p in tracked}
    assert top <= {".ci", ".gitignore", "Makefile", "README.md", "bench", "configs", "docs",
                   "llmfs", "mount.py", "pyproject.toml", "systemd", "tests"}, top
