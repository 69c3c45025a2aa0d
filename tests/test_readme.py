"""The README's Python example runs as written."""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_example_runs(monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert blocks, "the README has no python example"
    monkeypatch.chdir(ROOT)
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    assert namespace["probabilities"].shape == (1, 3, 256, 256)
    assert namespace["nuclei"].max() > 0
    assert os.path.exists(ROOT / "data" / "sample" / "cmu-1-small-region.svs")
