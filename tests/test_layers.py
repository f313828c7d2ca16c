"""The dependency graph of the studio's packages, stated once (GRAPH) and checked two ways: every
import statement (those inside functions too: they run later, when the code is used) and what
importing each module actually loads, in a fresh interpreter. A violation names the file and line."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import studio
from _models import one_fast_case

ROOT = Path(studio.__file__).resolve().parent
# layer -> the layers it builds on; a layer may import those and everything they may import
GRAPH = {
    "studio.core": (),
    "studio.runtime": (),  # process-wide tuning (runtime.py), used from the session layer up
    "studio.checkpoints": ("studio.core",),  # single-file checkpoints read and identified
    "studio.data": ("studio.core",),  # the synthetic data sets
    "studio.session": ("studio.core", "studio.runtime", "studio.checkpoints"),
    "studio.evaluation": ("studio.session", "studio.data"),
    "studio.training": ("studio.evaluation",),
    "studio.sweep": ("studio.evaluation",),
    "studio.gui": ("studio.sweep",),
    "studio.cli": ("studio.sweep", "studio.gui", "studio.training"),
}
MEMBERS = {"studio.__main__": "studio.cli"}  # top-level modules that belong to a layer of another name
# third-party packages only a layer and those above it may load: nothing below gui loads Qt,
# nothing below sweep loads ray
OWNERS = {"PySide6": "studio.gui", "pyqtgraph": "studio.gui", "ray": "studio.sweep"}


def allowed(layer: str) -> set[str]:
    """``layer`` and every layer below it."""
    out, todo = {layer}, list(GRAPH[layer])
    while todo:
        below = todo.pop()
        if below not in out:
            out.add(below)
            todo.extend(GRAPH[below])
    return out


def layer_of(module: str):
    """The layer of a studio module; None for the ``studio`` package itself (its ``__version__``)."""
    for name, layer in MEMBERS.items():
        if module == name or module.startswith(name + "."):
            return layer
    return next((layer for layer in GRAPH if module == layer or module.startswith(layer + ".")), None)


def may_load(layer: str, module: str) -> bool:
    """Whether code of ``layer`` may import ``module`` (a studio module or a third-party one)."""
    top = module.split(".")[0]
    if top == "studio":
        target = layer_of(module)
        return target is None or target in allowed(layer)
    return top not in OWNERS or OWNERS[top] in allowed(layer)


def forbidden(layer: str) -> list[str]:
    """The top-level names ``layer`` may not load: the layers that are not below it, the third-party
    packages of layers that are not."""
    return sorted([g for g in GRAPH if g not in allowed(layer)] + [p for p, o in OWNERS.items()
                                                                   if o not in allowed(layer)])


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def files_of(layer: str) -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts
                  and layer_of(module_name(p)) == layer)


def test_every_package_and_module_of_the_studio_has_its_place_in_the_graph():
    """A new package (or top-level module) must be placed in GRAPH before it can be used."""
    unplaced = [str(p.relative_to(ROOT.parent)) for p in sorted(ROOT.rglob("*.py"))
                if "__pycache__" not in p.parts and p != ROOT / "__init__.py" and layer_of(module_name(p)) is None]
    assert not unplaced, f"in no layer of tests/test_layers.py's GRAPH: {unplaced}"
    assert all(set(below) <= set(GRAPH) for below in GRAPH.values())
    for layer in GRAPH:  # no cycles: nothing is below itself
        assert all(layer not in allowed(b) for b in GRAPH[layer]), layer


def test_the_graph_is_the_layering_the_studio_promises():
    """core < session < evaluation < sweep < {cli, gui}; training beside sweep, on evaluation and below."""
    assert forbidden("studio.core") == sorted(set(GRAPH) - {"studio.core"} | set(OWNERS))
    assert allowed("studio.session") == {"studio.session", "studio.core", "studio.runtime", "studio.checkpoints"}
    assert allowed("studio.training") == {"studio.training", "studio.evaluation", "studio.session", "studio.data",
                                          "studio.core", "studio.runtime", "studio.checkpoints"}
    assert "studio.training" not in allowed("studio.sweep") and "studio.sweep" not in allowed("studio.training")
    assert "studio.training" not in allowed("studio.gui")
    assert {"studio.sweep", "studio.gui", "studio.training"} <= allowed("studio.cli")
    assert [layer for layer in GRAPH if not may_load(layer, "PySide6")] == [
        layer for layer in GRAPH if layer not in ("studio.gui", "studio.cli")]
    assert [layer for layer in GRAPH if may_load(layer, "ray")] == ["studio.sweep", "studio.gui", "studio.cli"]


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


@pytest.mark.parametrize("layer", list(GRAPH))
def test_no_import_statement_reaches_a_layer_above(layer):
    files = files_of(layer)
    assert files, layer
    offenders = [f"{path.relative_to(ROOT.parent)}:{line} imports {target}"
                 for path in files for target, line in _imports(path, module_name(path))
                 if not may_load(layer, target)]
    assert not offenders, f"{layer} may import only {sorted(allowed(layer))}: {offenders}"


# Imports each module in turn; a finder first on sys.meta_path notes, for each forbidden module
# loaded, the innermost studio file:line whose import statement brought it in.
IMPORT_EACH = """
import importlib, json, sys, traceback
modules, forbidden, root = sys.argv[1].split(","), tuple(sys.argv[2].split(",")), sys.argv[3]
culprits = {}

class Watch:
    def find_spec(self, name, path=None, target=None):
        if name not in culprits and any(name == f or name.startswith(f + ".") for f in forbidden):
            frames = [f for f in traceback.extract_stack() if f.filename.startswith(root)]
            culprits[name] = f"studio/{frames[-1].filename[len(root):]}:{frames[-1].lineno}" if frames else "?"
        return None

sys.meta_path.insert(0, Watch())
for name in modules:
    importlib.import_module(name)
    bad = sorted(m for m in sys.modules if any(m == f or m.startswith(f + ".") for f in forbidden))
    if bad:
        print(json.dumps({"module": name, "loaded": bad[:5], "by": [culprits.get(m, "?") for m in bad[:5]]}))
        break
else:
    print(json.dumps({"module": None}))
"""


@pytest.mark.parametrize("layer", one_fast_case([layer for layer in GRAPH if forbidden(layer)]))
def test_importing_every_module_loads_nothing_of_the_layers_above(layer):
    """Each module of the layer imported in turn in a fresh interpreter (``__main__`` modules, which
    run the application, excepted); after each, no forbidden package may be in sys.modules."""
    names = [module_name(p) for p in files_of(layer) if p.stem != "__main__"]
    assert names, layer
    out = subprocess.run([sys.executable, "-c", IMPORT_EACH, ",".join(names), ",".join(forbidden(layer)),
                          str(ROOT) + "/"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["module"] is None, (f"importing {result['module']} loaded "
                                      + ", ".join(f"{m} ({by})" for m, by in zip(result["loaded"], result["by"])))
