"""The Potts dense G-CRF operator ``M = λI + (J_L − I_L) ⊗ ÂᵀÂ`` (Eq. 11–12, 14–16)."""

from __future__ import annotations

from typing import Any

from .capacitance import CapacitanceSystem
from .cholesky import cholesky_lower
from .dtypes import dtype_name
from .errors import GCRFError, IndefiniteSystemError
from .factorization import Factorization
from .host_reads import to_host
from .info import SolveInfo
from .method import capacitance_gram_pays
from .operators import GCRFOperator
from .woodbury import ShiftedLowRankInverse, shifted_gram, small_gram, working_gram


class PottsFactorization:
    """Exact Potts solve by the class-sum / deviation split (``docs/maths.md``).

    ``(λI + (L−1)K) s = Σₖ bₖ`` and ``(λI − K) dₖ = bₖ − s_b/L``, ``xₖ = s/L + dₖ``; one
    Gram of Â serves both capacitances.
    """

    def __init__(self, xp: Any, sum_inverse: Any, deviation_inverse: Any, num_labels: int):
        self.xp = xp
        self.sum_inverse = sum_inverse
        self.deviation_inverse = deviation_inverse
        self.num_labels = num_labels

    def apply(self, b: Any) -> Any:
        """``M⁻¹ b`` for b of shape (..., L, P)."""
        s_b = self.xp.sum(b, axis=-2, keepdims=True)
        s = self.sum_inverse.apply(s_b)
        if self.deviation_inverse is None:
            return s
        d = self.deviation_inverse.apply(b - s_b / self.num_labels)
        return s / self.num_labels + d


class PottsOperator(GCRFOperator):
    """``M = λI + (J_L − I_L) ⊗ ÂᵀÂ`` (Eq. 12), matvec Eq. 15–16.

    Positive definite iff ``λ > μ_max = ‖Â‖₂²`` (the eigenvalues of M are
    ``λ + (L−1)μᵢ`` and ``λ − μᵢ``); every solve proves this first and raises
    :class:`IndefiniteSystemError` otherwise: a direct solve by factoring the deviation
    capacitance ``λI − ÂÂᵀ`` (float64), a CG solve by ``‖Â‖_F² < λ`` where that bound
    suffices, else by the Cholesky factor of the same capacitance alone. For D < P, CG then
    iterates on the L×D capacitance system (:mod:`lowrank_gcrf.capacitance`).
    Immutable: build a new operator for new embeddings.

    Parameters
    ----------
    Ahat : array (..., D, P)
        One embedding per pixel, shared by all labels.
    lam : float or array of the batch shape (...,)
    num_labels : int
        L; right-hand sides have shape (..., L, P).

    Examples
    --------
    >>> import numpy as np
    >>> import lowrank_gcrf as lg
    >>> rng = np.random.default_rng(0)
    >>> op = lg.PottsOperator(rng.standard_normal((4, 20)) / 10, 1.0, num_labels=3)
    >>> x, info = op.solve(rng.standard_normal((3, 20)))
    >>> x.shape, bool(info.converged)
    ((3, 20), True)
    >>> lg.PottsOperator(rng.standard_normal((4, 20)), 1.0, num_labels=3).factor()
    Traceback (most recent call last):
        ...
    lowrank_gcrf.errors.IndefiniteSystemError: ...
    """

    embedding_name = "Ahat"
    rhs_layout = "(..., L, P) with Ahat of shape (..., D, P)"
    condition_hint = "κ = (λ + (L−1)‖Ahat‖₂²) / (λ − ‖Ahat‖₂²)"
    factors_to_check_definiteness = True

    def __init__(self, Ahat: Any, lam: Any, num_labels: int):
        if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 1:
            raise GCRFError(f"num_labels must be an integer ≥ 1, got {num_labels!r}")
        super().__init__(Ahat, lam, num_rows=num_labels)

    def _rebuild(self, embeddings: Any, lam: Any) -> PottsOperator:
        return PottsOperator(embeddings, lam, self.num_rows)

    def _public_system_shape(self) -> tuple[int, ...]:
        return self.row_shape

    def _to_rows(self, v: Any) -> Any:
        return v

    def _from_rows(self, v: Any) -> Any:
        return v

    def _couple(self, Q: Any) -> Any:
        # (J − I) Q: every label receives the other labels' products (Eq. 16).
        return self.xp.sum(Q, axis=-2, keepdims=True) - Q

    def _factorize(self) -> PottsFactorization:
        # Memory: the working Gram, one float64 D×D array while factoring, and two factors in
        # the working dtype. The deviation goes first, factored in float64 (its
        # κ = λ/(λ − μ_max) is unbounded, and the factor must decide λ > μ_max): that bounds
        # the class sum's κ = (λ + (L−1)μ_max)/λ below L, safe to factor in the working
        # dtype, in the Gram's own memory.
        xp = self.xp
        gram = working_gram(xp, self.U, self.embedding_name)
        deviation = None
        if self.num_rows > 1:
            deviation = ShiftedLowRankInverse.factor_from_gram(
                xp,
                self.U,
                self.lam,
                -1.0,
                xp.astype(gram, xp.float64),
                overwrite=True,
                hold=self.dtype,
            )
            if deviation is None:
                self._raise_indefinite(gram)
        total = ShiftedLowRankInverse.factor_from_gram(
            xp, self.U, self.lam, float(self.num_rows - 1), gram, overwrite=True
        )
        if total is None:
            self._raise_indefinite(working_gram(xp, self.U, self.embedding_name))
        return PottsFactorization(xp, total, deviation, self.num_rows)

    def _certify(self) -> Factorization:
        """Prove λ > ‖Â‖₂² for a CG solve: by ``‖Â‖_F² < λ`` where that bound suffices (one
        pass over Â), else by the Cholesky factor of ``λI − ÂÂᵀ`` alone (no inverse).

        Where the Gram ``ÂÂᵀ`` is at hand (the Cholesky proof needs it) or pays for itself
        (:func:`~lowrank_gcrf.method.capacitance_gram_pays`), and D < P, the factorization
        also carries the capacitance system CG then iterates in, with ‖Â‖₂² < λ as its bound.
        """
        xp = self.xp
        if self.num_rows == 1:
            return Factorization(self._token, certificate="frobenius")
        frobenius = self._frobenius_certifies()
        if frobenius and not capacitance_gram_pays(self):
            return Factorization(self._token, certificate="frobenius")
        gram = working_gram(xp, self.U, self.embedding_name)
        if not frobenius:
            deviation = shifted_gram(
                xp, xp.astype(gram, xp.float64), self.lam, -1.0, overwrite=True
            )
            if cholesky_lower(xp, deviation) is None:
                self._raise_indefinite(gram)
        system = None
        if self.rank < self.U.shape[-1]:
            system = CapacitanceSystem(xp, self.U, self.lam, gram, self._couple, self.lam)
        return Factorization(
            self._token,
            certificate="frobenius" if frobenius else "cholesky",
            capacitance=system,
        )

    def _frobenius_certifies(self) -> bool:
        """Whether ``‖Â‖_F² (1 + γ) < λ`` for every system, with γ = 2(D + P)ε bounding the
        rounding of the sum of squares in the working dtype: then ``‖Â‖₂² ≤ ‖Â‖_F² < λ``."""
        xp = self.xp
        U = self.U
        frobenius = xp.sum(xp.vecdot(U, U, axis=-1), axis=-1)
        return bool(to_host(xp, xp.all(frobenius * (1.0 + self._rounding_bound()) < self.lam)))

    def _mu_max(self, gram: Any) -> Any:
        xp = self.xp
        return xp.max(xp.linalg.eigvalsh(xp.astype(gram, xp.float64)), axis=-1)

    def _raise_indefinite(self, gram: Any) -> None:
        xp = self.xp
        mu = self._mu_max(gram)
        bad = xp.astype(self.lam, xp.float64) <= mu
        if bool(xp.any(bad)):
            raise self._indefinite_error(mu, bad, in_precision=False)
        # The Cholesky factor failed with only rounding to blame: λ is within it of μ_max.
        bad = self._within_rounding(mu)
        bad = bad if bool(xp.any(bad)) else xp.ones_like(bad)
        raise self._indefinite_error(mu, bad, in_precision=True)

    def _within_rounding(self, mu: Any) -> Any:
        """Systems whose ``λ − μ_max`` (float64) is within rounding of 0 (relative to λ)."""
        lam = self.xp.astype(self.lam, self.xp.float64)
        return lam - mu <= self._singular_tolerance() * lam

    def _indefinite_error(self, mu: Any, bad: Any, *, in_precision: bool) -> IndefiniteSystemError:
        xp = self.xp
        lam = xp.astype(self.lam, xp.float64)
        lam_bad = float(xp.max(xp.where(bad, lam, -xp.inf)))
        mu_bad = float(xp.max(xp.where(bad, mu, -xp.inf)))
        count = int(xp.sum(xp.astype(bad, xp.int64)))
        if in_precision:
            tolerance = self._singular_tolerance()
            where = " in the working precision"
            advice = (
                f"lam is within the rounding of {dtype_name(self.dtype)} (a relative "
                f"{tolerance:.2g}) of ‖Ahat‖₂²: increase lam above ‖Ahat‖₂²·(1 + {tolerance:.2g})"
                f" = {mu_bad * (1 + tolerance):.6g}"
            )
        else:
            where, advice = "", "Increase lam above ‖Ahat‖₂²"
        return IndefiniteSystemError(
            f"the Potts system λI + (J − I) ⊗ ÂᵀÂ is not positive definite{where} in "
            f"{count} system(s): lam = {lam_bad:.6g} but ‖Ahat‖₂² = {mu_bad:.6g} (the Potts "
            f"G-CRF needs lam > ‖Ahat‖₂², the largest eigenvalue of Ahat·Ahatᵀ). {advice} or "
            "rescale the embeddings (the layers of lowrank_gcrf.adapters do this by "
            "construction).",
            lam=lam_bad,
            mu_max=mu_bad,
        )

    def _diagnose_failure(self, info: SolveInfo) -> None:
        """A λ within rounding of ‖Â‖₂² is singular in the working precision: say so."""
        xp = self.xp
        if self.num_rows == 1:
            return
        # μ_max comes from a Gram rounded in the working dtype: within its rounding, a λ at
        # ‖Â‖₂² (as another computation of it rounds) is singular, not merely ill-conditioned.
        mu = self._mu_max(small_gram(xp, self.U, self.embedding_name))
        bad = self._within_rounding(mu)
        if bool(xp.any(bad)):
            raise self._indefinite_error(mu, bad, in_precision=True)

    def _gradient_rows(self, x: Any, g: Any) -> tuple[Any, Any]:
        # C = J − I: Σᵢⱼ Cᵢⱼ (U gᵢ) xⱼᵀ = (U S_g) S_xᵀ − Σₖ (U gₖ) xₖᵀ, stacked as rows.
        xp = self.xp
        left = xp.concat([xp.sum(g, axis=-2, keepdims=True), g], axis=-2)
        right = xp.concat([xp.sum(x, axis=-2, keepdims=True), -x], axis=-2)
        return left, right
