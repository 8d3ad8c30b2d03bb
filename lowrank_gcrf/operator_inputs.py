"""What :class:`~lowrank_gcrf.operators.GCRFOperator`'s solves check before they start.

:meth:`~lowrank_gcrf.operators.GCRFOperator.solve` and
:meth:`~lowrank_gcrf.operators.GCRFOperator.vjp` take a factorization only from the
operator that made it (:func:`check_owner`), arrays only when they are finite, floating,
of the operator's array library and shaped for its batch (:func:`check_system_input`), and
solve in float64 where the input is float64 and the operator is not
(:func:`promoted_operator`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .dtypes import check_floating, dtype_name, floating_dtypes
from .errors import GCRFError
from .factorization import Factorization
from .validation import array_namespace, check_array, check_finite, check_system_shape

if TYPE_CHECKING:
    from .operators import GCRFOperator


def check_owner(op: GCRFOperator, factorization: Factorization | None) -> None:
    """Raise unless ``factorization`` is None or was made by ``op``."""
    if factorization is not None and factorization.owner is not op._token:
        raise GCRFError(
            "this factorization belongs to another operator: pass the one returned by "
            "this operator's factor() or in the info of its own solve"
        )


def check_system_input(op: GCRFOperator, v: Any, name: str) -> None:
    """Raise unless ``v`` is a finite floating array of the operator's array library
    (``array_namespace`` raises a GCRFTypeError for a foreign one), shaped like one
    right-hand side per system of the batch in the public layout."""
    check_array(v, name)
    array_namespace(op.U, v)
    check_floating(dtype_name(v.dtype), name)
    expected = op.batch_shape + op._public_system_shape()
    check_system_shape(tuple(v.shape), expected, name, op.rhs_layout)
    check_finite(op.xp, v, name)


def promoted_operator(op: GCRFOperator, v: Any) -> tuple[GCRFOperator, Any]:
    """``(operator, output dtype)`` for the checked input ``v``: ``op``, or its float64 twin
    when v is float64 and ``op`` is not; results come in the promoted dtype of the
    embeddings and v (:mod:`lowrank_gcrf.dtypes`)."""
    embeddings, lam = op._source
    compute, output = floating_dtypes(op.xp, **{op.embedding_name: embeddings, "v": v})
    if dtype_name(compute) == dtype_name(op.dtype):
        return op, output
    return op._rebuild(op.xp.astype(embeddings, op.xp.float64), lam), output
