"""Import directions: a lower layer never imports a higher one (parsed with ast)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "atml"

# errors < space/storage/data/models/metrics/plots < train < objective/gate/export
# < worker/search < dashboard/cli
LEVELS = {
    "errors": 0,
    "config": 1, "storage": 1, "data": 1, "models": 1, "metrics": 1, "plots": 1, "records": 1,
    "train": 2,
    "trial": 3, "gate": 3, "onnx": 3,
    "search": 4,
    "dashboard": 5, "cli": 5, "__main__": 6,
}


def _top(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "atml" and len(parts) > 1 else None


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.append(node.module)
            if node.module == "atml":
                out += [f"atml.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names]
    return out


def _owner(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0].removesuffix(".py")


def test_every_module_has_a_layer():
    owners = {_owner(p) for p in PKG.rglob("*.py") if p.name != "__init__.py" or p.parent != PKG}
    assert owners <= set(LEVELS), f"unclassified modules: {owners - set(LEVELS)}"


def test_lower_layers_never_import_higher_ones():
    bad = []
    for path in PKG.rglob("*.py"):
        if path.parent == PKG and path.name == "__init__.py":
            continue
        me = _owner(path)
        for mod in _imports(path):
            other = _top(mod)
            if other is None or other == me or other not in LEVELS:
                continue
            if LEVELS[other] > LEVELS[me]:
                bad.append(f"{path.relative_to(PKG)} imports atml.{other}")
            if {me, other} == {"data", "models"}:
                bad.append(f"{path.relative_to(PKG)}: data and models never import each other")
            if other in ("cli", "dashboard") and me not in ("cli", "__main__"):
                bad.append(f"{path.relative_to(PKG)} imports {other}")
    assert not bad, "\n".join(bad)


def test_package_import_is_light():
    import subprocess
    import sys

    code = "import atml, sys; print(sorted(m for m in ('torch', 'fastapi', 'optuna') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
