"""The gradients of ``x = M⁻¹ b`` with respect to the embeddings and λ, from the backward solve.

:meth:`~lowrank_gcrf.operators.GCRFOperator.vjp` solves ``g = M⁻¹ gx`` and hands ``x`` and
``g`` here: ``∂L/∂λ = −gᵀx`` per system, and ``∂L/∂U = −S Σᵢⱼ Cᵢⱼ [(U gᵢ) xⱼᵀ + (U xᵢ) gⱼᵀ]``
from the model's rows (l, r) (``_gradient_rows``) and signature S (``_embedding_signature``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .cg import inner
from .dtypes import cast_result, results_checked

if TYPE_CHECKING:
    from .operators import GCRFOperator


def embedding_and_lam_gradients(
    op: GCRFOperator, x_rows: Any, g: Any, scale: Any, output: Any
) -> tuple[Any, Any]:
    """``(∂L/∂U, ∂L/∂λ)`` in the embeddings' input dtype and ``output``.

    Parameters
    ----------
    op : GCRFOperator
        The operator that solved, in its compute dtype.
    x_rows : array (..., k, n)
        The solution in the row layout and the compute dtype.
    g : array (..., k, n)
        The backward solve's solution at unit scale: ``M⁻¹ gx = scale · g``.
    scale : array of the batch shape
    output : dtype
        The promoted dtype of the embeddings and x, that of ``∂L/∂λ``.

    Raises
    ------
    GCRFError
        A gradient overflows its dtype.
    """
    xp = op.xp
    left, right = op._gradient_rows(x_rows, g)
    with results_checked():
        # −[(U lᵀ) r + (U rᵀ) l] as one (D, 2m) @ (2m, n) product, with −scale folded
        # into the small factor, so that the only (D, n) array allocated is the result.
        small = op.U @ xp.matrix_transpose(xp.concat([left, right], axis=-2))
        small = op._embedding_signature(small * (-scale)[..., None, None])
        g_U = small @ xp.concat([right, left], axis=-2)
        g_lam = -inner(xp, g, x_rows) * scale
        return (
            cast_result(xp, g_U, op._input_dtype, f"the gradient of {op.embedding_name}"),
            cast_result(xp, g_lam, output, "the gradient of lam"),
        )
