"""The architecture as a test: each layer imports only those beneath it, and nothing circles.

The layers, bottom up, are STYLE.md's: a module may import its own layer and the ones below
it. Every import counts, also those inside functions (they are still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

import trajgym

ROOT = Path(trajgym.__file__).parent
LAYERS = [
    ["errors", "config"],
    ["records"],
    ["llm"],
    ["tools"],
    ["envs"],
    ["agents"],
    ["judges"],
    ["rollouts"],
    ["testing"],
    ["train"],
    ["integrations"],
    ["experiments"],
    ["views"],
    ["cli", "__main__"],
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The trajgym modules a file imports (``from a import b`` counts ``a.b`` if a module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("trajgym")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("trajgym"):
            assert node.module is not None
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
    return found


MODULES = {module_name(p): p for p in ROOT.rglob("*.py")}


def layer(module: str) -> int | None:
    parts = module.split(".")
    return RANK.get(parts[1]) if len(parts) > 1 else None


def test_every_top_level_module_has_a_layer() -> None:
    tops = {m.split(".")[1] for m in MODULES if m.count(".")}
    assert tops <= set(RANK), f"modules with no layer: {sorted(tops - set(RANK))}"


def test_no_import_runs_up_a_layer() -> None:
    upward = []
    for module, path in MODULES.items():
        own = layer(module)
        for target in imports(path):
            theirs = layer(target)
            if own is not None and theirs is not None and theirs > own:
                upward.append(f"{module} -> {target}")
    assert upward == []


def test_no_import_circle() -> None:
    graph = {m: {t for t in imports(p) if t in MODULES and t != m} for m, p in MODULES.items()}
    # A package's __init__ importing its own submodules is how it shows its face, not a
    # circle: a submodule importing the package's __init__ back would be.
    state: dict[str, int] = {}
    circles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    assert circles == []
