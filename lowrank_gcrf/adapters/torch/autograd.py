"""The core solve as a PyTorch autograd function, on core-layout tensors.

Tensors reach the core through DLPack without copying (CPU → NumPy, CUDA → CuPy, run on
torch's current CUDA stream) and the results come back the same way; the backward pass
reuses the forward's operator and factorization (:class:`~lowrank_gcrf.adapters.bridge.
CoreSolve`). Core errors propagate unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from lowrank_gcrf.adapters.bridge import CoreSolve, SolveAs, check_lam, solve_dtype_names, to_core
from lowrank_gcrf.dtypes import dtype_name, overflow_message
from lowrank_gcrf.errors import GCRFError, GCRFTypeError
from lowrank_gcrf.options import SolverOptions


def _cupy() -> Any:
    """CuPy, or None where it is missing (to_core then raises the GCRFTypeError that says
    which extra to install)."""
    try:
        import cupy
    except ImportError:
        return None
    return cupy


@contextlib.contextmanager
def core_stream(device: torch.device) -> Iterator[None]:
    """Make torch's current CUDA stream on ``device`` CuPy's current stream (no-op on CPU).

    With the core's kernels queued on the same stream as the torch ops before and after
    them, the DLPack hand-over in both directions needs no synchronisation.
    """
    cupy = _cupy() if device.type == "cuda" else None
    if cupy is None:
        yield
        return
    stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream)
    with cupy.cuda.Device(device.index), stream:
        yield


def tensor_to_core(tensor: Tensor) -> Any:
    """A NumPy or CuPy view of ``tensor``."""
    # DLPack refuses tensors that require grad, and the core wants plain strides.
    return to_core(tensor.detach().contiguous())


def lam_to_core(lam: Tensor | float) -> Any:
    """λ as the core takes it: a float as it is, a tensor as a NumPy or CuPy view."""
    return tensor_to_core(lam) if isinstance(lam, Tensor) else lam


class _SolveFunction(torch.autograd.Function):
    """``x = M⁻¹ b`` for a model of the core's registry, on core-layout tensors.

    The forward's :class:`CoreSolve` is kept on ``ctx`` so that the backward reuses its
    factorization; the embeddings and x are also saved so that autograd reports in-place
    changes to them (the core holds views of both).
    """

    @staticmethod
    def forward(
        ctx: Any,
        model: SolveAs,
        embeddings: Tensor,
        b: Tensor,
        lam: Tensor | float,
        options: SolverOptions,
    ) -> Tensor:
        with core_stream(embeddings.device):
            core = CoreSolve(
                model, tensor_to_core(embeddings), tensor_to_core(b), lam_to_core(lam), options
            )
            x = torch.from_dlpack(core.x)
        ctx.core = core
        ctx.save_for_backward(embeddings, x)
        return x

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, gx: Tensor) -> tuple[Tensor | None, ...]:
        _ = ctx.saved_tensors  # raises if x or the embeddings were modified in place
        with core_stream(gx.device):
            grads = ctx.core.backward(tensor_to_core(gx))
            g_embeddings, g_b, g_lam = (torch.from_dlpack(g) for g in grads)
        _, needs_embeddings, needs_b, needs_lam, _ = ctx.needs_input_grad
        return (
            None,
            g_embeddings if needs_embeddings else None,
            g_b if needs_b else None,
            g_lam if needs_lam else None,
            None,
        )


def dtype_plan(embeddings: Tensor, b: Tensor) -> tuple[torch.dtype, torch.dtype]:
    """``(compute, output)`` torch dtypes of a solve (the core's policy, half precision
    computed in float32)."""
    if not (isinstance(embeddings, Tensor) and isinstance(b, Tensor)):
        raise GCRFTypeError(
            f"expected torch tensors, got {type(embeddings).__name__} and {type(b).__name__}; "
            "use lowrank_gcrf.solve / solve_potts for NumPy or CuPy arrays"
        )
    compute, output = solve_dtype_names(embeddings.dtype, b.dtype)
    return getattr(torch, compute), getattr(torch, output)


@torch.compiler.disable
def solve_tensors(
    model: SolveAs,
    embeddings: Tensor,
    b: Tensor,
    lam: Tensor | float,
    options: SolverOptions,
    dtypes: tuple[torch.dtype, torch.dtype] | None = None,
) -> Tensor:
    """x of the solve, differentiable in ``embeddings``, ``b`` and a tensor ``lam``.

    ``dtypes`` is :func:`dtype_plan`'s answer where the caller has it already.
    """
    # Dynamo cannot trace DLPack and NumPy: a compiled model graph-breaks around the solve.
    compute, output = dtype_plan(embeddings, b) if dtypes is None else dtypes
    check_lam(lam)
    # The casts are autograd ops, so gradients return to the callers' dtypes and devices.
    if isinstance(lam, Tensor):
        lam = lam.to(device=embeddings.device, dtype=compute)
    x = _SolveFunction.apply(
        model, embeddings.to(compute).contiguous(), b.to(compute).contiguous(), lam, options
    )
    result = x.to(output)
    if output != compute and not bool(torch.isfinite(result).all()):
        raise GCRFError(overflow_message(dtype_name(output), "x"))
    return result
