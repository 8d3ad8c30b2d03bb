"""Solver options, validated once for the core and both adapters.

:func:`solver_options` turns the keywords every solve takes (``method``, ``rtol``, ``atol``,
``maxiter``, ``on_failure``) into a frozen :class:`SolverOptions`, or raises a
:class:`~lowrank_gcrf.errors.GCRFError` that names the keyword and what it accepts. The
adapters call it when a layer is built, so that a bad value is reported there and not at the
first batch.

``on_failure`` follows NumPy's ``errstate`` vocabulary: ``"raise"`` (a
:class:`~lowrank_gcrf.errors.ConvergenceError`), ``"warn"`` (a
:class:`~lowrank_gcrf.errors.ConvergenceWarning` and the best iterate) or ``"ignore"`` (the
best iterate; ``info.converged`` tells which systems missed).
"""

from __future__ import annotations

import math
import numbers
import operator
from dataclasses import asdict, dataclass
from typing import Any

from .errors import GCRFError, GCRFTypeError

METHODS = ("auto", "cg", "direct")
FAILURE_POLICIES = ("raise", "warn", "ignore")


@dataclass(frozen=True)
class SolverOptions:
    """Validated solver keywords (see :func:`solver_options`)."""

    method: str = "auto"
    rtol: float = 1e-5
    atol: float = 0.0
    maxiter: int | None = None
    on_failure: str = "raise"

    def as_kwargs(self) -> dict[str, Any]:
        """The options as keyword arguments of :func:`lowrank_gcrf.solve`."""
        return asdict(self)


#: The keyword names every solve accepts.
SOLVER_KEYWORDS = tuple(SolverOptions.__dataclass_fields__)


def solver_options(
    *,
    method: Any = "auto",
    rtol: Any = 1e-5,
    atol: Any = 0.0,
    maxiter: Any = None,
    on_failure: Any = "raise",
) -> SolverOptions:
    """Validate the solver keywords.

    Parameters
    ----------
    method : {"auto", "cg", "direct"}
    rtol, atol : real numbers ≥ 0, finite, not both zero
        A system has converged when ``‖b − Mx‖ ≤ max(rtol·‖b‖, atol)``.
    maxiter : int ≥ 0 or None
    on_failure : {"raise", "warn", "ignore"}

    Returns
    -------
    SolverOptions

    Raises
    ------
    GCRFError
        A value out of range; :class:`GCRFTypeError` for a value of the wrong type.

    Examples
    --------
    >>> import lowrank_gcrf as lg
    >>> lg.solver_options(method="cg", rtol=1e-6).as_kwargs()["rtol"]
    1e-06
    >>> lg.solver_options(method="lu")
    Traceback (most recent call last):
        ...
    lowrank_gcrf.errors.GCRFError: method must be one of ...
    """
    _choice("method", method, METHODS)
    _choice("on_failure", on_failure, FAILURE_POLICIES)
    rtol, atol = _tolerance("rtol", rtol), _tolerance("atol", atol)
    if rtol == 0 and atol == 0:
        raise GCRFError(
            "need rtol ≥ 0 and atol ≥ 0, not both zero (no floating-point solve can reach a "
            f"zero residual); got rtol={rtol!r}, atol={atol!r}"
        )
    return SolverOptions(method, rtol, atol, _maxiter(maxiter), on_failure)


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise GCRFError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def _tolerance(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise GCRFTypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not (math.isfinite(value) and value >= 0):
        raise GCRFError(f"need rtol ≥ 0 and atol ≥ 0, both finite; got {name}={value!r}")
    return value


def _maxiter(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise GCRFTypeError("maxiter must be an integer or None, got bool")
    try:
        count = operator.index(value)
    except TypeError:
        raise GCRFTypeError(
            f"maxiter must be an integer or None, got {type(value).__name__} {value!r}"
        ) from None
    if count < 0:
        raise GCRFError(f"maxiter must be ≥ 0, got {count}")
    return count
