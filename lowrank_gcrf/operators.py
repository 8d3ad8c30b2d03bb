"""The dense G-CRF system matrices as immutable, matrix-free operators: their common base.

Every model is ``M = λI + C ⊗ (UᵀSU)`` acting on unknowns laid out as rows ``(..., k, n)``,
with a label coupling C and a signature S (``docs/maths.md``):

* :class:`~lowrank_gcrf.general.GeneralOperator`, ``λI + AᵀA``: ``U = A`` (D, N), k = 1,
  ``C = [1]``, S = I (Eq. 5, matvec Eq. 13);
* :class:`~lowrank_gcrf.potts.PottsOperator`, ``λI + (J_L − I_L) ⊗ ÂᵀÂ``: ``U = Â`` (D, P),
  k = L, ``C = J_L − I_L``, S = I (Eq. 12, matvec Eq. 15–16);
* :class:`~lowrank_gcrf.signed.SignedOperator`, ``λI + AᵀA − ΓᵀΓ``: ``U = [A; Γ]``
  (D + E, N), k = 1, ``C = [1]``, ``S = diag(I_D, −I_E)``
  (``docs/maths.md#the-signed-model``).

An operator validates its embeddings and λ once and never changes. Solver state is a value:
:meth:`GCRFOperator.factor` returns a :class:`Factorization`, every solve reports the one it
used in ``info.factorization``, and :meth:`GCRFOperator.solve` and :meth:`GCRFOperator.vjp`
take it back (``factorization=``), so that a backward pass reuses its forward's work without
a cache that could go stale. The checks of their inputs are :mod:`lowrank_gcrf.operator_inputs`,
the outer solve loop, by CG or by exact solves, :mod:`lowrank_gcrf.solve_driver`, and the
vjp's gradients :mod:`lowrank_gcrf.embedding_gradients`.
"""

from __future__ import annotations

import copy
from typing import Any

from array_api_compat import device as _device

from .dtypes import cast_result, floating_dtypes, results_checked
from .embedding_gradients import embedding_and_lam_gradients
from .factorization import Factorization
from .info import SolveInfo
from .operator_inputs import check_owner, check_system_input, promoted_operator
from .options import solver_options
from .solve_driver import report_failure, solve_rows
from .threads import core_method
from .validation import array_namespace, as_lam, check_array, check_embeddings, check_finite

#: A system whose distance from singular, relative to λ (Potts: ``(λ − ‖Â‖₂²)/λ``; signed:
#: the smallest eigenvalue of ``I − Γ(λI + AᵀA)⁻¹Γᵀ``), is at most this many ε of its dtype
#: cannot be told from singular: correct computations of ‖Â‖₂² (SVD, either Gram's
#: eigenvalues) differ by up to about 13ε (measured for D ≤ 128, P ≤ 2000), so a λ set to
#: "‖Â‖₂²" may land on either side of ours; and with κ·ε ≥ L/16 no solve in the dtype means
#: anything. A failed system farther from singular is reported as ill-conditioned (a
#: ConvergenceError), which it is: a bound of the worst-case rounding, 2(D + n)ε, would
#: call singular float32 systems that reach a relative residual of 1e-3.
SINGULAR_ULPS = 16


class GCRFOperator:
    """Common part of the model operators (not used directly).

    Parameters
    ----------
    embeddings : array (..., D, n)
        ``A`` (general, n = N), ``Â`` (Potts, n = P) or ``[A; Γ]`` (signed, n = N).
    lam : float or array of the batch shape
        λ > 0.
    """

    #: name of the embedding argument in messages
    embedding_name = "A"
    #: layout of the right-hand side in messages
    rhs_layout = "(..., N)"
    #: the condition number, for ConvergenceError messages
    condition_hint = "κ = 1 + ‖A‖₂²/λ"
    #: whether every solve must factor something to prove M positive definite (Potts, and
    #: signed with Γ)
    factors_to_check_definiteness = False

    def __init__(self, embeddings: Any, lam: Any, *, num_rows: int):
        check_array(embeddings, self.embedding_name)
        xp = array_namespace(embeddings)
        check_embeddings(xp, embeddings, self.embedding_name)
        compute, self._input_dtype = floating_dtypes(xp, **{self.embedding_name: embeddings})
        check_finite(xp, embeddings, self.embedding_name)
        self._xp = xp
        self._source = (embeddings, lam)
        self._U = xp.astype(embeddings, compute, copy=False)
        self._num_rows = num_rows
        self._lam = as_lam(xp, lam, self.batch_shape, compute, _device(self._U))
        self._lam_rows = self._lam[..., None, None]
        self._token = object()

    # -- structure (read-only) -----------------------------------------------------------

    @property
    def xp(self) -> Any:
        """The array namespace of the operator."""
        return self._xp

    @property
    def U(self) -> Any:
        """The embeddings in the compute dtype, (..., D, n)."""
        return self._U

    @property
    def lam(self) -> Any:
        """λ as an array of the batch shape, in the compute dtype."""
        return self._lam

    @property
    def dtype(self) -> Any:
        """The dtype the operator computes in (float32 or float64)."""
        return self._U.dtype

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """The leading batch shape of the embeddings."""
        return tuple(self._U.shape[:-2])

    @property
    def rank(self) -> int:
        """D, the embedding dimension."""
        return int(self._U.shape[-2])

    @property
    def num_rows(self) -> int:
        """k, the rows of one system's unknowns (L for Potts, 1 for the other models)."""
        return self._num_rows

    @property
    def row_shape(self) -> tuple[int, int]:
        """Shape (k, n) of one system's unknowns in the internal row layout."""
        return (self._num_rows, int(self._U.shape[-1]))

    def _rebuild(self, embeddings: Any, lam: Any) -> GCRFOperator:
        """The same model on other embeddings (used to promote to float64)."""
        raise NotImplementedError

    def _couple(self, Q: Any) -> Any:
        """Apply the label coupling C to per-row products Q (..., k, m); it mixes rows only."""
        raise NotImplementedError

    def _to_rows(self, v: Any) -> Any:
        raise NotImplementedError

    def _from_rows(self, v: Any) -> Any:
        raise NotImplementedError

    def _public_system_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def matvec(self, v: Any) -> Any:
        """``M v`` for v in the internal row layout (..., k, n), never forming M.

        ``C (v Uᵀ) U`` is one (k, n)@(n, D) and one (k, D)@(D, n) product for all rows. The
        label coupling C mixes rows only, so it commutes with the product by U and acts on
        the small (k, D) product instead of the (k, n) result: two passes over v fewer.
        """
        Ut = self.xp.matrix_transpose(self._U)
        return self._lam_rows * v + self._couple(v @ Ut) @ self._U

    def system_at(self, index: tuple[int, ...]) -> GCRFOperator:
        """System ``index`` of the batch as an operator of its own, sharing the memory (its
        parts were validated with the batch)."""
        part = copy.copy(self)
        part._U = self._U[index]
        part._lam = self._lam[index]
        part._lam_rows = part._lam[..., None, None]
        return part

    # -- exact low-rank factorization ------------------------------------------------------

    @core_method
    def factor(self) -> Factorization:
        """Factor the exact low-rank solver (``docs/maths.md#exact-low-rank-solves``).

        Returns
        -------
        Factorization
            Pass it to :meth:`solve` and :meth:`vjp` (``factorization=``) to reuse it.

        Raises
        ------
        IndefiniteSystemError
            M is not positive definite (Potts: λ ≤ ‖Â‖₂²; signed: ΓᵀΓ outweighs
            λI + AᵀA along some direction).

        Examples
        --------
        >>> import numpy as np
        >>> import lowrank_gcrf as lg
        >>> rng = np.random.default_rng(0)
        >>> op = lg.GeneralOperator(rng.standard_normal((4, 30)) / 4, 1.0)
        >>> f = op.factor()                                   # factor once ...
        >>> x1, _ = op.solve(rng.standard_normal(30), factorization=f)
        >>> x2, info = op.solve(rng.standard_normal(30), factorization=f)   # ... solve many
        >>> info.method
        'direct'
        """
        return Factorization(self._token, solver=self._factorize())

    def _factorize(self) -> Any:
        raise NotImplementedError

    def _certify(self) -> Factorization | None:
        """Prove M positive definite, where that needs a factorization (Potts, signed)."""
        return None

    def _cg_factorization(self) -> Factorization | None:
        """What a CG solve prepares: the proof of definiteness where one is needed, with the
        capacitance system where CG iterates on it (:mod:`lowrank_gcrf.capacitance`)."""
        return self._certify() if self.factors_to_check_definiteness else None

    # -- solves ----------------------------------------------------------------------------

    def _rows(self, v: Any) -> Any:
        """A checked input in the row layout and the compute dtype."""
        return self._to_rows(self.xp.astype(v, self.dtype, copy=False))

    @core_method
    def solve(
        self,
        b: Any,
        *,
        method: str = "auto",
        rtol: float = 1e-5,
        atol: float = 0.0,
        maxiter: int | None = None,
        x0: Any = None,
        on_failure: str = "raise",
        factorization: Factorization | None = None,
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
        on_failure : {"raise", "warn", "ignore"}
            What a system above tolerance does: raise :class:`ConvergenceError`, warn with
            :class:`ConvergenceWarning`, or nothing; the last two return the best iterate.
        factorization : Factorization, optional
            This operator's factorization, from :meth:`factor` or an earlier solve's info.

        Returns
        -------
        x : array shaped like b, in the promoted dtype of the embeddings and b
        info : SolveInfo
            ``info.factorization`` holds the factorization used (None for a CG solve that
            needed none).

        Raises
        ------
        IndefiniteSystemError, ConvergenceError, GCRFError

        Examples
        --------
        >>> import numpy as np
        >>> import lowrank_gcrf as lg
        >>> rng = np.random.default_rng(0)
        >>> op = lg.GeneralOperator(rng.standard_normal((4, 30)) / 4, 1.0)
        >>> x, info = op.solve(rng.standard_normal(30), method="cg", rtol=1e-8)
        >>> info.method, bool(info.residual <= 1e-8)
        ('cg', True)
        """
        options = solver_options(
            method=method, rtol=rtol, atol=atol, maxiter=maxiter, on_failure=on_failure
        )
        check_owner(self, factorization)
        check_system_input(self, b, "b")
        if x0 is not None:
            check_system_input(self, x0, "x0")
        op, out_dtype = promoted_operator(self, b)
        if op is not self:
            factorization = None
        x0_rows = None if x0 is None else op._rows(x0)
        x, scale, info = solve_rows(op, op._rows(b), x0_rows, options, factorization)
        with results_checked():
            x = op._from_rows(cast_result(op.xp, x * scale[..., None, None], out_dtype, "x"))
        report_failure(op, x, info, options)
        return x, info

    def _diagnose_failure(self, info: SolveInfo) -> None:
        """Raise a more precise error than ConvergenceError where the model knows one."""

    def _rounding_bound(self, dtype: Any = None) -> float:
        """γ = 2(D + n)ε of ``dtype`` (default: the compute dtype): a bound on the relative
        rounding of a Gram or a sum of squares of the embeddings in that dtype, for what
        must hold whatever the rounding (a certificate of definiteness)."""
        n = self._U.shape[-2] + self._U.shape[-1]
        return 2.0 * n * float(self.xp.finfo(self._U.dtype if dtype is None else dtype).eps)

    def _singular_tolerance(self) -> float:
        """The relative distance from singular, ``SINGULAR_ULPS``·ε of the compute dtype,
        within which a definite system that failed to solve is reported as singular in the
        working precision rather than as ill-conditioned."""
        return SINGULAR_ULPS * float(self.xp.finfo(self._U.dtype).eps)

    # -- gradients -------------------------------------------------------------------------

    def _gradient_rows(self, x: Any, g: Any) -> tuple[Any, Any]:
        """Rows (l, r) such that ∂L/∂U = −[(U lᵀ) r + (U rᵀ) l]."""
        raise NotImplementedError

    def _embedding_signature(self, small: Any) -> Any:
        """Rows of the small (..., D, 2m) gradient factor times the signature S of ``UᵀSU``.

        Identity here (S = I); the signed model, ``λI + UᵀSU`` with S = diag(I, −I), flips
        the sign of its attractive rows.
        """
        return small

    @core_method
    def vjp(
        self,
        x: Any,
        gx: Any,
        *,
        method: str = "auto",
        rtol: float = 1e-5,
        atol: float = 0.0,
        maxiter: int | None = None,
        on_failure: str = "raise",
        factorization: Factorization | None = None,
    ) -> tuple[Any, Any, Any, SolveInfo]:
        """Vector-Jacobian product of ``x = M⁻¹ b`` (Eq. 2–3, 6, 10 and their analogues).

        With ``g = M⁻¹ gx`` (Eq. 6, solved by the same method, reusing ``factorization``):
        ``∂L/∂b = g``, ``∂L/∂λ = −gᵀx`` per system, and for the embeddings
        ``∂L/∂U = −S Σᵢⱼ Cᵢⱼ [(U gᵢ) xⱼᵀ + (U xᵢ) gⱼᵀ]`` — the general case (C = 1, S = I) is
        Eq. 10 written matrix-free, ``−[(Ag)xᵀ + (Ax)gᵀ]``; Potts has C = J − I, and the
        signed model's S flips the sign for Γ's rows (``docs/maths.md#gradients``). The
        cotangent is solved at unit scale and the scale folded into the small factor, so
        that tiny float32 cotangents do not underflow; zero cotangents give zero gradients.

        Parameters
        ----------
        x : array
            The solution returned by :meth:`solve` (public layout).
        gx : array
            ``∂L/∂x``, shaped like x.
        method, rtol, atol, maxiter, on_failure, factorization
            As for :meth:`solve`, for the backward solve.

        Returns
        -------
        g_embeddings : array shaped like the embeddings
        g_b : array shaped like x
        g_lam : array of the batch shape
        info : SolveInfo of the backward solve

        Examples
        --------
        >>> import numpy as np
        >>> import lowrank_gcrf as lg
        >>> rng = np.random.default_rng(0)
        >>> op = lg.PottsOperator(rng.standard_normal((4, 20)) / 10, 1.0, num_labels=3)
        >>> x, info = op.solve(rng.standard_normal((3, 20)), method="direct")
        >>> gAhat, gb, glam, binfo = op.vjp(x, np.ones_like(x), factorization=info.factorization)
        >>> gAhat.shape, binfo.method                         # the forward's factorization reused
        ((4, 20), 'direct')
        """
        options = solver_options(
            method=method, rtol=rtol, atol=atol, maxiter=maxiter, on_failure=on_failure
        )
        check_owner(self, factorization)
        check_system_input(self, x, "x")
        check_system_input(self, gx, "gx")
        op, out_dtype = promoted_operator(self, x)
        if op is not self:
            factorization = None
        g, scale, info = solve_rows(op, op._rows(gx), None, options, factorization)
        with results_checked():
            g_b = cast_result(op.xp, g * scale[..., None, None], out_dtype, "the gradient of b")
        g_b = op._from_rows(g_b)
        report_failure(op, g_b, info, options)
        g_U, g_lam = embedding_and_lam_gradients(op, op._rows(x), g, scale, out_dtype)
        return g_U, g_b, g_lam, info
