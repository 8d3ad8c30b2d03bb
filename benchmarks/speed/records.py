"""Queries over the speed benchmark's records.

:func:`benchmarks.speed.runner.run` returns one record (a JSON-ready dict) per case,
contender and phase: the case's fields (``model``, ``pixels``, ``labels``, ``rank``,
``kappa``, ``dtype``, ``batch``, ``suites``), ``contender``, ``phase``, ``status`` and, when
measured, ``time_s``, ``min_s``, ``iterations``, ``residual``, ``grad_error`` and
``peak_bytes``. The report selects from them with these functions.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

Record = dict[str, Any]


def select(records: Iterable[Record], **fields: Any) -> list[Record]:
    """The records matching ``fields``; ``suite=`` matches any of a record's suites."""
    suite = fields.pop("suite", None)
    return [
        r
        for r in records
        if (suite is None or suite in r["suites"]) and all(r.get(k) == v for k, v in fields.items())
    ]


def one(records: Iterable[Record], **fields: Any) -> Record | None:
    """The first measured (ok or unconverged) record matching ``fields``, if any."""
    found = [r for r in select(records, **fields) if r["status"] in ("ok", "unconverged")]
    return found[0] if found else None


def value(record: Record | None, key: str) -> float | None:
    """``record[key]``, ``None`` when there is no record or no such value."""
    return None if record is None else record.get(key)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, ``None`` when either is missing (or the denominator 0)."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator
