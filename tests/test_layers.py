"""Imports run one way (docs/development.md, "Layers"): leaf modules, then codec and optim, then
train and eval, then the entrypoints. Every module's imports are parsed (those inside functions
too); an import of a higher layer, of a sibling (codec <-> optim, train <-> eval), or any
file-level cycle fails, naming the file and line."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Units and their layer; a module may import its own unit or a lower layer, nothing else.
LAYERS = {"leaf": 0, "codec": 1, "optim": 1, "train": 2, "eval": 2, "entry": 3}
LEAVES = ("hpcm", "hpcm.configs", "hpcm.files", "hpcm.metrics", "hpcm.device", "hpcm.run_layout")
# hpcm.train.curve_search is the train command's lambda-curve trial: runs scored by BD-rate.
ENTRYPOINTS = (
    "train",
    "evaluate",
    "bdrate",
    "hpcm.plot",
    "hpcm.train.cli",
    "hpcm.train.curve_search",
)


def unit_of(module: str) -> str:
    """The unit a module belongs to (an unknown module fails: every file must have a place)."""
    if module in ENTRYPOINTS or module.endswith(".__main__"):
        return "entry"
    if module in LEAVES:
        return "leaf"
    parts = module.split(".")
    if len(parts) >= 2 and parts[0] == "hpcm" and parts[1] in LAYERS:
        return parts[1]
    raise AssertionError(f"{module}: in no layer; give it one in tests/test_layers.py")


def modules(root: Path) -> dict[str, Path]:
    """Module name -> file of the package ``hpcm`` and the top-level scripts under ``root``."""
    found = {p.stem: p for p in root.glob("*.py")}
    for path in (root / "hpcm").rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(module: str, path: Path, known: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """(imported project module, line) for every import in the file, at any depth."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            # `from PACKAGE import name` imports the submodule PACKAGE.name when there is one.
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        else:
            continue
        for target in targets:
            if target in known:
                yield target, node.lineno


def graph(root: Path) -> tuple[dict[str, set[str]], list[str]]:
    """The import graph of the project under ``root`` and its layer violations."""
    known = modules(root)
    edges: dict[str, set[str]] = {m: set() for m in known}
    wrong = []
    for module, path in sorted(known.items()):
        here = unit_of(module)
        for target, line in imports(module, path, known):
            if target == module:
                continue
            edges[module].add(target)
            there = unit_of(target)
            if there != here and LAYERS[there] >= LAYERS[here]:
                where = path.relative_to(root)
                wrong.append(f"{where}:{line}: {module} ({here}) imports {target} ({there})")
    return edges, wrong


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_imports_run_one_way() -> None:
    edges, wrong = graph(ROOT)
    assert {"hpcm.codec.model", "hpcm.train.loop", "hpcm.eval.evaluate", "train"} <= set(edges)
    assert not wrong, "upward or sibling imports:\n" + "\n".join(wrong)


def test_no_module_cycles() -> None:
    edges, _ = graph(ROOT)
    assert not cycles(edges), f"import cycles: {cycles(edges)}"


def test_the_checks_catch_an_upward_import_and_a_cycle(tmp_path: Path) -> None:
    files = {
        "train.py": "from hpcm.train.cli import main\n",
        "hpcm/__init__.py": "",
        "hpcm/files.py": "",
        "hpcm/codec/__init__.py": "",
        "hpcm/codec/model.py": "from hpcm.files import x\n",
        "hpcm/codec/checkpoint.py": "from . import model\n",
        "hpcm/train/__init__.py": "",
        "hpcm/train/cli.py": "from hpcm.train import loop\n",
        "hpcm/train/loop.py": "from hpcm.train import state\n",
        "hpcm/train/state.py": "def f():\n    from hpcm.train.loop import Trainer\n",
        "hpcm/eval/__init__.py": "",
        "hpcm/eval/evaluate.py": "import hpcm.codec.checkpoint\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    edges, wrong = graph(tmp_path)
    assert not wrong and cycles(edges) == [["hpcm.train.loop", "hpcm.train.state"]]
    assert edges["hpcm.codec.checkpoint"] == {"hpcm.codec.model"}  # relative import resolved
    (tmp_path / "hpcm/codec/model.py").write_text("x = 1\n\ndef f():\n    import hpcm.optim\n")
    (tmp_path / "hpcm/optim/__init__.py").parent.mkdir()
    (tmp_path / "hpcm/optim/__init__.py").write_text("")
    (tmp_path / "hpcm/eval/plots.py").write_text("from hpcm.train import state\n")
    _, wrong = graph(tmp_path)
    assert wrong == [
        "hpcm/codec/model.py:4: hpcm.codec.model (codec) imports hpcm.optim (optim)",
        "hpcm/eval/plots.py:1: hpcm.eval.plots (eval) imports hpcm.train.state (train)",
    ]
