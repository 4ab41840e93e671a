"""The package's imports run one way (README "Layout"): no cycle, no upward import, no private name
taken from another module, and retrieval/inference load with the training package blocked."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import simsearch

SRC = Path(simsearch.__file__).parent
# lower number = lower layer; a module may import its own layer and the ones below
LAYERS = {"utils": 0, "config": 0, "": 0, "data": 1, "models": 1, "evaluation": 2, "retrieval": 3,
          "training": 4, "inference": 5, "apps": 6, "benchmarks": 6, "commands": 7, "cli": 8}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names, line) for every import in the file, function-level ones included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            out.extend((a.name, [], node.lineno) for a in node.names)
    return [(m, n, line) for m, n, line in out if m == "simsearch" or m.startswith("simsearch.")]


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1] if len(parts) > 1 else ""]


MODULES = {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for mod, path in MODULES.items():
        for target, names, _ in _imports(path):
            # `from simsearch.models import checkpoint` imports the module simsearch.models.checkpoint
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            for t in subs or [target]:
                if t in MODULES and t != mod:
                    graph[mod].add(t)
    return graph


def test_every_module_has_a_known_layer() -> None:
    unknown = [m for m in MODULES if (m.split(".") + [""])[1] not in LAYERS]
    assert not unknown


def test_imports_never_go_up_a_layer() -> None:
    bad = []
    for mod, path in MODULES.items():
        for target, _, line in _imports(path):
            if _layer(target) > _layer(mod):
                bad.append(f"{path.relative_to(SRC)}:{line} imports {target}")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_no_private_name_is_imported_from_another_module() -> None:
    bad = [f"{path.relative_to(SRC)}:{line} takes {n} from {target}"
           for mod, path in MODULES.items() for target, names, line in _imports(path)
           for n in names if n.startswith("_") and n != "__version__"]
    assert not bad, "\n".join(bad)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle() -> None:
    # package __init__ files re-export their modules; only module-to-module edges count here
    graph = {m: {t for t in ts if not MODULES[t].name == "__init__.py"} for m, ts in _graph().items()}
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_planted_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("package", ["retrieval", "inference"])
def test_package_imports_with_the_training_package_blocked(package: str) -> None:
    mods = sorted(m for m in MODULES if m.startswith(f"simsearch.{package}."))
    code = ("import sys; sys.modules['simsearch.training'] = None\n"
            + "".join(f"import {m}\n" for m in mods)
            + "assert 'simsearch.training.engine' not in sys.modules\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]


def test_the_training_block_does_bite() -> None:
    code = "import sys; sys.modules['simsearch.training'] = None\nimport simsearch.training.engine\n"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "simsearch.training" in run.stderr
