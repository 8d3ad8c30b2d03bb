"""The API reference's pages, written from each public module's ``__all__`` at build time.

Every public name gets an autosummary entry (and so a page generated from its docstring),
grouped by kind; a name added to ``__all__`` appears in the reference without editing the docs.
"""

from __future__ import annotations

import importlib
import inspect
import pathlib
import sys
from types import ModuleType

from sphinx.pycode import ModuleAnalyzer

KINDS = ("Functions", "Classes", "Exceptions and warnings", "Constants")

INDEX = """\
API reference
=============

Generated from the docstrings: every name in the ``__all__`` of the public modules below.
Arrays are NumPy or CuPy arrays (any array-API library for the core); shapes are written
``(..., D, N)`` with ``...`` the batch dimensions, and node order is label-major
(variable ``n = l·P + p``).

.. toctree::
   :maxdepth: 1

"""


def kind_of(obj: object) -> str:
    """The section of the reference a public object belongs to."""
    if inspect.isclass(obj) and issubclass(obj, BaseException):
        return "Exceptions and warnings"
    if inspect.isclass(obj):
        return "Classes"
    if callable(obj):
        return "Functions"
    return "Constants"


def constant_doc(module: ModuleType, name: str) -> list[str]:
    """The ``#:`` comment above the assignment of constant ``name`` in the package's modules
    (autosummary would show the docstring of the value's type instead)."""
    package = module.__name__.split(".")[0]
    for candidate in sorted(m for m in sys.modules if m.split(".")[0] == package):
        try:
            docs = ModuleAnalyzer.for_module(candidate).find_attr_docs()
        except Exception:  # compiled or source-less modules have no attribute comments
            continue
        if ("", name) in docs:
            return [line for line in docs[("", name)] if line]
    raise LookupError(f"public constant {module.__name__}.{name} has no #: doc comment")


def module_page(module: ModuleType) -> str:
    """reST of one module's page: its docstring, then an autosummary table per kind."""
    name = module.__name__
    title = f"``{name}``"
    groups: dict[str, list[str]] = {kind: [] for kind in KINDS}
    for public in module.__all__:
        groups[kind_of(getattr(module, public))].append(public)
    lines = [title, "=" * len(title), "", f".. automodule:: {name}", "   :no-members:", ""]
    lines += [f".. currentmodule:: {name}", ""]
    for kind, names in groups.items():
        if not names:
            continue
        lines += [kind, "-" * len(kind), ""]
        if kind == "Constants":
            for public in names:
                value = repr(getattr(module, public))
                lines += [f".. data:: {public}", f"   :value: {value}", ""]
                lines += [f"   {line}" for line in constant_doc(module, public)] + [""]
            continue
        lines += [".. autosummary::", "   :toctree: generated", ""]
        lines += [f"   {public}" for public in names]
        lines.append("")
    return "\n".join(lines)


def write_if_changed(path: pathlib.Path, text: str) -> None:
    """Write ``text`` unless the file already holds it (keeps incremental builds incremental)."""
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def write_api_pages(folder: pathlib.Path, module_names: tuple[str, ...]) -> None:
    """Write ``folder/index.rst`` and one page per module of ``module_names``."""
    folder.mkdir(exist_ok=True)
    index = INDEX
    for name in module_names:
        write_if_changed(folder / f"{name}.rst", module_page(importlib.import_module(name)))
        index += f"   {name}\n"
    write_if_changed(folder / "index.rst", index)
