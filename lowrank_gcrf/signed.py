"""The signed dense G-CRF operator ``M = λI + AᵀA − ΓᵀΓ`` (``docs/maths.md#the-signed-model``).

Repulsive embeddings A (D, N) and attractive embeddings Γ (E, N) stack into ``U = [A; Γ]``
with the signature ``S = diag(I_D, −I_E)``, so that ``M = λI + UᵀSU``. The general model is
Γ = None; the Potts model is ``A = 1_Lᵀ ⊗ Â``, ``Γ = I_L ⊗ Â``.
"""

from __future__ import annotations

from typing import Any

from .cholesky import CholeskyFactor, cholesky_factor
from .dtypes import dtype_name, floating_dtypes
from .errors import GCRFError, IndefiniteSystemError
from .factorization import Factorization
from .general import GeneralOperator
from .host_reads import to_host
from .info import SolveInfo
from .operators import GCRFOperator
from .signed_inverse import SignedInverse, float64_gram
from .validation import array_namespace, check_array, check_embeddings, check_finite
from .woodbury import gram_overflow_error

_SUFFICIENT = (
    "(‖Gamma‖₂² < lam is sufficient; exactly, I − Γ(λI + AᵀA)⁻¹Γᵀ must be positive definite); "
    "the layers of lowrank_gcrf.adapters with model='signed' do this by construction."
)


class SignedOperator(GCRFOperator):
    """``M = λI + AᵀA − ΓᵀΓ``, matvec ``λv + Aᵀ(Av) − Γᵀ(Γv)`` in one pass over ``U = [A; Γ]``.

    Positive definite iff the Schur complement ``H = I_E − Γ(λI + AᵀA)⁻¹Γᵀ`` is
    (``‖Γ‖₂² < λ`` suffices, but A can make larger Γ admissible). Whenever Γ is present every
    solve proves this first, by the Cholesky factorization of λH, and raises
    :class:`IndefiniteSystemError` otherwise, for every method. Immutable.

    Parameters
    ----------
    A : array (..., D, N) or None
        Repulsive embeddings (the general model's).
    Gamma : array (..., E, N) or None
        Attractive embeddings; not both None. Same batch shape and N as A.
    lam : float or array of the batch shape (...,)
        λ > 0.

    Vectors (b, x) have shape (..., N). Gradients of the embeddings come as one array
    ``[∂L/∂A; ∂L/∂Γ]`` of shape (..., D + E, N); :meth:`split` separates them.

    Examples
    --------
    >>> import numpy as np
    >>> import lowrank_gcrf as lg
    >>> rng = np.random.default_rng(0)
    >>> A, Gamma = rng.standard_normal((4, 30)) / 4, rng.standard_normal((2, 30)) / 10
    >>> op = lg.SignedOperator(A, Gamma, 1.0)
    >>> x, info = op.solve(rng.standard_normal(30))
    >>> x.shape, bool(info.converged)
    ((30,), True)
    """

    embedding_name = "[A; Gamma]"
    rhs_layout = "(..., N) with A of shape (..., D, N) and Gamma of shape (..., E, N)"
    condition_hint = "κ = λ_max(M) / λ_min(M), with λ_min(M) ≥ λ − ‖Gamma‖₂²"

    def __init__(self, A: Any, Gamma: Any, lam: Any):
        present = {name: a for name, a in (("A", A), ("Gamma", Gamma)) if a is not None}
        if not present:
            raise GCRFError("the signed model needs A, Gamma or both; both are None")
        for name, a in present.items():
            check_array(a, name)
        xp = array_namespace(*present.values())
        for name, a in present.items():
            check_embeddings(xp, a, name)
        if (
            A is not None
            and Gamma is not None
            and (A.shape[:-2] != Gamma.shape[:-2] or A.shape[-1] != Gamma.shape[-1])
        ):
            raise GCRFError(
                f"A (..., D, N) and Gamma (..., E, N) must share the batch shape and N, got "
                f"shapes {tuple(A.shape)} and {tuple(Gamma.shape)}"
            )
        _, common = floating_dtypes(xp, **present)
        # After the dtype check: isfinite is not defined for every dtype (object, strings).
        for name, a in present.items():
            check_finite(xp, a, name)
        parts = [xp.astype(a, common, copy=False) for a in present.values()]
        U = parts[0] if len(parts) == 1 else xp.concat(parts, axis=-2)
        self._num_repulsive = 0 if A is None else int(A.shape[-2])
        super().__init__(U, lam, num_rows=1)
        self.factors_to_check_definiteness = self.attractive_rank > 0
        signs = [1.0] * self._num_repulsive + [-1.0] * self.attractive_rank
        self._signature = xp.asarray(signs, dtype=self.dtype)

    @property
    def repulsive_rank(self) -> int:
        """D, the rows of A (0 when A is None)."""
        return self._num_repulsive

    @property
    def attractive_rank(self) -> int:
        """E, the rows of Γ (0 when Gamma is None)."""
        return self.rank - self._num_repulsive

    def split(self, stacked: Any) -> tuple[Any, Any]:
        """``(repulsive, attractive)`` rows of a (..., D + E, N) array; None where absent."""
        d = self._num_repulsive
        repulsive = stacked[..., :d, :] if d else None
        attractive = stacked[..., d:, :] if self.attractive_rank else None
        return repulsive, attractive

    def _rebuild(self, embeddings: Any, lam: Any) -> SignedOperator:
        return SignedOperator(*self.split(embeddings), lam)

    # Vectors (..., N) in one row, as in the general model.
    _public_system_shape = GeneralOperator._public_system_shape
    _to_rows = GeneralOperator._to_rows
    _from_rows = GeneralOperator._from_rows

    def matvec(self, v: Any) -> Any:
        """``M v = λv + ((v Uᵀ) S) U`` for v of shape (..., 1, N), never forming M."""
        Ut = self.xp.matrix_transpose(self.U)
        return self._lam_rows * v + ((v @ Ut) * self._signature) @ self.U

    def _embedding_signature(self, small: Any) -> Any:
        return small * self._signature[:, None]

    # -- exact factorization and definiteness ----------------------------------------------

    def _factorize(self) -> SignedInverse:
        xp = self.xp
        d, n = self._num_repulsive, int(self.U.shape[-1])
        lam64 = xp.astype(self.lam, xp.float64)[..., None, None]
        if self.rank >= n:
            dense = cholesky_factor(xp, lam64 * xp.eye(n, dtype=xp.float64) + self._dense_term())
            if dense is None:
                self._raise_indefinite()
            return SignedInverse(xp, self.U, self.lam, d, None, None, None, dense=dense)
        repulsive, cross, schur_matrix = self._capacitance_blocks(self._gram())
        schur = None
        if schur_matrix is not None:
            schur = cholesky_factor(xp, schur_matrix)
            if schur is None:
                self._raise_indefinite()
        return SignedInverse(xp, self.U, self.lam, d, repulsive, schur, cross)

    def _capacitance_blocks(self, gram: Any) -> tuple[CholeskyFactor | None, Any, Any]:
        """``(C_A factor, AΓᵀ, λH)`` of the block LDLᵀ of ``K = λS + UUᵀ`` from the float64
        Gram: the Cholesky factor of ``C_A = λI + AAᵀ`` and the cross block (None without
        A), and the Schur complement ``λH = λI − ΓΓᵀ + ΓAᵀ C_A⁻¹ AΓᵀ`` (None without Γ)."""
        xp = self.xp
        d, e = self._num_repulsive, self.attractive_rank
        lam64 = xp.astype(self.lam, xp.float64)[..., None, None]
        repulsive = cross = schur_matrix = None
        if d:
            repulsive = cholesky_factor(xp, lam64 * xp.eye(d, dtype=xp.float64) + gram[..., :d, :d])
            if repulsive is None:
                raise IndefiniteSystemError(
                    "the capacitance λI + AAᵀ could not be factored although it is positive "
                    "definite in exact arithmetic: lam is too small for the working precision; "
                    "increase lam or use float64",
                    lam=None,
                )
        if e:
            schur_matrix = lam64 * xp.eye(e, dtype=xp.float64) - gram[..., d:, d:]
            if d:
                cross = gram[..., :d, d:]
                schur_matrix = schur_matrix + xp.matrix_transpose(cross) @ repulsive.solve(cross)
        return repulsive, cross, schur_matrix

    def _definiteness_margin(self) -> Any:
        """``h = λ_min(H)`` per system, in float64: how far M is from singular, relative to
        the part ``λI + AᵀA`` that the attractive term must not outweigh.

        ``h = min_x xᵀMx / xᵀ(λI + AᵀA)x`` over x in Γ's row space, the smallest eigenvalue
        of the Schur complement ``H = I − Γ(λI + AᵀA)⁻¹Γᵀ``: M is positive definite iff
        h > 0, and h ≤ 1. It is what the working precision must resolve: the matvec rounds
        ``xᵀMx`` by about ε·xᵀ(λI + AᵀA)x, so a system with h within that rounding of 0 is
        singular in its dtype. Unlike ``λ_min(M)/λ_max(M)`` it does not fall with a large A,
        which makes M ill-conditioned but no closer to indefinite. 1 when Gamma is None.
        """
        xp = self.xp
        lam = xp.astype(self.lam, xp.float64)
        _, _, schur_matrix = self._capacitance_blocks(self._gram())
        if schur_matrix is None:
            return xp.ones_like(lam)
        return xp.linalg.eigvalsh(schur_matrix)[..., 0] / lam

    def _gram(self) -> Any:
        """``UUᵀ`` in float64, formed from float64 embeddings a chunk of columns at a time
        (:func:`~lowrank_gcrf.signed_inverse.float64_gram`: no float64 copy of U).

        The Schur complement λH is a difference of nearly equal terms near the definiteness
        boundary: a Gram rounded to float32 would blur the definiteness test there, and it
        dominates the error of a float32 exact solve (a float64 Gram cut that error several
        times over on ill-conditioned float32 systems, see ``docs/maths.md``).
        """
        gram = float64_gram(self.xp, self.U)
        self._check_range(self.xp.linalg.diagonal(gram))
        return gram

    def _dense_term(self) -> Any:
        """``UᵀSU`` (N×N, float64), for D + E ≥ N where it is the smaller matrix."""
        xp = self.xp
        Us = xp.astype(self.U, xp.float64)
        self._check_range(xp.sum(Us * Us, axis=-1))
        return xp.matrix_transpose(Us) @ (Us * xp.astype(self._signature, xp.float64)[:, None])

    def _check_range(self, squared_norms: Any) -> None:
        """Refuse rows whose squared norm exceeds the working dtype, as the general and Potts
        Grams do: the matvec ``λv + Aᵀ(Av) − Γᵀ(Γv)`` would overflow it, definite or not,
        where the float64 Gram would not show it (and a failed refinement would be blamed on
        definiteness)."""
        xp = self.xp
        if self.dtype == xp.float64:
            return
        if bool(to_host(xp, xp.any(squared_norms > float(xp.finfo(self.dtype).max)))):
            raise gram_overflow_error(self.embedding_name, self.dtype)

    def _certify(self) -> Factorization:
        # The proof of definiteness is the Schur factor, and with it the exact solver costs
        # only the Gram products already paid for.
        return self.factor()

    def extreme_eigenvalues(self) -> tuple[Any, Any]:
        """``(λ_min(M), λ_max(M))`` per system, in float64, from a QR factorization of Uᵀ.

        The eigenvalues of M other than λ are λ plus those of ``UᵀSU``, whose non-zero
        ones are the eigenvalues of the symmetric ``RSRᵀ`` with ``Uᵀ = QR``. They are
        accurate to about ε‖U‖₂² in absolute terms. (A square root of the Gram ``UUᵀ`` by
        its eigendecomposition would not do: where U is rank deficient, as with Γ = A, the
        rounding of its zero eigenvalues, ε‖U‖₂², enters R as its square root.)
        """
        xp = self.xp
        n = int(self.U.shape[-1])
        lam = xp.astype(self.lam, xp.float64)
        if self.rank >= n:
            signed = self._dense_term()
        else:
            signature = xp.astype(self._signature, xp.float64)
            _, R = xp.linalg.qr(xp.matrix_transpose(xp.astype(self.U, xp.float64)))
            signed = (R * signature) @ xp.matrix_transpose(R)
        shifts = xp.linalg.eigvalsh(signed)
        low, high = shifts[..., 0], shifts[..., -1]
        if self.rank < n:
            low, high = xp.minimum(low, 0.0), xp.maximum(high, 0.0)
        return lam + low, lam + high

    def _raise_indefinite(self) -> None:
        xp = self.xp
        low, _ = self.extreme_eigenvalues()
        # The float64 estimate errs by up to about γ₆₄·‖U‖₂² ≤ γ₆₄·‖U‖_F² (more than λ_max(M)
        # where Γ cancels A): only a smallest eigenvalue below that proves M indefinite.
        U = xp.astype(self.U, xp.float64)
        error = self._rounding_bound(xp.float64) * xp.sum(U * U, axis=(-2, -1))
        bad = low < -error
        if bool(xp.any(bad)):
            raise self._indefinite_error(low, bad)
        # The float64 factorization failed with only rounding to blame.
        margin = self._definiteness_margin()
        bad = margin <= self._singular_tolerance()
        if bool(xp.any(bad)):
            raise self._singular_error(margin, bad)
        raise self._undecidable_error(low, error)

    def _indefinite_error(self, low: Any, bad: Any) -> IndefiniteSystemError:
        xp = self.xp
        lam = xp.astype(self.lam, xp.float64)
        worst = xp.where(bad, low, xp.inf)
        index = xp.argmin(xp.reshape(worst, (-1,)))
        low_bad = float(xp.reshape(low, (-1,))[index])
        lam_bad = float(xp.reshape(lam, (-1,))[index])
        count = int(xp.sum(xp.astype(bad, xp.int64)))
        return IndefiniteSystemError(
            f"the signed system λI + AᵀA − ΓᵀΓ is not positive definite in {count} "
            f"system(s): with lam = {lam_bad:.6g} its smallest eigenvalue is {low_bad:.6g}, "
            f"so the attractive term ΓᵀΓ outweighs λI + AᵀA by {-low_bad:.6g} along some "
            f"direction. Increase lam above {lam_bad - low_bad:.6g}, or scale Gamma down "
            f"{_SUFFICIENT}",
            lam=lam_bad,
        )

    def _singular_error(self, margin: Any, bad: Any) -> IndefiniteSystemError:
        xp = self.xp
        index = xp.argmin(xp.reshape(xp.where(bad, margin, xp.inf), (-1,)))
        margin_bad = float(xp.reshape(margin, (-1,))[index])
        lam_bad = float(xp.reshape(xp.astype(self.lam, xp.float64), (-1,))[index])
        count = int(xp.sum(xp.astype(bad, xp.int64)))
        return IndefiniteSystemError(
            f"the signed system λI + AᵀA − ΓᵀΓ is singular in the working precision in "
            f"{count} system(s): with lam = {lam_bad:.6g}, I − Γ(λI + AᵀA)⁻¹Γᵀ has the "
            f"smallest eigenvalue {margin_bad:.3g}, within the rounding of "
            f"{dtype_name(self.dtype)} ({self._singular_tolerance():.2g}) of 0: "
            "the attractive term ΓᵀΓ cancels λI + AᵀA along some direction. Increase lam, or "
            f"scale Gamma down {_SUFFICIENT}",
            lam=lam_bad,
        )

    def _undecidable_error(self, low: Any, error: Any) -> IndefiniteSystemError:
        """The float64 factorization failed, but neither the estimate of λ_min(M) nor the
        Schur complement places M beyond or within rounding of singular: the embeddings
        are too large against λ for float64 to decide."""
        xp = self.xp
        index = xp.argmin(xp.reshape(low, (-1,)))
        low_min = float(xp.reshape(low, (-1,))[index])
        error_min = float(xp.reshape(error, (-1,))[index])
        lam_min = float(xp.reshape(xp.astype(self.lam, xp.float64), (-1,))[index])
        return IndefiniteSystemError(
            "the signed system λI + AᵀA − ΓᵀΓ could not be proven positive definite: its "
            f"float64 factorization failed, with lam = {lam_min:.6g}, and the estimate of its "
            f"smallest eigenvalue, {low_min:.6g}, is within its own rounding ({error_min:.3g}) "
            "of 0. The embeddings are too large against lam for float64 to decide: increase "
            "lam, or scale A and Gamma down.",
            lam=lam_min,
        )

    def _diagnose_failure(self, info: SolveInfo) -> None:
        """A system within rounding of singular cannot be solved in its dtype: say so.

        Any other failure of a system proven definite is ill-conditioning (a large A, say),
        reported as such: ConvergenceError or ConvergenceWarning, as for the general model.
        """
        if not self.attractive_rank:
            return
        margin = self._definiteness_margin()
        bad = margin <= self._singular_tolerance()
        if bool(self.xp.any(bad)):
            raise self._singular_error(margin, bad)

    def _gradient_rows(self, x: Any, g: Any) -> tuple[Any, Any]:
        # ∂L/∂U = −S[(U g) xᵀ + (U x) gᵀ]; S is applied by _embedding_signature.
        return g, x
