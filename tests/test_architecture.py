"""The import graph of the tree (`wdsbr/`, `launch/`, `tools/`, `bench/`), read from the source with `ast`:
imports flow one way — scripts → orchestration → data → basics — with no circle, and no function-level import
inside the package that could hide one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The layers of docs/design.md, lowest first; a module may import its own layer or lower ones only.
LAYERS = {
    "basics": {"wdsbr", "wdsbr.text", "wdsbr.breton", "wdsbr.dist", "wdsbr.cli", "wdsbr.options"},
    "data": {
        "wdsbr.audio",
        "wdsbr.augment",
        "wdsbr.ali",
        "wdsbr.features",
        "wdsbr.collate",
        "wdsbr.corpus",
        "wdsbr.shards",
        "wdsbr.streams",
        "wdsbr.data",
        "wdsbr.eval_data",
        "wdsbr.model",
        "wdsbr.lora",
        "wdsbr.pretrained",
        "wdsbr.timestamps",
    },
    "orchestration": {
        "wdsbr.scoring",
        "wdsbr.evaluation",
        "wdsbr.engine",
        "wdsbr.training",
        "wdsbr.metrics",
        "wdsbr.longform",
        "wdsbr.report",
        "wdsbr.modelcard",
        "wdsbr.export",
        "wdsbr.transcribe",
        "wdsbr.lm",
        "wdsbr.ggml",
    },
}
ORDER = ["basics", "data", "orchestration", "scripts"]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer(module: str) -> str:
    if module.startswith("wdsbr.sources"):  # one module per corpus kind, behind wdsbr.corpus
        return "data"
    for name, members in LAYERS.items():
        if module in members:
            return name
    assert not module.startswith("wdsbr"), f"{module}: a new package module needs a layer in tests/test_architecture.py"
    return "scripts"


def sources() -> dict[str, Path]:
    files = [p for folder in ("wdsbr", "launch", "tools", "bench") for p in (ROOT / folder).rglob("*.py")]
    return {module_name(path): path for path in files}


def internal_imports(path: Path, modules: set[str]) -> list[tuple[str, int, bool]]:
    """(imported wdsbr module, line, at module level) for every import of the package in one file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top_level = {id(node) for node in tree.body} | {
        id(n)
        for node in tree.body
        if isinstance(node, ast.Try)
        for n in node.body + [h for hh in node.handlers for h in hh.body]
    }
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [
                f"{node.module}.{alias.name}" for alias in node.names if f"{node.module}.{alias.name}" in modules
            ]
        for name in names:
            if name == "wdsbr" or name.startswith("wdsbr."):
                found.append((name if name in modules else name.rsplit(".", 1)[0], node.lineno, id(node) in top_level))
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, dict[str, tuple[int, bool]]]:
    files = sources()
    modules = set(files)
    assert {"wdsbr.scoring", "wdsbr.training", "wdsbr.text", "launch.train"} <= modules
    return {
        name: {target: (line, top) for target, line, top in internal_imports(path, modules) if target != name}
        for name, path in files.items()
    }


def test_the_import_graph_has_no_circle(graph):
    state: dict[str, str] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for target in graph.get(module, {}):
            if state.get(target) == "open":
                circle = trail[trail.index(target) :] + [target] if target in trail else [module, target]
                pytest.fail("import circle: " + " -> ".join(circle))
            if target not in state:
                visit(target, trail + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_imports_flow_from_scripts_to_orchestration_to_data_to_basics(graph):
    upward = [
        f"{module} ({layer(module)}) imports {target} ({layer(target)}) at line {line}"
        for module, targets in graph.items()
        for target, (line, _) in targets.items()
        if ORDER.index(layer(target)) > ORDER.index(layer(module))
    ]
    assert upward == []


def test_the_package_imports_itself_only_at_module_level(graph):
    """A function-level import of another wdsbr module is how a circle hides: none inside the package."""
    hidden = [
        f"{module}:{line} imports {target} inside a function"
        for module, targets in graph.items()
        if module.startswith("wdsbr")
        for target, (line, top) in targets.items()
        if not top
    ]
    assert hidden == []


def test_text_and_the_breton_normaliser_are_leaves():
    """They run in every DataLoader worker: text imports nothing of the package, breton only text."""
    files = sources()
    modules = set(files)
    assert [t for t, _, _ in internal_imports(files["wdsbr.text"], modules)] == []
    assert {t for t, _, _ in internal_imports(files["wdsbr.breton"], modules)} == {"wdsbr.text"}
