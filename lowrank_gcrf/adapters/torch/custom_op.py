"""The core's exact solve as ``torch.library`` custom ops, which ``torch.export`` and
``torch.compile`` keep as single opaque nodes instead of tracing into NumPy.

``torch.ops.lowrank_gcrf.solve`` runs
:func:`~lowrank_gcrf.adapters.torch.autograd.solve_tensors` (the same checked solve as the
layers' eager path) and ``torch.ops.lowrank_gcrf.solve_backward`` the core's vector-Jacobian
product through :meth:`~lowrank_gcrf.adapters.bridge.CoreSolve.from_solution`. Each has a
fake kernel, which gives the output's shape and dtype from the inputs' without running the
core, so a graph that holds them exports; running it (an exported program loaded in another
process, for instance) needs lowrank_gcrf installed and this module imported, which
registers the ops.

A custom op returns tensors only, so the forward's factorization cannot reach the backward:
the backward factorizes anew (one more factorization of the small capacitance, as for a
graph whose forward was not kept). ONNX and TFLite cannot carry such an op; they take the
traceable solve (``docs/guide/deploying.md``).
"""

from typing import Any

import torch
from torch import Tensor

from lowrank_gcrf.adapters.bridge import CoreSolve, SignedStack, SolveAs
from lowrank_gcrf.adapters.torch.autograd import (
    core_stream,
    dtype_plan,
    lam_to_core,
    solve_tensors,
    tensor_to_core,
)
from lowrank_gcrf.options import SolverOptions, solver_options

#: The model argument of the ops for the signed model on stacked embeddings, whose
#: ``repulsive_rank`` travels as its own argument (a schema holds no Python objects).
_SIGNED = "signed"


def _solve_as(model: str, repulsive_rank: int) -> SolveAs:
    return SignedStack(repulsive_rank) if model == _SIGNED else model


def _options(
    method: str, rtol: float, atol: float, maxiter: int | None, on_failure: str
) -> SolverOptions:
    return solver_options(
        method=method, rtol=rtol, atol=atol, maxiter=maxiter, on_failure=on_failure
    )


@torch.library.custom_op("lowrank_gcrf::solve", mutates_args=())
def _solve_op(
    embeddings: Tensor,
    b: Tensor,
    lam: Tensor,
    model: str,
    repulsive_rank: int,
    method: str,
    rtol: float,
    atol: float,
    maxiter: int | None,
    on_failure: str,
) -> Tensor:
    options = _options(method, rtol, atol, maxiter, on_failure)
    return solve_tensors(_solve_as(model, repulsive_rank), embeddings, b, lam, options)


@_solve_op.register_fake
def _(embeddings: Tensor, b: Tensor, lam: Tensor, *args: Any) -> Tensor:
    return b.new_empty(b.shape, dtype=dtype_plan(embeddings, b)[1])


@torch.library.custom_op("lowrank_gcrf::solve_backward", mutates_args=())
def _solve_backward_op(
    embeddings: Tensor,
    x: Tensor,
    lam: Tensor,
    gx: Tensor,
    model: str,
    repulsive_rank: int,
    method: str,
    rtol: float,
    atol: float,
    maxiter: int | None,
    on_failure: str,
) -> tuple[Tensor, Tensor, Tensor]:
    options = _options(method, rtol, atol, maxiter, on_failure)
    solve_as = _solve_as(model, repulsive_rank)
    with core_stream(embeddings.device):
        state = CoreSolve.from_solution(
            solve_as, tensor_to_core(embeddings), tensor_to_core(x), lam_to_core(lam), options
        )
        grads = state.backward(tensor_to_core(gx))
        return tuple(torch.from_dlpack(g) for g in grads)


@_solve_backward_op.register_fake
def _(embeddings: Tensor, x: Tensor, lam: Tensor, gx: Tensor, *args: Any) -> tuple:
    return torch.empty_like(embeddings), torch.empty_like(x), torch.empty_like(lam)


def _setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
    embeddings, _, lam, *settings = inputs
    ctx.save_for_backward(embeddings, output, lam)
    ctx.settings = settings


def _backward(ctx: Any, gx: Tensor) -> tuple[Tensor | None, ...]:
    embeddings, x, lam = ctx.saved_tensors
    g_embeddings, g_b, g_lam = torch.ops.lowrank_gcrf.solve_backward(
        embeddings, x, lam, gx.contiguous(), *ctx.settings
    )
    return (g_embeddings, g_b, g_lam, *(None,) * len(ctx.settings))


_solve_op.register_autograd(_backward, setup_context=_setup_context)


def exact_solve(
    solve_as: SolveAs,
    embeddings: Tensor,
    b: Tensor,
    lam: Tensor | float,
    options: SolverOptions,
) -> Tensor:
    """x = M⁻¹ b by the core's exact, checked solve, as one ``lowrank_gcrf::solve`` node.

    Parameters
    ----------
    solve_as : str or SignedStack
        As for the layers' call of the core: ``"general"``, ``"potts"`` or the signed model
        on stacked ``[A; Γ]``.
    embeddings, b : Tensor
        Core layout (``docs/maths.md#notation``); cast to the compute dtype of the core's
        policy here, as autograd operations, so that gradients return in the inputs' dtypes.
    lam : float or Tensor
        λ > 0, a number or a tensor of shape () or of the batch shape; differentiable.
    options : SolverOptions
        The solver keywords, for the forward and backward solves.

    Returns
    -------
    Tensor
        x, shaped like b, in the output dtype of the core's policy; differentiable in
        ``embeddings``, ``b`` and a tensor ``lam`` (Eq. 3, ``docs/maths.md#gradients``).

    Examples
    --------
    >>> import torch
    >>> from lowrank_gcrf.adapters.torch import exact_solve
    >>> from lowrank_gcrf.options import solver_options
    >>> Ahat = (torch.randn(2, 4, 30) / 16).requires_grad_()    # (B, D, P), ‖Â‖₂² < λ
    >>> b = torch.randn(2, 3, 30)                               # (B, L, P)
    >>> x = exact_solve("potts", Ahat, b, 1.0, solver_options(method="direct"))
    >>> x.sum().backward()
    >>> x.shape, Ahat.grad.shape
    (torch.Size([2, 3, 30]), torch.Size([2, 4, 30]))
    """
    compute, output = dtype_plan(embeddings, b)
    lam = torch.as_tensor(lam, dtype=compute, device=embeddings.device)
    model, rank = (
        (_SIGNED, solve_as.repulsive_rank) if isinstance(solve_as, SignedStack) else (solve_as, 0)
    )
    return torch.ops.lowrank_gcrf.solve(
        embeddings.to(compute).contiguous(),
        b.to(compute).contiguous(),
        lam,
        model,
        rank,
        options.method,
        options.rtol,
        options.atol,
        options.maxiter,
        options.on_failure,
    ).to(output)
