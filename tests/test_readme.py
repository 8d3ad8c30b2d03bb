"""The README's NumPy example runs as written (adapter snippets are tested with adapters)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_numpy_example_runs(capsys):
    example = python_blocks()[0]
    assert "import lowrank_gcrf as lg" in example
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    assert namespace["x"].shape == namespace["b"].shape
    assert namespace["x_potts"].shape == (namespace["L"], namespace["P"])
    assert "direct" in capsys.readouterr().out


def test_refine_example_runs():
    (example,) = [b for b in python_blocks() if "from lowrank_gcrf import refine" in b]
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    refined, probs = namespace["refined"], namespace["probs"]
    assert refined.shape == probs.shape
    assert abs(float(refined.sum(axis=0).mean()) - 1.0) < 1e-6
    assert namespace["labels"].shape == probs.shape[1:]
