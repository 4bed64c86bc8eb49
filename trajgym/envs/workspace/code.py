"""Code families: fix a bug so the tests pass, rename a function without breaking anything.

Projects are assembled from the small functions of ``functions.yaml``: a module of three,
its unit tests (the visible cases), and the verifier's tests (visible and hidden cases).
"""

from __future__ import annotations

import functools
import textwrap
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

from trajgym.envs.goals import act
from trajgym.envs.workspace.project import Check, Draw, Project
from trajgym.records.schema import Intent

MODULES = ("textutils", "mathutils", "helpers", "core", "calc", "numbers", "shared", "misc")
_RENAME_PREFIXES = ("compute_", "get_", "calc_", "do_", "find_")
RUN_TESTS = "run_tests"


@dataclass(frozen=True)
class Function:
    """A catalog function: its source, its bugs and its test cases."""

    name: str
    source: str
    bugs: tuple[tuple[str, str], ...]
    visible: tuple[tuple[list[Any], Any], ...]
    hidden: tuple[tuple[list[Any], Any], ...]
    ood: bool = False

    def buggy(self, index: int) -> str:
        """The source with bug ``index`` in it."""
        old, new = self.bugs[index]
        return self.source.replace(old, new, 1)


@functools.cache
def catalog() -> dict[str, Function]:
    """Every catalog function, each bug checked to break a visible case."""
    raw = yaml.safe_load(resources.files(__package__).joinpath("functions.yaml").read_text())
    functions = {}
    for name, entry in raw.items():
        f = Function(
            name=name,
            source=entry["source"],
            bugs=tuple((old, new) for old, new in entry["bugs"]),
            visible=tuple((args, expected) for args, expected in entry["visible"]),
            hidden=tuple((args, expected) for args, expected in entry["hidden"]),
            ood=entry.get("ood", False),
        )
        _check_catalog_entry(f)
        functions[name] = f
    return functions


def _check_catalog_entry(f: Function) -> None:
    """The source passes every case and each bug fails a visible one: a catalog error is ours."""
    cases = f.visible + f.hidden
    if not _passes(f.source, f.name, cases):
        raise ValueError(f"functions.yaml: '{f.name}' fails its own cases")
    for i, (old, _) in enumerate(f.bugs):
        if f.source.count(old) != 1 or _passes(f.buggy(i), f.name, f.visible):
            raise ValueError(f"functions.yaml: bug {i} of '{f.name}' is not a visible bug")


def _passes(source: str, name: str, cases: tuple[tuple[list[Any], Any], ...]) -> bool:
    namespace: dict[str, Any] = {}
    exec(source, namespace)  # our own catalog, never model output
    try:
        return all(_same(namespace[name](*args), expected) for args, expected in cases)
    except Exception:
        return False


def _same(result: Any, expected: Any) -> bool:
    if isinstance(expected, float) and isinstance(result, int | float):
        return abs(result - expected) < 1e-6
    return bool(result == expected) and type(result) is type(expected)


def _module_source(functions: list[Function], override: dict[str, str] | None = None) -> str:
    override = override or {}
    return "\n\n".join(override.get(f.name, f.source) for f in functions)


Cases = tuple[tuple[list[Any], Any], ...]


def _test_module(
    module: str, calls: list[tuple[str, Cases]], imports: str = "", extra: str = ""
) -> str:
    """A unittest module: one test method per (function name, cases), then ``extra``."""
    names = ", ".join(sorted(name for name, _ in calls))
    lines = ["import unittest", "", f"from src.{module} import {names}", imports, ""]
    lines += ["class TestFunctions(unittest.TestCase):"]
    for name, cases in calls:
        lines += [
            f"    def test_{name}(self):",
            f"        for args, expected in {[list(c) for c in cases]!r}:",
            "            with self.subTest(args=args):",
            f"                result = {name}(*args)",
            "                if isinstance(expected, float):",
            "                    self.assertAlmostEqual(result, expected, places=6)",
            "                else:",
            "                    self.assertEqual(result, expected)",
            "",
        ]
    body = "\n".join(lines).rstrip() + "\n" + extra
    return body + "\n\nif __name__ == '__main__':\n    unittest.main()\n"


def _pick_functions(d: Draw) -> list[Function]:
    return [catalog()[n] for n in sorted(d.rng.sample(d.functions, 3))]


def fix_bug(d: Draw) -> tuple[Intent, Project] | None:
    """The project's tests fail because of one bug in a module; fix the code, not the tests."""
    functions, module = _pick_functions(d), d.rng.choice(MODULES)
    broken, bug = d.rng.choice(functions), d.rng.randrange(2)
    if not d.in_split(f"fix_bug|{module}|{[f.name for f in functions]}|{broken.name}|{bug}"):
        return None
    src, test = f"src/{module}.py", f"tests/test_{module}.py"
    buggy = _module_source(functions, {broken.name: broken.buggy(bug)})
    visible = _test_module(module, [(f.name, f.visible) for f in functions])
    hidden = _test_module(module, [(f.name, f.hidden) for f in functions])
    files = {src: buggy, test: visible, "tests/__init__.py": "", "README.md": _readme(module)}
    check = Check(
        kind="tests",
        restore={test: visible},
        files={"_verify/test_visible.py": visible, "_verify/test_hidden.py": hidden},
    )
    actions = [
        act(RUN_TESTS),
        act("read_file", path=src),
        act("write_file", path=src, content=_module_source(functions)),
        act(RUN_TESTS),
    ]
    slots = {"path": src, "tests": test, "function": broken.name}
    return d.intent("fix_bug", slots, actions), Project(files, (check,))


def rename_function(d: Draw) -> tuple[Intent, Project] | None:
    """Rename a function used by another module; every use follows and the tests still pass."""
    functions, module = _pick_functions(d), d.rng.choice(MODULES)
    target = d.rng.choice(functions)
    new = d.rng.choice(_RENAME_PREFIXES) + target.name
    # The split is decided by the starting project alone, so no split sees another's files.
    if not d.in_split(f"rename|{module}|{[f.name for f in functions]}|{target.name}"):
        return None
    src, test, report = f"src/{module}.py", f"tests/test_{module}.py", "src/report.py"
    others = [f for f in functions if f is not target]
    visible = _test_module(
        module,
        [(f.name, f.visible) for f in others],
        imports="from src.report import apply_all\n",
        extra=_apply_all_test(target),
    )
    renamed = _module_source(functions, {target.name: _rename(target.source, target.name, new)})
    hidden = _test_module(
        module,
        [(new, target.visible + target.hidden)],
        extra=_old_name_gone_test(module, target.name),
    )
    files = {
        src: _module_source(functions),
        report: _report_source(module, target.name),
        test: visible,
        "tests/__init__.py": "",
        "README.md": _readme(module),
    }
    check = Check(
        kind="tests",
        restore={test: visible},
        files={"_verify/test_visible.py": visible, "_verify/test_renamed.py": hidden},
    )
    actions = [
        act("read_file", path=src),
        act("read_file", path=report),
        act("write_file", path=src, content=renamed),
        act("write_file", path=report, content=_report_source(module, new)),
        act(RUN_TESTS),
    ]
    slots = {"path": src, "old": target.name, "new": new, "caller": report}
    return d.intent("rename_function", slots, actions), Project(files, (check,))


def _rename(source: str, old: str, new: str) -> str:
    return source.replace(f"def {old}(", f"def {new}(", 1)


def _report_source(module: str, name: str) -> str:
    return (
        f"from src.{module} import {name}\n\n\n"
        "def apply_all(cases):\n"
        f'    """Apply {name} to each argument list of cases."""\n'
        f"    return [{name}(*args) for args in cases]\n"
    )


def _apply_all_test(target: Function) -> str:
    cases = [args for args, _ in target.visible]
    expected = [e for _, e in target.visible]
    body = f"""
    class TestReport(unittest.TestCase):
        def test_apply_all(self):
            for result, expected in zip(apply_all({cases!r}), {expected!r}):
                if isinstance(expected, float):
                    self.assertAlmostEqual(result, expected, places=6)
                else:
                    self.assertEqual(result, expected)
    """
    return "\n" + textwrap.dedent(body)


def _old_name_gone_test(module: str, old: str) -> str:
    # Identifiers only: a docstring may still use the word ("the arithmetic mean").
    body = f"""
    class TestOldNameGone(unittest.TestCase):
        def test_old_name_gone(self):
            import ast
            import importlib
            import pathlib

            self.assertFalse(hasattr(importlib.import_module("src.{module}"), "{old}"))
            for path in pathlib.Path("src").rglob("*.py"):
                names = set()
                for node in ast.walk(ast.parse(path.read_text())):
                    if isinstance(node, ast.Name):
                        names.add(node.id)
                    elif isinstance(node, ast.FunctionDef | ast.alias):
                        names.add(node.name)
                    elif isinstance(node, ast.Attribute):
                        names.add(node.attr)
                self.assertNotIn("{old}", names, str(path))
    """
    return "\n" + textwrap.dedent(body)


def _readme(module: str) -> str:
    return (
        f"# {module}\n\nSmall helper functions in `src/{module}.py`.\n\n"
        "Run the tests with `python3 -m unittest discover -s tests -t .`\n"
    )
