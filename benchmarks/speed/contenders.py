"""The implementations compared by the speed benchmark, behind one interface.

Each :class:`Contender` turns a :class:`~benchmarks.problems.Problem` into its own inputs
(:meth:`~Contender.prepare`, not timed) and then solves ``M x = b`` (``forward``) or solves
and back-propagates the cotangent ``gx`` to the embeddings, b and λ
(``forward_backward``). Results come back as :class:`Run` objects, converted to NumPy only
after the clock has stopped (:meth:`Run.outcome`).

* ``ours-auto``, ``ours-direct``, ``ours-cg``: :mod:`lowrank_gcrf`'s operators; the
  backward pass reuses the forward's operator (and so its cached factorization).
* ``scipy-cg``: ``scipy.sparse.linalg.cg`` on a ``LinearOperator`` with the same matvec,
  one system at a time; backward = a second CG solve plus the same gradient formula.
* ``dense-cholesky``: the N×N matrix formed and factored (``scipy.linalg.cho_factor``),
  only while N ≤ :data:`MAX_DENSE_UNKNOWNS`.
* ``linear-operator``: GPyTorch's ``linear_operator`` Woodbury solve of
  ``LowRankRootAddedDiagLinearOperator`` with torch autograd (general model only; see
  :data:`LINEAR_OPERATOR_POTTS`).
* ``torch-unrolled-cg``: CG written in torch for as many iterations as ``ours-cg`` needed,
  differentiated by autograd through every iteration — the memory cost of not having an
  analytic backward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np

import lowrank_gcrf as lg
from lowrank_gcrf.method import default_maxiter
from lowrank_gcrf.models import make_operator

from .measure import Device
from .problems import Problem

#: Largest N for which the dense Cholesky contender forms the N×N matrix (float64: 512 MB).
MAX_DENSE_UNKNOWNS = 8000

#: Why the linear_operator contender has no Potts form.
LINEAR_OPERATOR_POTTS = (
    "no clean Potts form: KroneckerProductLinearOperator(J − I, ÂᵀÂ) + λI is solved through "
    "a symmetric eigendecomposition of each Kronecker factor that clamps negative "
    "eigenvalues to 0 (LinearOperator._symeig: 'chop any negative eigenvalues'), and J − I "
    "has the eigenvalue −1, so its solutions are wrong (checked at P = 1681, L = 21, "
    "D = 128 in float64: max error ≈ the solution's own size at λ = 1.01‖Â‖₂², ≈ 17 % at "
    "λ = 2‖Â‖₂²)"
)


@dataclass
class Outcome:
    """A contender's result in NumPy: solution, gradients and solver statistics."""

    x: np.ndarray
    grads: tuple[np.ndarray, np.ndarray, np.ndarray] | None
    iterations: list[int]
    method: str | None
    converged: bool


@dataclass
class Run:
    """What a timed call returns: arrays still on the device, statistics unconverted."""

    x: Any
    grads: tuple[Any, Any, Any] | None = None
    iterations: list[Any] = field(default_factory=list)
    method: str | None = None
    converged: list[Any] = field(default_factory=list)

    def outcome(self, device: Device) -> Outcome:
        """Convert to NumPy (after timing: on a GPU this synchronises)."""
        grads = None
        if self.grads is not None:
            grads = tuple(device.to_numpy(g) for g in self.grads)
        return Outcome(
            x=device.to_numpy(self.x),
            grads=grads,
            iterations=[int(np.max(device.to_numpy(i))) for i in self.iterations],
            method=self.method,
            converged=all(bool(np.all(device.to_numpy(c))) for c in self.converged),
        )


class Contender:
    """Interface of a benchmarked implementation (not used directly).

    Attributes
    ----------
    name : str
    library : {"array", "torch"}
        Which allocator its memory comes from (picks the memory meter).
    """

    name = ""
    library = "array"

    def skip_reason(self, problem: Problem, device: Device, context: dict[str, Any]) -> str | None:
        """Why this contender cannot run ``problem`` (``None`` when it can).

        ``context`` holds ``rtol`` and what earlier contenders learned about the case
        (``cg_iterations``: the forward iterations ``ours-cg`` needed).
        """
        return None

    def prepare(self, problem: Problem, device: Device, context: dict[str, Any]) -> Any:
        """Inputs in the contender's own form (not timed)."""
        raise NotImplementedError

    def forward(self, inputs: Any) -> Run:
        """Solve ``M x = b`` for every system."""
        raise NotImplementedError

    def forward_backward(self, inputs: Any) -> Run:
        """Solve, then back-propagate ``gx`` to (embeddings, b, λ)."""
        raise NotImplementedError


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
        gU, gb, glam, binfo = op.vjp(x, inputs.gx, method=self.method, rtol=inputs.rtol)
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


def _torch_missing() -> str | None:
    try:
        import torch  # noqa: F401
    except ImportError:
        return "torch is not installed (pip install -e '.[bench]')"
    return None


def _torch_inputs(problem: Problem, device: Device, context: dict[str, Any]) -> SimpleNamespace:
    import torch

    def tensor(a: np.ndarray, grad: bool) -> Any:
        return torch.as_tensor(a, device=device.torch_device).requires_grad_(grad)

    batch = problem.batch
    return SimpleNamespace(
        torch=torch,
        model=problem.model,
        labels=problem.labels,
        plain=(
            tensor(problem.embeddings, False),
            tensor(problem.b, False),
            tensor(np.full(batch, problem.lam, dtype=problem.dtype), False),
        ),
        leaves=(
            tensor(problem.embeddings, True),
            tensor(problem.b, True),
            tensor(np.full(batch, problem.lam, dtype=problem.dtype), True),
        ),
        gx=tensor(problem.gx, False),
        context=context,
    )


class LinearOperatorWoodbury(Contender):
    """GPyTorch ``linear_operator``: ``LowRankRootAddedDiagLinearOperator.solve`` + autograd."""

    name = "linear-operator"
    library = "torch"

    def skip_reason(self, problem: Problem, device: Device, context: dict[str, Any]) -> str | None:
        if problem.model == "potts":
            return LINEAR_OPERATOR_POTTS
        try:
            import linear_operator  # noqa: F401
        except ImportError:
            return "linear_operator is not installed (pip install -e '.[bench]')"
        return _torch_missing()

    def prepare(self, problem: Problem, device: Device, context: dict[str, Any]) -> Any:
        return _torch_inputs(problem, device, context)

    @staticmethod
    def _solve(A: Any, b: Any, lam: Any) -> Any:
        from linear_operator.operators import (
            DiagLinearOperator,
            LowRankRootAddedDiagLinearOperator,
            LowRankRootLinearOperator,
        )

        diagonal = DiagLinearOperator(lam[:, None].expand(b.shape))
        op = LowRankRootAddedDiagLinearOperator(LowRankRootLinearOperator(A.mT), diagonal)
        return op.solve(b[..., None])[..., 0]

    def forward(self, inputs: Any) -> Run:
        with inputs.torch.no_grad():
            return Run(self._solve(*inputs.plain))

    def forward_backward(self, inputs: Any) -> Run:
        x = self._solve(*inputs.leaves)
        grads = inputs.torch.autograd.grad(x, inputs.leaves, grad_outputs=inputs.gx)
        return Run(x.detach(), tuple(grads))


class TorchUnrolledCG(Contender):
    """Batched CG in torch for a fixed number of iterations, differentiated by autograd."""

    name = "torch-unrolled-cg"
    library = "torch"

    def prepare(self, problem: Problem, device: Device, context: dict[str, Any]) -> Any:
        inputs = _torch_inputs(problem, device, context)
        inputs.iterations = context["cg_iterations"]
        return inputs

    @staticmethod
    def _cg(inputs: Any, U: Any, b: Any, lam: Any) -> Any:
        torch = inputs.torch
        general = inputs.model == "general"
        rows = b[:, None, :] if general else b
        scale = lam[:, None, None]

        def matvec(v: Any) -> Any:
            Q = (v @ U.mT) @ U
            return scale * v + (Q if general else Q.sum(dim=-2, keepdim=True) - Q)

        def dot(u: Any, v: Any) -> Any:
            return (u * v).sum(dim=(-2, -1), keepdim=True)

        x = torch.zeros_like(rows)
        r = rows
        p = r
        rr = dot(r, r)
        for _ in range(inputs.iterations):
            q = matvec(p)
            pq = dot(p, q)
            # A system that converged exactly would divide 0 by 0.
            alpha = torch.where(pq > 0, rr / torch.where(pq > 0, pq, 1.0), 0.0)
            x = x + alpha * p
            r = r - alpha * q
            rr_new = dot(r, r)
            p = r + torch.where(rr > 0, rr_new / torch.where(rr > 0, rr, 1.0), 0.0) * p
            rr = rr_new
        return x[:, 0, :] if general else x

    def skip_reason(self, problem: Problem, device: Device, context: dict[str, Any]) -> str | None:
        if context.get("cg_iterations") is None:
            return "no iteration count to unroll: ours-cg did not converge on this case"
        return _torch_missing()

    def forward(self, inputs: Any) -> Run:
        with inputs.torch.no_grad():
            x = self._cg(inputs, *inputs.plain)
        return Run(x, None, [np.array(inputs.iterations)])

    def forward_backward(self, inputs: Any) -> Run:
        x = self._cg(inputs, *inputs.leaves)
        grads = inputs.torch.autograd.grad(x, inputs.leaves, grad_outputs=inputs.gx)
        its = np.array(inputs.iterations)
        return Run(x.detach(), tuple(grads), [its, its])


def all_contenders() -> list[Contender]:
    """Every contender, ``ours-cg`` before ``torch-unrolled-cg`` (which needs its count)."""
    return [
        Ours("auto"),
        Ours("direct"),
        Ours("cg"),
        ScipyCG(),
        DenseCholesky(),
        LinearOperatorWoodbury(),
        TorchUnrolledCG(),
    ]


#: the contenders' names, in table order
CONTENDER_NAMES = tuple(c.name for c in all_contenders())
