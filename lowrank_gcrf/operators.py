"""The dense G-CRF system matrices as matrix-free operators, with solve and VJP.

Both models are ``M = λI + C ⊗ (UᵀU)`` acting on unknowns laid out as rows ``(..., k, n)``:

* :class:`GeneralOperator`: ``U = A`` (D, N), k = 1, ``C = [1]`` — Eq. 5, matvec Eq. 13;
* :class:`PottsOperator`: ``U = Â`` (D, P), k = L, ``C = J_L − I_L`` — Eq. 12, matvec
  Eq. 15–16.

An operator validates its embeddings and λ once, caches the exact low-rank factorization
the first time a direct solve (or the Potts definiteness check) needs it, and reuses it for
every later solve and for the backward pass (:meth:`GCRFOperator.vjp`).
"""

from __future__ import annotations

import functools
from typing import Any

from array_api_compat import device as _device

from .cg import cg_sweep, inner, scaled_norm
from .errors import ConvergenceError, GCRFError, IndefiniteSystemError
from .info import SolveInfo
from .method import choose_method, default_maxiter
from .refinement import residual_correction
from .validation import (
    array_namespace,
    as_lam,
    check_embeddings,
    check_finite,
    check_system_shape,
    dtype_name,
    floating_dtypes,
    is_numpy,
    result_dtype,
)
from .woodbury import ShiftedLowRankInverse, small_gram

# A GPU should not be synchronised with the host at every CG step (DESIGN §2).
_DEVICE_CHECK_EVERY = 8


class GCRFOperator:
    """Common part of the general and Potts operators (not used directly).

    Parameters
    ----------
    embeddings : array (..., D, n)
        ``A`` (n = N) or ``Â`` (n = P).
    lam : float or array of the batch shape
        λ > 0.
    """

    #: name of the embedding argument in messages
    embedding_name = "A"
    #: layout of the right-hand side in messages
    rhs_layout = "(..., N)"
    #: whether every solve factorizes anyway, to prove M positive definite (Potts)
    factors_to_check_definiteness = False

    def __init__(self, embeddings: Any, lam: Any, *, num_rows: int):
        xp = array_namespace(embeddings)
        check_embeddings(xp, embeddings, self.embedding_name)
        compute, self.input_dtype = floating_dtypes(xp, **{self.embedding_name: embeddings})
        check_finite(xp, embeddings, self.embedding_name)
        self.xp = xp
        self.U = xp.astype(embeddings, compute, copy=False)
        self.batch_shape: tuple[int, ...] = tuple(embeddings.shape[:-2])
        self.rank: int = int(embeddings.shape[-2])
        self.num_rows = num_rows
        self.lam = as_lam(xp, lam, self.batch_shape, compute, _device(self.U))
        self._lam_rows = self.lam[..., None, None]

    # -- structure -----------------------------------------------------------------------

    @property
    def dtype(self) -> Any:
        """The dtype the operator computes in (float32 or float64)."""
        return self.U.dtype

    @property
    def row_shape(self) -> tuple[int, int]:
        """Shape (k, n) of one system's unknowns in the internal row layout."""
        return (self.num_rows, int(self.U.shape[-1]))

    def _couple(self, Q: Any) -> Any:
        """Apply the label coupling C to per-row Gram products Q (..., k, n)."""
        raise NotImplementedError

    def _to_rows(self, v: Any) -> Any:
        raise NotImplementedError

    def _from_rows(self, v: Any) -> Any:
        raise NotImplementedError

    def matvec(self, v: Any) -> Any:
        """``M v`` for v in the internal row layout (..., k, n), never forming M.

        ``(v Uᵀ) U`` is one (k, n)@(n, D) and one (k, D)@(D, n) product for all rows.
        """
        Q = (v @ self.xp.matrix_transpose(self.U)) @ self.U
        return self._lam_rows * v + self._couple(Q)

    # -- exact low-rank factorization -----------------------------------------------------

    @functools.cached_property
    def factorization(self) -> Any:
        """The exact solver, factored on first use and cached (an object with ``apply``)."""
        return self._factorize(small_gram(self.xp, self.U))

    def _factorize(self, gram: Any) -> Any:
        raise NotImplementedError

    def check_definite(self) -> None:
        """Raise :class:`IndefiniteSystemError` if M is not positive definite."""

    # -- solves ----------------------------------------------------------------------------

    def _prepare(self, v: Any, name: str) -> Any:
        """Validate a system-shaped input and return it in the row layout, compute dtype."""
        xp = self.xp
        if array_namespace(self.U, v) is not xp:
            raise GCRFError(f"{name} must come from the same array library as the embeddings")
        floating_dtypes(xp, **{name: v})
        expected = self.batch_shape + self._public_system_shape()
        check_system_shape(tuple(v.shape), expected, name, self.rhs_layout)
        check_finite(xp, v, name)
        return self._to_rows(xp.astype(v, self.dtype, copy=False))

    def _public_system_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def solve(
        self,
        b: Any,
        *,
        method: str = "auto",
        rtol: float = 1e-5,
        atol: float = 0.0,
        maxiter: int | None = None,
        x0: Any = None,
    ) -> tuple[Any, SolveInfo]:
        """Solve ``M x = b`` for every system of the batch.

        Parameters
        ----------
        b : array
            Right-hand sides in the public layout (see the subclass).
        method : {"auto", "cg", "direct"}
            ``"cg"``: Algorithm 1, matrix-free; ``"direct"``: exact low-rank solve with
            iterative refinement; ``"auto"``: chosen from the shapes and dtype alone
            (:func:`lowrank_gcrf.method.choose_method`).
        rtol, atol : float
            Stop when ``‖b − Mx‖ ≤ max(rtol·‖b‖, atol)`` for each system.
        maxiter : int, optional
            CG iterations, or exact solves (the solve plus refinement steps) for
            ``"direct"``; defaults from :func:`lowrank_gcrf.method.default_maxiter`.
        x0 : array, optional
            Starting point, shaped like ``b``.

        Returns
        -------
        x : array shaped like b, in the promoted input dtype
        info : SolveInfo

        Raises
        ------
        IndefiniteSystemError, ConvergenceError, GCRFError
        """
        b_rows = self._prepare(b, "b")
        x0_rows = None if x0 is None else self._prepare(x0, "x0")
        out_dtype = result_dtype(self.xp, self.input_dtype, b.dtype)
        x, info = self._solve_rows(b_rows, x0_rows, method, rtol, atol, maxiter)
        self._raise_unconverged(x, info, rtol, atol, out_dtype)
        return self._from_rows(self.xp.astype(x, out_dtype, copy=False)), info

    def _solve_rows(
        self,
        b: Any,
        x0: Any,
        method: str,
        rtol: float,
        atol: float,
        maxiter: int | None,
    ) -> tuple[Any, SolveInfo]:
        xp = self.xp
        rtol, atol = _check_tolerances(rtol, atol, maxiter)
        method = choose_method(method, self)
        if maxiter is None:
            maxiter = default_maxiter(method, self)
        self.check_definite()
        bnorm = xp.sqrt(inner(xp, b, b))
        tol = xp.maximum(rtol * bnorm, xp.asarray(atol, dtype=self.dtype))
        x, iterations, rr = residual_correction(
            xp, self.matvec, b, x0, tol, maxiter, self._correction(method, tol)
        )
        rnorm = xp.sqrt(rr)
        residual = xp.where(bnorm > 0, rnorm / xp.where(bnorm > 0, bnorm, 1.0), rnorm)
        return x, SolveInfo(
            method=method, iterations=iterations, residual=residual, converged=rnorm <= tol
        )

    def _correction(self, method: str, tol: Any) -> Any:
        """The step of :func:`residual_correction` for ``method``.

        ``"cg"``: a CG sweep on the residual system. ``"direct"``: the exact low-rank solve
        ``M⁻¹ r`` — the first step from x = 0 is the Woodbury solve itself, later ones are
        iterative refinement (Woodbury is subtractive and loses about log10(κ) digits).
        """
        xp = self.xp
        if method == "cg":
            check_every = 1 if is_numpy(xp) else _DEVICE_CHECK_EVERY

            def cg_step(x: Any, r: Any, rr: Any, active: Any, budget: int, first: bool) -> Any:
                # A restart follows a sweep whose recurrence met tol while the true residual
                # did not (finite precision): aim it below tol so that it lands under it.
                target = tol if first else 0.5 * tol
                return cg_sweep(
                    xp, self.matvec, x, r, rr, active, target * target, budget, check_every
                )

            return cg_step
        solver = self.factorization

        def direct_step(x: Any, r: Any, rr: Any, active: Any, budget: int, first: bool) -> Any:
            step = xp.where(active[..., None, None], solver.apply(r), xp.zeros_like(r))
            return x + step, xp.astype(active, xp.int64)

        return direct_step

    def _raise_unconverged(
        self, x: Any, info: SolveInfo, rtol: float, atol: float, out_dtype: Any
    ) -> None:
        xp = self.xp
        if bool(xp.all(info.converged)):
            return
        failed = ~info.converged
        count = int(xp.sum(xp.astype(failed, xp.int64)))
        worst = float(xp.max(xp.where(failed, info.residual, xp.zeros_like(info.residual))))
        iters = int(xp.max(info.iterations))
        what = "CG iterations" if info.method == "cg" else "exact solves (with refinement)"
        raise ConvergenceError(
            f"{info.method} solve did not reach rtol={rtol:g}, atol={atol:g} in {count} of "
            f"{info.converged.size} system(s): relative residual {worst:.3g} after {iters} "
            f"{what}. The system is too ill-conditioned for the dtype {dtype_name(self.dtype)} "
            "(κ = 1 + ‖A‖₂²/λ): raise rtol, increase lam, use float64, or raise maxiter.",
            x=self._from_rows(xp.astype(x, out_dtype, copy=False)),
            info=info,
        )

    # -- gradients -------------------------------------------------------------------------

    def _gradient_rows(self, x: Any, g: Any) -> tuple[Any, Any]:
        """Rows (l, r) such that ∂L/∂U = −[(U lᵀ) r + (U rᵀ) l]."""
        raise NotImplementedError

    def vjp(
        self,
        x: Any,
        gx: Any,
        *,
        method: str = "auto",
        rtol: float = 1e-5,
        atol: float = 0.0,
        maxiter: int | None = None,
    ) -> tuple[Any, Any, Any, SolveInfo]:
        """Vector-Jacobian product of ``x = M⁻¹ b`` (Eq. 2–3, 6, 10 and the Potts analogue).

        With ``g = M⁻¹ gx`` (Eq. 6, solved by the same method, reusing the cached
        factorization): ``∂L/∂b = g``, ``∂L/∂λ = −gᵀx`` per system, and for the
        embeddings ``∂L/∂U = −Σᵢⱼ Cᵢⱼ [(U gᵢ) xⱼᵀ + (U xᵢ) gⱼᵀ]`` — the general case (C = 1)
        is Eq. 10 written matrix-free, ``−[(Ag)xᵀ + (Ax)gᵀ]``. The cotangent is scaled to
        unit norm per system before the solve and the results scaled back, so that tiny
        float32 cotangents do not underflow; zero cotangents give exactly zero gradients.

        Parameters
        ----------
        x : array
            The solution returned by :meth:`solve` (public layout).
        gx : array
            ``∂L/∂x``, shaped like x.
        method, rtol, atol, maxiter
            As for :meth:`solve`, for the backward solve.

        Returns
        -------
        g_embeddings : array shaped like the embeddings
        g_b : array shaped like x
        g_lam : array of the batch shape
        info : SolveInfo of the backward solve
        """
        xp = self.xp
        x_rows = self._prepare(x, "x")
        gx_rows = self._prepare(gx, "gx")
        out_dtype = result_dtype(xp, self.input_dtype, x.dtype)
        scale = scaled_norm(xp, gx_rows)
        unit = gx_rows / xp.where(scale > 0, scale, 1.0)[..., None, None]
        g, info = self._solve_rows(unit, None, method, rtol, atol, maxiter)
        g_b = g * scale[..., None, None]
        self._raise_unconverged(g_b, info, rtol, atol, out_dtype)
        left, right = self._gradient_rows(x_rows, g)
        # −[(U lᵀ) r + (U rᵀ) l] as one (D, 2m) @ (2m, n) product, with −scale folded into
        # the small factor, so that the only (D, n) array allocated is the result.
        small = self.U @ xp.matrix_transpose(xp.concat([left, right], axis=-2))
        small = small * (-scale)[..., None, None]
        g_U = small @ xp.concat([right, left], axis=-2)
        g_lam = -inner(xp, g, x_rows) * scale
        return (
            xp.astype(g_U, self.input_dtype, copy=False),
            self._from_rows(xp.astype(g_b, out_dtype, copy=False)),
            xp.astype(g_lam, out_dtype, copy=False),
            info,
        )


class GeneralOperator(GCRFOperator):
    """``M = AᵀA + λI`` (Eq. 5), matvec ``Aᵀ(Ap) + λp`` (Eq. 13).

    Parameters
    ----------
    A : array (..., D, N)
        Embeddings of the N = P·L variables, label-major (n = l·P + p).
    lam : float or array of the batch shape (...,)
        λ > 0.

    Vectors (b, x) have shape (..., N).
    """

    embedding_name = "A"
    rhs_layout = "(..., N) with A of shape (..., D, N)"

    def __init__(self, A: Any, lam: Any):
        super().__init__(A, lam, num_rows=1)

    def _public_system_shape(self) -> tuple[int, ...]:
        return (int(self.U.shape[-1]),)

    def _to_rows(self, v: Any) -> Any:
        return v[..., None, :]

    def _from_rows(self, v: Any) -> Any:
        return v[..., 0, :]

    def _couple(self, Q: Any) -> Any:
        return Q

    def _factorize(self, gram: Any) -> ShiftedLowRankInverse:
        inverse = ShiftedLowRankInverse.factor_from_gram(self.xp, self.U, self.lam, 1.0, gram)
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


class PottsFactorization:
    """Exact Potts solve by the class-sum / deviation split (DESIGN §1).

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
    ``λ + (L−1)μᵢ`` and ``λ − μᵢ``); every solve checks this first and raises
    :class:`IndefiniteSystemError` otherwise.

    Parameters
    ----------
    Ahat : array (..., D, P)
        One embedding per pixel, shared by all labels.
    lam : float or array of the batch shape (...,)
    num_labels : int
        L; right-hand sides have shape (..., L, P).
    """

    embedding_name = "Ahat"
    rhs_layout = "(..., L, P) with Ahat of shape (..., D, P)"
    factors_to_check_definiteness = True

    def __init__(self, Ahat: Any, lam: Any, num_labels: int):
        if int(num_labels) < 1:
            raise GCRFError(f"num_labels must be ≥ 1, got {num_labels}")
        super().__init__(Ahat, lam, num_rows=int(num_labels))

    def _public_system_shape(self) -> tuple[int, ...]:
        return self.row_shape

    def _to_rows(self, v: Any) -> Any:
        return v

    def _from_rows(self, v: Any) -> Any:
        return v

    def _couple(self, Q: Any) -> Any:
        # (J − I) Q: every label receives the other labels' products (Eq. 16).
        return self.xp.sum(Q, axis=-2, keepdims=True) - Q

    def _factorize(self, gram: Any) -> PottsFactorization:
        xp, L = self.xp, self.num_rows
        sum_inverse = ShiftedLowRankInverse.factor_from_gram(
            xp, self.U, self.lam, float(L - 1), gram
        )
        deviation_inverse = None
        if L > 1:
            deviation_inverse = ShiftedLowRankInverse.factor_from_gram(
                xp, self.U, self.lam, -1.0, gram
            )
            if deviation_inverse is None or sum_inverse is None:
                self._raise_indefinite(gram)
        return PottsFactorization(xp, sum_inverse, deviation_inverse, L)

    def _raise_indefinite(self, gram: Any) -> None:
        xp = self.xp
        mu = xp.max(xp.linalg.eigvalsh(gram), axis=-1)
        bad = xp.astype(self.lam, xp.float64) <= mu
        if not bool(xp.any(bad)):
            bad = xp.ones_like(bad)
        lam_bad = float(xp.max(xp.where(bad, xp.astype(self.lam, xp.float64), -xp.inf)))
        mu_bad = float(xp.max(xp.where(bad, mu, -xp.inf)))
        count = int(xp.sum(xp.astype(bad, xp.int64)))
        raise IndefiniteSystemError(
            f"the Potts system λI + (J − I) ⊗ ÂᵀÂ is not positive definite in {count} "
            f"system(s): lam = {lam_bad:.6g} but ‖Ahat‖₂² = {mu_bad:.6g} (the Potts G-CRF "
            "needs lam > ‖Ahat‖₂², the largest eigenvalue of Ahat·Ahatᵀ). Increase lam above "
            "‖Ahat‖₂² or rescale the embeddings (e.g. normalise Ahat so ‖Ahat‖₂² < lam).",
            lam=lam_bad,
            mu_max=mu_bad,
        )

    def check_definite(self) -> None:
        """Factor the deviation capacitance ``λI − ÂÂᵀ``: it exists iff λ > ‖Â‖₂²."""
        _ = self.factorization

    def _gradient_rows(self, x: Any, g: Any) -> tuple[Any, Any]:
        # C = J − I: Σᵢⱼ Cᵢⱼ (U gᵢ) xⱼᵀ = (U S_g) S_xᵀ − Σₖ (U gₖ) xₖᵀ, stacked as rows.
        xp = self.xp
        left = xp.concat([xp.sum(g, axis=-2, keepdims=True), g], axis=-2)
        right = xp.concat([xp.sum(x, axis=-2, keepdims=True), -x], axis=-2)
        return left, right


def _check_tolerances(rtol: float, atol: float, maxiter: int | None) -> tuple[float, float]:
    """Validated tolerances as Python floats (NumPy scalars would not mix with other
    array libraries)."""
    rtol, atol = float(rtol), float(atol)
    if not (rtol >= 0 and atol >= 0) or (rtol == 0 and atol == 0):
        raise GCRFError(
            f"need rtol ≥ 0 and atol ≥ 0, not both zero; got rtol={rtol!r}, atol={atol!r}"
        )
    if maxiter is not None and (int(maxiter) != maxiter or maxiter < 0):
        raise GCRFError(f"maxiter must be a non-negative integer or None, got {maxiter!r}")
    return rtol, atol
