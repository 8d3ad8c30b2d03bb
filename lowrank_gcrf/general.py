"""The general dense G-CRF operator ``M = AᵀA + λI`` (Eq. 4–5)."""

from __future__ import annotations

from typing import Any

from .capacitance import CapacitanceSystem, row_sum_bound
from .errors import IndefiniteSystemError
from .factorization import Factorization
from .method import capacitance_gram_pays
from .operators import GCRFOperator
from .woodbury import ShiftedLowRankInverse, small_gram, working_gram


class GeneralOperator(GCRFOperator):
    """``M = AᵀA + λI`` (Eq. 5), matvec ``Aᵀ(Ap) + λp`` (Eq. 13).

    Positive definite for every λ > 0. Immutable: build a new operator for new embeddings.

    Parameters
    ----------
    A : array (..., D, N)
        Embeddings of the N = P·L variables, label-major (n = l·P + p).
    lam : float or array of the batch shape (...,)
        λ > 0.

    Vectors (b, x) have shape (..., N).

    Examples
    --------
    >>> import numpy as np
    >>> import lowrank_gcrf as lg
    >>> rng = np.random.default_rng(0)
    >>> op = lg.GeneralOperator(rng.standard_normal((2, 4, 30)) / 4, 1.0)   # a batch of 2
    >>> op.batch_shape, op.rank
    ((2,), 4)
    >>> x, info = op.solve(rng.standard_normal((2, 30)))
    >>> x.shape, info.residual.shape
    ((2, 30), (2,))
    """

    embedding_name = "A"
    rhs_layout = "(..., N) with A of shape (..., D, N)"

    def __init__(self, A: Any, lam: Any):
        super().__init__(A, lam, num_rows=1)

    def _rebuild(self, embeddings: Any, lam: Any) -> GeneralOperator:
        return GeneralOperator(embeddings, lam)

    def _public_system_shape(self) -> tuple[int, ...]:
        return (int(self.U.shape[-1]),)

    def _to_rows(self, v: Any) -> Any:
        return v[..., None, :]

    def _from_rows(self, v: Any) -> Any:
        return v[..., 0, :]

    def _couple(self, Q: Any) -> Any:
        return Q

    def matvec(self, v: Any) -> Any:
        """``M v = Aᵀ(A v) + λv`` (Eq. 13) for v of shape (..., 1, N), never forming M.

        ``A v`` as ``A @ vᵀ`` runs along A's contiguous rows (a matrix-vector product),
        measurably faster at the paper's size than the row-vector product ``v @ Aᵀ``.
        """
        xp = self.xp
        Av = self.U @ xp.matrix_transpose(v)
        return self._lam_rows * v + xp.matrix_transpose(Av) @ self.U

    def _cg_factorization(self) -> Factorization | None:
        """The capacitance system for a CG solve where its Gram pays for itself
        (:func:`~lowrank_gcrf.method.capacitance_gram_pays`), else None."""
        if not capacitance_gram_pays(self):
            return None
        xp = self.xp
        gram = working_gram(xp, self.U, self.embedding_name)
        system = CapacitanceSystem(
            xp, self.U, self.lam, gram, self._couple, row_sum_bound(xp, gram)
        )
        return Factorization(self._token, capacitance=system)

    def _factorize(self) -> ShiftedLowRankInverse:
        # The capacitance's κ = 1 + ‖A‖₂²/λ is unbounded: float64, factored in the Gram's memory.
        gram = small_gram(self.xp, self.U, self.embedding_name)
        inverse = ShiftedLowRankInverse.factor_from_gram(
            self.xp, self.U, self.lam, 1.0, gram, overwrite=True
        )
        if inverse is None:
            raise IndefiniteSystemError(
                "the capacitance λI + AAᵀ could not be factored although it is positive "
                "definite in exact arithmetic: lam is too small for the working precision; "
                "increase lam or use float64",
                lam=None,
            )
        return inverse

    def _gradient_rows(self, x: Any, g: Any) -> tuple[Any, Any]:
        return g, x
