"""The layers hold: the engine (studio.core) and the session layer (studio.session) load no Qt, no
training code and no window code, whether a module is imported or one of its functions imports lazily."""
from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import studio

ROOT = Path(studio.__file__).resolve().parent
# package -> the top-level modules it must never load
FORBIDDEN = {
    "studio.core": ("PySide6", "studio.training", "studio.gui", "studio.session"),
    "studio.session": ("PySide6", "studio.training", "studio.gui"),
}


def modules_of(package: str) -> list[str]:
    path = ROOT.joinpath(*package.split(".")[1:])
    return [package] + [m.name for m in pkgutil.walk_packages([str(path)], prefix=package + ".")
                        if not m.name.rpartition(".")[2].startswith("_")]


def _is_forbidden(name: str, forbidden) -> bool:
    return any(name == f or name.startswith(f + ".") for f in forbidden)


IMPORT_EACH = """
import importlib, json, sys
forbidden = tuple(sys.argv[2].split(","))
bad = lambda: sorted(m for m in sys.modules if any(m == f or m.startswith(f + ".") for f in forbidden))
for name in sys.argv[1].split(","):
    importlib.import_module(name)
    if bad():
        print(json.dumps({"module": name, "loaded": bad()[:5]}))
        break
else:
    print(json.dumps({"module": None, "loaded": []}))
"""


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_importing_every_module_loads_nothing_of_the_layers_above(package):
    """Each module imported in turn in a fresh interpreter; after each, none of the forbidden
    packages may be in sys.modules (the first module that pulls one in is named)."""
    names = modules_of(package)
    assert len(names) > 5, names
    out = subprocess.run([sys.executable, "-c", IMPORT_EACH, ",".join(names), ",".join(FORBIDDEN[package])],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["module"] is None, f"importing {result['module']} loaded {result['loaded']}"


def _imports(path: Path, module: str):
    """Every module an import statement in ``path`` names (relative imports resolved), with its line."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target, node.lineno
            for a in node.names:  # `from .. import training` names a module too
                yield f"{target}.{a.name}", node.lineno


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_statement_reaches_the_layers_above(package):
    """Imports inside functions too (they run later, when the engine is used, not when it is imported)."""
    offenders = []
    for name in modules_of(package):
        rel = name.split(".")[1:]
        path = ROOT.joinpath(*rel)
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        for target, line in _imports(path, name):
            if _is_forbidden(target, FORBIDDEN[package]):
                offenders.append(f"{path.relative_to(ROOT.parent)}:{line} imports {target}")
    assert not offenders, offenders
