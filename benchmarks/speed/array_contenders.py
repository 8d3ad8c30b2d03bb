"""The contenders that run on the device's array library (NumPy or CuPy): ours, SciPy's CG
and the dense Cholesky factorization."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import lowrank_gcrf as lg
from lowrank_gcrf.method import default_maxiter
from lowrank_gcrf.models import make_operator

from .contender_interface import Contender, Run
from .measure import Device
from .problems import Problem

#: Largest N for which the dense Cholesky contender forms the N×N matrix (float64: 512 MB).
MAX_DENSE_UNKNOWNS = 8000


def _array_inputs(problem: Problem, device: Device, context: dict[str, Any]) -> SimpleNamespace:
    return SimpleNamespace(
        model=problem.model,
        U=device.asarray(problem.embeddings),
        b=device.asarray(problem.b),
        gx=device.asarray(problem.gx),
        lam=problem.lam,
        labels=problem.labels,
        rtol=context["rtol"],
        xp=device.xp,
        device=device,
    )


def _operator(inputs: SimpleNamespace, U: Any = None) -> lg.GCRFOperator:
    """Our operator for the inputs' embeddings (or for ``U``, one system's)."""
    U = inputs.U if U is None else U
    return make_operator(inputs.model, U, inputs.lam, num_labels=inputs.labels)


class Ours(Contender):
    """:mod:`lowrank_gcrf` with ``method`` = "auto", "direct" or "cg"."""

    def __init__(self, method: str):
        self.method = method
        self.name = f"ours-{method}"

    def prepare(self, problem: Problem, device: Device, context: dict[str, Any]) -> Any:
        return _array_inputs(problem, device, context)

    def forward(self, inputs: Any) -> Run:
        x, info = _operator(inputs).solve(inputs.b, method=self.method, rtol=inputs.rtol)
        return Run(x, None, [info.iterations], info.method, [info.converged])

    def forward_backward(self, inputs: Any) -> Run:
        op = _operator(inputs)
        x, info = op.solve(inputs.b, method=self.method, rtol=inputs.rtol)
        # The backward reuses the forward's factorization, as the adapters do.
        gU, gb, glam, binfo = op.vjp(
            x,
            inputs.gx,
            method=self.method,
            rtol=inputs.rtol,
            factorization=info.factorization,
        )
        return Run(
            x,
            (gU, gb, glam),
            [info.iterations, binfo.iterations],
            info.method,
            [info.converged, binfo.converged],
        )


def gradients(xp: Any, model: str, U: Any, x: Any, g: Any) -> tuple[Any, Any, Any]:
    """(∂L/∂U, ∂L/∂b, ∂L/∂λ) of one system from its solution x and ``g = M⁻¹ gx``.

    See docs/maths.md (gradients): general ``−[(Ag)xᵀ + (Ax)gᵀ]``; Potts
    ``−[(ÂS_g)S_xᵀ + (ÂS_x)S_gᵀ − Σₖ((Âgₖ)xₖᵀ + (Âxₖ)gₖᵀ)]``; ``∂L/∂b = g``,
    ``∂L/∂λ = −gᵀx``. x and g are (N,) general, (L, P) Potts.
    """
    if model == "general":
        gU = -(xp.outer(U @ g, x) + xp.outer(U @ x, g))
    else:
        s_x, s_g = xp.sum(x, axis=0), xp.sum(g, axis=0)
        gU = -(xp.outer(U @ s_g, s_x) + xp.outer(U @ s_x, s_g) - (U @ g.T) @ x - (U @ x.T) @ g)
    return gU, g, -xp.sum(g * x)


def _stack_gradients(xp: Any, per_system: list[tuple[Any, Any, Any]]) -> tuple[Any, Any, Any]:
    return tuple(xp.stack(parts) for parts in zip(*per_system, strict=True))


class ScipyCG(Contender):
    """``scipy.sparse.linalg.cg`` (cupyx on CUDA) on a matrix-free ``LinearOperator``."""

    name = "scipy-cg"

    def prepare(self, problem: Problem, device: Device, context: dict[str, Any]) -> Any:
        inputs = _array_inputs(problem, device, context)
        # The same iteration budget as ours-cg's default.
        inputs.maxiter = default_maxiter("cg", _operator(inputs, inputs.U[0]))
        return inputs

    @staticmethod
    def _system(inputs: Any, i: int) -> Any:
        U, lam, L = inputs.U[i], inputs.lam, inputs.labels
        n = inputs.b.shape[-1] if inputs.model == "general" else L * U.shape[-1]

        if inputs.model == "general":

            def matvec(v: Any) -> Any:
                v = v.ravel()
                return lam * v + U.T @ (U @ v)
        else:

            def matvec(v: Any) -> Any:
                V = v.reshape(L, -1)
                Q = (V @ U.T) @ U
                return (lam * V + Q.sum(axis=0) - Q).ravel()

        return inputs.device.sparse_linalg.LinearOperator((n, n), matvec=matvec, dtype=U.dtype)

    def _solve(self, inputs: Any, rhs: Any) -> tuple[Any, list[int], list[bool]]:
        xs, iterations, converged = [], [], []
        for i in range(rhs.shape[0]):
            x, info, its = inputs.device.cg(
                self._system(inputs, i), rhs[i].ravel(), inputs.rtol, inputs.maxiter
            )
            xs.append(x.reshape(rhs.shape[1:]))
            iterations.append(its)
            converged.append(info == 0)
        return inputs.xp.stack(xs), iterations, converged

    def forward(self, inputs: Any) -> Run:
        x, its, ok = self._solve(inputs, inputs.b)
        return Run(x, None, [its], None, [ok])

    def forward_backward(self, inputs: Any) -> Run:
        x, its, ok = self._solve(inputs, inputs.b)
        g, bits, bok = self._solve(inputs, inputs.gx)
        grads = _stack_gradients(
            inputs.xp,
            [
                gradients(inputs.xp, inputs.model, inputs.U[i], x[i], g[i])
                for i in range(x.shape[0])
            ],
        )
        return Run(x, grads, [its, bits], None, [ok, bok])


class DenseCholesky(Contender):
    """The explicitly formed N×N matrix, factored once by Cholesky per system."""

    name = "dense-cholesky"

    def skip_reason(self, problem: Problem, device: Device, context: dict[str, Any]) -> str | None:
        if problem.unknowns > MAX_DENSE_UNKNOWNS:
            return f"N = {problem.unknowns} > {MAX_DENSE_UNKNOWNS}: the N×N matrix is too large"
        return None

    def prepare(self, problem: Problem, device: Device, context: dict[str, Any]) -> Any:
        return _array_inputs(problem, device, context)

    @staticmethod
    def _solver(inputs: Any, i: int) -> Any:
        xp, U, L = inputs.xp, inputs.U[i], inputs.labels
        K = U.T @ U
        if inputs.model == "potts":
            coupling = xp.ones((L, L), dtype=U.dtype) - xp.eye(L, dtype=U.dtype)
            K = xp.kron(coupling, K)
        K += inputs.lam * xp.eye(K.shape[0], dtype=U.dtype)
        return inputs.device.spd_solver(K)

    def _run(self, inputs: Any, backward: bool) -> Run:
        xp = inputs.xp
        xs, per_system = [], []
        for i in range(inputs.b.shape[0]):
            solve = self._solver(inputs, i)
            shape = inputs.b.shape[1:]
            x = solve(inputs.b[i].ravel()).reshape(shape)
            xs.append(x)
            if backward:
                g = solve(inputs.gx[i].ravel()).reshape(shape)
                per_system.append(gradients(xp, inputs.model, inputs.U[i], x, g))
        grads = _stack_gradients(xp, per_system) if backward else None
        return Run(xp.stack(xs), grads)

    def forward(self, inputs: Any) -> Run:
        return self._run(inputs, backward=False)

    def forward_backward(self, inputs: Any) -> Run:
        return self._run(inputs, backward=True)
