"""The dense G-CRF system matrices as immutable, matrix-free operators with solve and VJP.

Every model is ``M = λI + C ⊗ (UᵀU)`` acting on unknowns laid out as rows ``(..., k, n)``
(see ``docs/maths.md``):

* :class:`~lowrank_gcrf.general.GeneralOperator`: ``U = A`` (D, N), k = 1, ``C = [1]``
  (Eq. 5, matvec Eq. 13);
* :class:`~lowrank_gcrf.potts.PottsOperator`: ``U = Â`` (D, P), k = L, ``C = J_L − I_L``
  (Eq. 12, matvec Eq. 15–16).

An operator validates its embeddings and λ once and never changes. Solver state is a value:
:meth:`GCRFOperator.factor` returns a :class:`Factorization`, every solve reports the one it
used in ``info.factorization``, and :meth:`GCRFOperator.solve` and :meth:`GCRFOperator.vjp`
take it back (``factorization=``), so that a backward pass reuses its forward's work without
a cache that could go stale.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from array_api_compat import device as _device

from .cg import cg_sweep, cg_sweeps_in_turn, inner, power_of_two_scale
from .dtypes import cast_result, check_floating, dtype_name, floating_dtypes, promote
from .errors import ConvergenceError, ConvergenceWarning, GCRFError
from .fused import to_host
from .info import SolveInfo
from .method import choose_method, default_maxiter
from .options import SolverOptions, solver_options
from .refinement import residual_correction
from .validation import (
    array_namespace,
    as_lam,
    check_embeddings,
    check_finite,
    check_system_shape,
    is_numpy,
)

# A GPU should not be synchronised with the host at every CG step.
_DEVICE_CHECK_EVERY = 8


@dataclass(frozen=True)
class Factorization:
    """The exact low-rank factorization of one operator: a value, never a cache.

    Attributes
    ----------
    solver : object or None
        Applies ``M⁻¹`` (``solver.apply(v)``); None when only positive definiteness was
        established (a Potts solve by CG factors the deviation capacitance alone).
    certificate : object or None
        How M was proved positive definite (Potts: ``"frobenius"`` or ``"cholesky"``), so
        that later CG solves with this factorization need not prove it again.
    capacitance : object or None
        Where a CG solve iterates when not on the unknowns themselves: the k×D capacitance
        system built on the Gram (:class:`~lowrank_gcrf.capacitance.CapacitanceSystem`),
        for Potts with D < P (on the proof's Gram) and the general model with D ≤ 128.
    """

    owner: object = field(repr=False)
    solver: Any = field(default=None, repr=False)
    certificate: Any = field(default=None, repr=False)
    capacitance: Any = field(default=None, repr=False)

    @property
    def complete(self) -> bool:
        """Whether it can apply ``M⁻¹`` (a direct solve needs that)."""
        return self.solver is not None


class GCRFOperator:
    """Common part of the model operators (not used directly).

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
    #: the condition number, for ConvergenceError messages
    condition_hint = "κ = 1 + ‖A‖₂²/λ"
    #: whether every solve must factor something to prove M positive definite (Potts)
    factors_to_check_definiteness = False

    def __init__(self, embeddings: Any, lam: Any, *, num_rows: int):
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
        """k, the rows of one system's unknowns (1 general, L Potts)."""
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

    def factor(self) -> Factorization:
        """Factor the exact low-rank solver (``docs/maths.md#exact-low-rank-solves``).

        Returns
        -------
        Factorization
            Pass it to :meth:`solve` and :meth:`vjp` (``factorization=``) to reuse it.

        Raises
        ------
        IndefiniteSystemError
            M is not positive definite (Potts: λ ≤ ‖Â‖₂²).

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
        """Prove M positive definite, where that needs a factorization (Potts)."""
        return None

    def _cg_factorization(self) -> Factorization | None:
        """What a CG solve prepares: the proof of definiteness where one is needed, with the
        capacitance system where CG iterates on it (:mod:`lowrank_gcrf.capacitance`)."""
        return self._certify() if self.factors_to_check_definiteness else None

    def _checked(self, factorization: Factorization | None) -> Factorization | None:
        if factorization is not None and factorization.owner is not self._token:
            raise GCRFError(
                "this factorization belongs to another operator: pass the one returned by "
                "this operator's factor() or in the info of its own solve"
            )
        return factorization

    # -- solves ----------------------------------------------------------------------------

    def _check_array(self, v: Any, name: str) -> None:
        """``v`` is a floating array of the operator's array library (``array_namespace``
        raises a GCRFTypeError for a foreign one)."""
        array_namespace(self._U, v)
        check_floating(dtype_name(v.dtype), name)

    def _prepare(self, v: Any, name: str) -> Any:
        """Validate a system-shaped input and return it in the row layout, compute dtype."""
        self._check_array(v, name)
        expected = self.batch_shape + self._public_system_shape()
        check_system_shape(tuple(v.shape), expected, name, self.rhs_layout)
        check_finite(self.xp, v, name)
        return self._to_rows(self.xp.astype(v, self.dtype, copy=False))

    def _promoted_for(self, v: Any, name: str) -> GCRFOperator:
        """This operator, or its float64 twin when ``v`` is float64 and it is not."""
        self._check_array(v, name)
        compute, _ = promote(dtype_name(self._input_dtype), dtype_name(v.dtype))
        if compute == dtype_name(self.dtype):
            return self
        embeddings, lam = self._source
        return self._rebuild(self.xp.astype(embeddings, self.xp.float64), lam)

    def _output_dtype(self, v: Any) -> Any:
        """The dtype of results computed from the embeddings and ``v``."""
        return floating_dtypes(self.xp, **{self.embedding_name: self._source[0], "b": v})[1]

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
        self._checked(factorization)
        op = self._promoted_for(b, "b")
        if op is not self:
            factorization = None
        b_rows = op._prepare(b, "b")
        x0_rows = None if x0 is None else op._prepare(x0, "x0")
        out_dtype = op._output_dtype(b)
        x, scale, info = op._solve_rows(b_rows, x0_rows, options, factorization)
        x = op._from_rows(cast_result(op.xp, x * scale[..., None, None], out_dtype, "x"))
        op._report_failure(x, info, options)
        return x, info

    def _solve_rows(
        self, b: Any, x0: Any, options: SolverOptions, factorization: Factorization | None
    ) -> tuple[Any, Any, SolveInfo]:
        """Solve on unit-scaled right-hand sides; ``(x / scale, scale, info)``.

        The power-of-two scaling keeps ``‖b‖²`` representable (a float32 b of 1e20 would
        square to inf and a float32 b of 1e-25 to 0), exactly.
        """
        xp = self.xp
        method = choose_method(options.method, self)
        maxiter = default_maxiter(method, self) if options.maxiter is None else options.maxiter
        if method == "direct" and not (factorization and factorization.complete):
            factorization = self.factor()
        elif factorization is None:
            factorization = self._cg_factorization()
        scale = power_of_two_scale(xp, b)
        b = b / scale[..., None, None]
        x0 = None if x0 is None else x0 / scale[..., None, None]
        bnorm = xp.sqrt(inner(xp, b, b))
        tol = xp.maximum(options.rtol * bnorm, options.atol / scale)
        x, iterations, rr = residual_correction(
            xp, self.matvec, b, x0, tol, maxiter, self._correction(method, tol, factorization)
        )
        rnorm = xp.sqrt(rr)
        residual = xp.where(bnorm > 0, rnorm / xp.where(bnorm > 0, bnorm, 1.0), rnorm * scale)
        info = SolveInfo(
            method=method,
            # asarray: NumPy reduces unbatched results to scalars, which are not arrays.
            iterations=xp.asarray(iterations),
            residual=xp.asarray(residual),
            converged=xp.asarray(rnorm <= tol),
            factorization=factorization,
        )
        return x, scale, info

    def _correction(self, method: str, tol: Any, factorization: Factorization | None) -> Any:
        """The step of :func:`residual_correction` for ``method``.

        ``"cg"``: a CG sweep on the residual system. ``"direct"``: the exact low-rank solve
        ``M⁻¹ r`` — the first step from x = 0 is the Woodbury solve itself, later ones are
        iterative refinement (Woodbury is subtractive and loses about log10(κ) digits).
        """
        xp = self.xp
        if method == "cg":
            capacitance = factorization.capacitance if factorization is not None else None
            space = self if capacitance is None else capacitance
            sweep = self._cg_sweep(space, tol)

            def cg_step(x: Any, r: Any, rr: Any, active: Any, budget: int, first: bool) -> Any:
                # A restart follows a sweep whose recurrence met tol while the true residual
                # did not (finite precision): aim it below tol so that it lands under it.
                target = tol if first else 0.5 * tol
                if capacitance is None:
                    return sweep(x, r, rr, active, target * target, budget)
                # Z = 0 already meets the target where r has no part in U's row space (U = 0
                # among others), and CG would break down on that zero right-hand side.
                rhs = capacitance.project(r)
                rr_z = inner(xp, rhs, rhs)
                tol2_z = capacitance.tolerance_squared(target)
                z, steps = sweep(
                    xp.zeros_like(rhs), rhs, rr_z, active & (rr_z > tol2_z), tol2_z, budget
                )
                return x + capacitance.lift(r, z, active), steps

            return cg_step
        solver = factorization.solver

        def direct_step(x: Any, r: Any, rr: Any, active: Any, budget: int, first: bool) -> Any:
            step = xp.where(active[..., None, None], solver.apply(r), xp.zeros_like(r))
            return x + step, xp.astype(active, xp.int64)

        return direct_step

    def _cg_sweep(self, space: Any, tol: Any) -> Callable[..., tuple[Any, Any]]:
        """``sweep(x, r, rr, active, tol2, budget)``: one CG sweep on ``space`` (this operator
        or a capacitance system), a NumPy batch one system after another."""
        xp = self.xp
        if is_numpy(xp) and tol.shape == self.batch_shape and tol.size > 1:
            systems = [space.system_at(index).matvec for index in np.ndindex(tol.shape)]

            def in_turn(x: Any, r: Any, rr: Any, active: Any, tol2: Any, budget: int) -> Any:
                return cg_sweeps_in_turn(systems, x, r, rr, active, tol2, budget)

            return in_turn
        check_every = 1 if is_numpy(xp) else _DEVICE_CHECK_EVERY

        def batched(x: Any, r: Any, rr: Any, active: Any, tol2: Any, budget: int) -> Any:
            return cg_sweep(xp, space.matvec, x, r, rr, active, tol2, budget, check_every)

        return batched

    def _diagnose_failure(self, info: SolveInfo) -> None:
        """Raise a more precise error than ConvergenceError where the model knows one."""

    def _report_failure(self, x: Any, info: SolveInfo, options: SolverOptions) -> None:
        """Apply the ``on_failure`` policy to systems above tolerance."""
        xp = self.xp
        # "ignore" asks for the iterate as it is: no diagnosis (it can cost an eigensolve).
        if options.on_failure == "ignore" or bool(to_host(xp, xp.all(info.converged))):
            return
        self._diagnose_failure(info)
        failed = ~info.converged
        count = int(xp.sum(xp.astype(failed, xp.int64)))
        worst = float(xp.max(xp.where(failed, info.residual, xp.zeros_like(info.residual))))
        iters = int(xp.max(info.iterations))
        what = "CG iterations" if info.method == "cg" else "exact solves (with refinement)"
        message = (
            f"{info.method} solve did not reach rtol={options.rtol:g}, atol={options.atol:g} in "
            f"{count} of {info.converged.size} system(s): relative residual {worst:.3g} after "
            f"{iters} {what}. The system is too ill-conditioned for the dtype "
            f"{dtype_name(self.dtype)} ({self.condition_hint}): raise rtol, increase lam, use "
            "float64, or raise maxiter."
        )
        if options.on_failure == "raise":
            raise ConvergenceError(message, x=x, info=info)
        if options.on_failure == "warn":
            warnings.warn(message, ConvergenceWarning, stacklevel=4)

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
        """Vector-Jacobian product of ``x = M⁻¹ b`` (Eq. 2–3, 6, 10 and the Potts analogue).

        With ``g = M⁻¹ gx`` (Eq. 6, solved by the same method, reusing ``factorization``):
        ``∂L/∂b = g``, ``∂L/∂λ = −gᵀx`` per system, and for the embeddings
        ``∂L/∂U = −Σᵢⱼ Cᵢⱼ [(U gᵢ) xⱼᵀ + (U xᵢ) gⱼᵀ]`` — the general case (C = 1) is Eq. 10
        written matrix-free, ``−[(Ag)xᵀ + (Ax)gᵀ]`` (``docs/maths.md#gradients``). The
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
        self._checked(factorization)
        op = self._promoted_for(x, "x")
        if op is not self:
            return op.vjp(x, gx, **options.as_kwargs())
        xp = self.xp
        x_rows = self._prepare(x, "x")
        gx_rows = self._prepare(gx, "gx")
        out_dtype = self._output_dtype(x)
        g, scale, info = self._solve_rows(gx_rows, None, options, factorization)
        g_b = cast_result(xp, g * scale[..., None, None], out_dtype, "the gradient of b")
        self._report_failure(self._from_rows(g_b), info, options)
        left, right = self._gradient_rows(x_rows, g)
        # −[(U lᵀ) r + (U rᵀ) l] as one (D, 2m) @ (2m, n) product, with −scale folded into
        # the small factor, so that the only (D, n) array allocated is the result.
        small = self._U @ xp.matrix_transpose(xp.concat([left, right], axis=-2))
        small = self._embedding_signature(small * (-scale)[..., None, None])
        g_U = small @ xp.concat([right, left], axis=-2)
        g_lam = -inner(xp, g, x_rows) * scale
        return (
            cast_result(xp, g_U, self._input_dtype, f"the gradient of {self.embedding_name}"),
            self._from_rows(g_b),
            cast_result(xp, g_lam, out_dtype, "the gradient of lam"),
            info,
        )
