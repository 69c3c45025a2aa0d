"""Run every ```python block of docs/theory.md, each on its own."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

THEORY = Path(__file__).resolve().parents[1] / "docs" / "theory.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks() -> list[str]:
    return BLOCK.findall(THEORY.read_text(encoding="utf-8"))


def test_theory_has_examples():
    assert len(python_blocks()) >= 8


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_theory_example_runs(index, capsys):
    source = python_blocks()[index]
    code = compile(source, f"{THEORY.name}[block {index}]", "exec")
    exec(code, {"__name__": f"theory_block_{index}"})
