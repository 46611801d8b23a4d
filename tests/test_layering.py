"""The package's structure, held by parsing its source (ast): layers, cycles, private names.

Import directions: a lower layer never imports a higher one. No import cycle between atml
modules, function-level imports included. No ``_private`` name of one atml module imported
or used by another module (the tests and benches included: they use public names only).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "atml"

# errors < config/storage/data/models/metrics/plots/records/device < train < trial/gate/onnx
# < search < dashboard/cli
LEVELS = {
    "errors": 0,
    "config": 1, "storage": 1, "data": 1, "models": 1, "metrics": 1, "plots": 1, "records": 1, "device": 1,
    "train": 2,
    "trial": 3, "gate": 3, "onnx": 3,
    "search": 4,
    "dashboard": 5, "cli": 5, "__main__": 6,
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in PKG.rglob("*.py")}


def _resolve(name: str) -> str | None:
    """The atml module an import names: ``atml.a.b`` itself, or the nearest enclosing module."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """``(imported module, names taken from it)`` for every import in the file, at any depth."""
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for a in node.names:
                sub = f"{base}.{a.name}"
                if sub in MODULES:  # `from atml.x import submodule`
                    out.append((sub, []))
                else:
                    out.append((base, [a.name]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
    return out


def _edges() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for mod, path in MODULES.items():
        for target, _ in _imports(path):
            t = _resolve(target) if target.startswith("atml") else None
            if t is not None and t != mod:
                graph[mod].add(t)
    return graph


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_module_has_a_layer():
    owners = {_layer(m) for m in MODULES} - {"__init__"}
    assert owners <= set(LEVELS), f"unclassified modules: {owners - set(LEVELS)}"


def test_lower_layers_never_import_higher_ones():
    bad = []
    for mod, targets in _edges().items():
        me = _layer(mod)
        if me == "__init__":
            continue
        for t in targets:
            other = _layer(t)
            if other == "__init__" or other == me:
                continue
            if LEVELS[other] > LEVELS[me]:
                bad.append(f"{mod} imports {t}")
            if {me, other} == {"data", "models"}:
                bad.append(f"{mod} -> {t}: data and models never import each other")
            if other in ("cli", "dashboard") and me not in ("cli", "__main__"):
                bad.append(f"{mod} imports {t}")
    assert not bad, "\n".join(sorted(bad))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                elif nxt in on:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_function_level_imports_included():
    cycles = _cycles(_edges())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def _private_uses(path: Path, me: str | None) -> list[str]:
    """Private names of an atml module that ``path`` imports or reads as an attribute."""
    bad = []
    aliases: dict[str, str] = {}  # local name -> atml module
    tree = ast.parse(path.read_text())
    for target, names in _imports(path) if me is not None else _imports_outside(tree):
        mod = _resolve(target) if target.startswith("atml") else None
        if mod is None or mod == me:
            continue
        for n in names:
            if n.startswith("_") and not n.startswith("__"):
                bad.append(f"{path.relative_to(ROOT)} imports {mod}.{n}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("atml"):
                    aliases[a.asname or a.name] = a.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("atml"):
            for a in node.names:
                if f"{node.module}.{a.name}" in MODULES:
                    aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            chain = []
            v: ast.AST = node.value
            while isinstance(v, ast.Attribute):
                chain.append(v.attr)
                v = v.value
            if isinstance(v, ast.Name) and v.id in aliases:
                mod = ".".join([aliases[v.id], *reversed(chain)])
                if _resolve(mod) not in (None, me):
                    bad.append(f"{path.relative_to(ROOT)} uses {mod}.{node.attr}")
    return bad


def _imports_outside(tree: ast.AST) -> list[tuple[str, list[str]]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out += [(node.module, [a.name]) for a in node.names]
    return out


def test_no_private_name_crosses_modules():
    bad = []
    for mod, path in MODULES.items():
        bad += _private_uses(path, mod)
    for folder in ("tests", "bench"):
        for path in (ROOT / folder).rglob("*.py"):
            bad += _private_uses(path, None)
    assert not bad, "\n".join(sorted(bad))


def test_package_import_is_light():
    code = "import atml, sys; print(sorted(m for m in ('torch', 'fastapi', 'optuna') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_no_module_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"modules over 400 lines: {long}"


OPTUNA_ADAPTER = PKG / "storage" / "optuna_internals.py"


def test_optuna_internals_only_in_the_adapter():
    """``FrozenTrial._trial_id`` and ``Study._storage`` have no public equivalent: one adapter uses them."""
    bad = []
    for path in [*PKG.rglob("*.py"), *(ROOT / "bench").rglob("*.py")]:
        if path == OPTUNA_ADAPTER:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("_trial_id", "_storage", "_study_id"):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} .{node.attr}")
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("optuna") and \
                    any(part.startswith("_") for part in node.module.split(".")):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {node.module}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "globals":
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} globals()")
    assert OPTUNA_ADAPTER.is_file()
    assert not bad, "\n".join(bad)
