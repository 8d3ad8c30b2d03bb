"""The contenders written in PyTorch: GPyTorch's ``linear_operator`` and CG unrolled under
autograd."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

from .contender_interface import Contender, Run
from .measure import Device
from .problems import Problem

#: Why the linear_operator contender has no Potts form.
LINEAR_OPERATOR_POTTS = (
    "no clean Potts form: KroneckerProductLinearOperator(J − I, ÂᵀÂ) + λI is solved through "
    "a symmetric eigendecomposition of each Kronecker factor that clamps negative "
    "eigenvalues to 0 (LinearOperator._symeig: 'chop any negative eigenvalues'), and J − I "
    "has the eigenvalue −1, so its solutions are wrong (checked at P = 1681, L = 21, "
    "D = 128 in float64: max error ≈ the solution's own size at λ = 1.01‖Â‖₂², ≈ 17 % at "
    "λ = 2‖Â‖₂²)"
)


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
            return "no iteration count to unroll: scipy-cg did not run on this case"
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
