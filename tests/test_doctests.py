"""The ``Examples`` sections of the public docstrings run, and every public function and
class has one.

The public names are those of the API reference: the ``__all__`` of ``lowrank_gcrf``,
``lowrank_gcrf.testing`` and both adapters, with the public methods of their classes. The
examples run as doctests here, so that the README's test command (``python -m pytest``)
checks them without ``--doctest-modules``.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import os
import re

import pytest

PUBLIC_MODULES = (
    "lowrank_gcrf",
    "lowrank_gcrf.testing",
    "lowrank_gcrf.adapters.torch",
    "lowrank_gcrf.adapters.tensorflow",
)
# Records of results or settings, documented by their attributes: nothing to run.
RECORDS = {"SolveInfo", "Factorization", "SolverOptions", "GCRFSystem"}
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE | doctest.IGNORE_EXCEPTION_DETAIL


def public_objects() -> list[tuple[str, object]]:
    """(qualified name, object) of every public function and class, in reference order."""
    objects = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isfunction(obj) or inspect.isclass(obj):
                objects.append((f"{module_name}.{name}", obj))
    return objects


PUBLIC = public_objects()


def has_examples(obj: object) -> bool:
    doc = inspect.cleandoc(getattr(obj, "__doc__", None) or "")
    return re.search(r"^Examples\n--------$", doc, re.MULTILINE) is not None


def needs_examples(name: str, obj: object) -> bool:
    if not (inspect.isfunction(obj) or inspect.isclass(obj)):
        return False
    if inspect.isclass(obj) and issubclass(obj, BaseException):
        return False  # errors are shown raised in the examples of the functions
    return name.rsplit(".", 1)[-1] not in RECORDS


@pytest.mark.parametrize(("name", "obj"), PUBLIC, ids=[name for name, _ in PUBLIC])
def test_public_docstring_has_examples(name: str, obj: object) -> None:
    if not needs_examples(name, obj):
        return
    # A class qualifies by its own docstring or by those of the methods it defines.
    members = [obj]
    if inspect.isclass(obj):
        members += [m for k, m in vars(obj).items() if not k.startswith("_") and callable(m)]
    assert any(has_examples(member) for member in members), (
        f"{name} has no Examples section in its docstring"
    )


@pytest.mark.parametrize(("name", "obj"), PUBLIC, ids=[name for name, _ in PUBLIC])
def test_docstring_examples_run(name: str, obj: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(os.environ, "TF_CPP_MIN_LOG_LEVEL", "2")
    # Methods of a class are found with it; names of other modules are excluded.
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests = [t for t in finder.find(obj, name, globs={}) if t.examples]
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    for test in tests:
        runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, f"{results.failed} of {results.attempted} examples of {name} failed"
