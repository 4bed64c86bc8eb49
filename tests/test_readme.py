"""The README's Python examples: ```python blocks run as written, ```py blocks compile.

A ```py block needs what a test cannot start in a moment (a server to connect to, a long
training run); each is exercised by its integration's tests (tests/test_integration_*.py).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

README = Path(__file__).parents[1] / "README.md"


def test_readme_python_example_runs(capfd) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
    assert "reward" not in capfd.readouterr().err


def test_readme_snippets_compile() -> None:
    blocks = re.findall(r"```py\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 3
    for block in blocks:
        ast.parse(block, "README.md")
