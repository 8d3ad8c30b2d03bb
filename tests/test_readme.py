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
