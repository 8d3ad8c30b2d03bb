"""The code on the documentation's pages runs and prints what the pages say it prints.

Every ```python block of the getting-started page and of the user guide runs, the blocks of
one page in order in one namespace (as a reader would run them). Blocks that need a GPU or
several processes are written as ```{code-block} python and are not run here. Where a line
ends in a comment stating its output (``print(...)  # True``), the printed line must start
with that output.
"""

from __future__ import annotations

import contextlib
import io
import os
import pathlib
import re

import pytest

DOCS = pathlib.Path(__file__).resolve().parent.parent / "docs"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
PAGES = [
    page
    for page in sorted([DOCS / "getting-started.md", *(DOCS / "guide").glob("*.md")])
    if BLOCK.search(page.read_text(encoding="utf-8"))
]
# print(...)  # expected output [explanation after a colon]
STATED_OUTPUT = re.compile(r"^print\(.*\)\s+#\s*([^:]+?)(?::.*)?$")


def stated_outputs(code: str) -> list[str]:
    """The outputs the comments of a block's top-level print lines state, in order."""
    outputs = []
    for line in code.splitlines():
        match = STATED_OUTPUT.match(line)
        if match:
            outputs.append(match.group(1).split(" (")[0].strip())
    return outputs


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_page_code_runs(page: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = BLOCK.findall(page.read_text(encoding="utf-8"))
    monkeypatch.chdir(page.parent)
    monkeypatch.setitem(os.environ, "MPLBACKEND", "Agg")
    namespace: dict = {"__name__": "__docs__"}
    for code in blocks:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(code, str(page), "exec"), namespace)
        printed = out.getvalue().splitlines()
        for expected in stated_outputs(code):
            assert any(line.startswith(expected) for line in printed), (
                f"{page.name}: expected a line starting with {expected!r}, got {printed}"
            )
