"""PyTorch adapter: the dense G-CRF solve as an autograd function and an ``nn.Module``.

Tensors reach the core through DLPack without copying (CPU → NumPy, CUDA → CuPy, run on
torch's current CUDA stream) and the results come back the same way; the backward pass
reuses the forward's operator and factorization (:class:`~lowrank_gcrf.adapters.bridge.
CoreSolve`). The adapter holds no maths of its own, and core errors propagate unchanged.

Precision: float32 and float64 are solved natively; float16/bfloat16 inputs (for example
from convolutions under ``torch.autocast``) are solved in float32 and the result is cast
back to their dtype. Double backward is not supported (the backward is ``once_differentiable``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from lowrank_gcrf.adapters.bridge import (
    CoreSolve,
    check_scalar_lam,
    check_solver_kwargs,
    softplus_inverse,
    to_core,
)
from lowrank_gcrf.adapters.layout import layer_shapes
from lowrank_gcrf.errors import GCRFTypeError

__all__ = ["DenseGCRF", "gcrf_solve", "potts_solve"]

_HALF_PRECISION = (torch.float16, torch.bfloat16)


def _cupy() -> Any:
    """CuPy, or None where it is missing (to_core then raises the GCRFTypeError that says
    which extra to install)."""
    try:
        import cupy
    except ImportError:
        return None
    return cupy


@contextlib.contextmanager
def _core_stream(device: torch.device) -> Iterator[None]:
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


def _to_core(tensor: Tensor) -> Any:
    # DLPack refuses tensors that require grad, and the core wants plain strides.
    return to_core(tensor.detach().contiguous())


def _lam_to_core(lam: Tensor | float) -> Any:
    return _to_core(lam) if isinstance(lam, Tensor) else lam


class _SolveFunction(torch.autograd.Function):
    """``x = M⁻¹ b`` for the general (``potts=False``) or Potts model, on core-layout tensors.

    The forward's :class:`CoreSolve` is kept on ``ctx`` so that the backward reuses its
    factorization; the embeddings and x are also saved so that autograd reports in-place
    changes to them (the core holds views of both).
    """

    @staticmethod
    def forward(
        ctx: Any,
        potts: bool,
        embeddings: Tensor,
        b: Tensor,
        lam: Tensor | float,
        solver_kwargs: dict[str, Any],
    ) -> Tensor:
        with _core_stream(embeddings.device):
            core = CoreSolve(
                potts, _to_core(embeddings), _to_core(b), _lam_to_core(lam), solver_kwargs
            )
            x = torch.from_dlpack(core.x)
        ctx.core = core
        ctx.lam_shape = lam.shape if isinstance(lam, Tensor) else None
        ctx.save_for_backward(embeddings, x)
        return x

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, gx: Tensor) -> tuple[Tensor | None, ...]:
        _ = ctx.saved_tensors  # raises if x or the embeddings were modified in place
        with _core_stream(gx.device):
            grads = ctx.core.backward(_to_core(gx))
            g_embeddings, g_b, g_lam = (torch.from_dlpack(g) for g in grads)
        _, needs_embeddings, needs_b, needs_lam, _ = ctx.needs_input_grad
        return (
            None,
            g_embeddings if needs_embeddings else None,
            g_b if needs_b else None,
            # a 0-d λ is shared by every system of the batch
            g_lam.sum_to_size(ctx.lam_shape) if needs_lam else None,
            None,
        )


def _result_dtypes(embeddings: Tensor, b: Tensor) -> tuple[torch.dtype, torch.dtype]:
    """(compute, output) dtypes: half precision is solved in float32 (bfloat16 has no NumPy
    dtype to cross DLPack with) and returned in its own dtype, under autocast too, so that
    the layer keeps the dtype of the autocast region around it."""
    output = torch.promote_types(embeddings.dtype, b.dtype)
    compute = torch.float32 if output in _HALF_PRECISION else output
    return compute, output


@torch.compiler.disable
def _solve(
    potts: bool, embeddings: Tensor, b: Tensor, lam: Tensor | float, solver_kwargs: dict[str, Any]
) -> Tensor:
    # Dynamo cannot trace DLPack and NumPy: a compiled model graph-breaks around the solve.
    if not (isinstance(embeddings, Tensor) and isinstance(b, Tensor)):
        raise GCRFTypeError(
            f"expected torch tensors, got {type(embeddings).__name__} and {type(b).__name__}; "
            "use lowrank_gcrf.solve / solve_potts for NumPy or CuPy arrays"
        )
    solver_kwargs = check_solver_kwargs(solver_kwargs)
    compute, output = _result_dtypes(embeddings, b)
    # The casts are autograd ops, so gradients return to the callers' dtypes and devices.
    if isinstance(lam, Tensor):
        lam = lam.to(device=embeddings.device, dtype=compute)
    x = _SolveFunction.apply(
        potts,
        embeddings.to(compute).contiguous(),
        b.to(compute).contiguous(),
        lam,
        solver_kwargs,
    )
    return x.to(output)


def gcrf_solve(A: Tensor, b: Tensor, lam: Tensor | float, **solver_kwargs: Any) -> Tensor:
    """Solve the general dense G-CRF ``(AᵀA + λI) x = b``, differentiably.

    Parameters
    ----------
    A : Tensor (..., D, N)
        Embeddings of the N = L·P variables, label-major (n = l·P + p).
    b : Tensor (..., N)
        Unary scores; leading batch dimensions equal A's.
    lam : float or Tensor
        λ > 0: a float, a 0-d tensor or a tensor of the batch shape (...,). A tensor that
        requires grad receives ``∂L/∂λ`` (summed over the batch for a 0-d λ).
    **solver_kwargs
        ``method`` ("auto", "cg", "direct"), ``rtol``, ``atol``, ``maxiter``, as for
        :func:`lowrank_gcrf.solve`; used by the forward and the backward solve.

    Returns
    -------
    Tensor (..., N)
        x, on the device of A, in the promoted dtype of A and b.

    Raises
    ------
    lowrank_gcrf.GCRFError
        The core's errors, unchanged (bad shapes, λ ≤ 0, non-convergence, ...).
    """
    return _solve(False, A, b, lam, solver_kwargs)


def potts_solve(Ahat: Tensor, b: Tensor, lam: Tensor | float, **solver_kwargs: Any) -> Tensor:
    """Solve the Potts dense G-CRF ``(λI + (J − I) ⊗ ÂᵀÂ) x = b``, differentiably.

    Parameters
    ----------
    Ahat : Tensor (..., D, P)
        One embedding per pixel, shared by the L labels.
    b : Tensor (..., L, P)
        Unary scores; leading batch dimensions equal Ahat's.
    lam : float or Tensor
        λ > ‖Â‖₂² (else :class:`lowrank_gcrf.IndefiniteSystemError`): a float, a 0-d tensor
        or a tensor of the batch shape; a tensor that requires grad receives ``∂L/∂λ``.
    **solver_kwargs
        ``method``, ``rtol``, ``atol``, ``maxiter``, as for :func:`lowrank_gcrf.solve_potts`.

    Returns
    -------
    Tensor (..., L, P)
        x, on the device of Ahat, in the promoted dtype of Ahat and b.

    Raises
    ------
    lowrank_gcrf.GCRFError
        The core's errors, unchanged.
    """
    return _solve(True, Ahat, b, lam, solver_kwargs)


class DenseGCRF(nn.Module):
    """The dense low-rank G-CRF as a layer: unary scores and embeddings in, MAP scores out.

    Parameters
    ----------
    lam : float, default 1.0
        λ > 0, the weight of the identity; the Potts model needs λ > ‖Â‖₂² (normalise the
        embeddings, e.g. unit vectors scaled by ``c / sqrt(H·W)`` with c² < λ).
    potts : bool, default False
        Potts model (one embedding per pixel, shared by the labels) or general model (one
        embedding per pixel and label).
    method : {"auto", "cg", "direct"}, default "auto"
        Solver for the forward and backward passes.
    learn_lam : bool, default False
        Make λ a parameter, kept positive as ``softplus(raw_lam)`` and initialised to ``lam``.
    **solver_kwargs
        ``rtol``, ``atol``, ``maxiter``, as for :func:`lowrank_gcrf.solve`.

    Attributes
    ----------
    raw_lam : nn.Parameter
        The unconstrained λ parameter (only with ``learn_lam=True``).

    Notes
    -----
    Shapes: unary (B, L, H, W); embeddings (B, D, H, W) for Potts or (B, D, L, H, W)
    general; output (B, L, H, W). The embeddings reshape to the core's label-major layout
    without a copy.
    """

    def __init__(
        self,
        lam: float = 1.0,
        potts: bool = False,
        method: str = "auto",
        learn_lam: bool = False,
        **solver_kwargs: Any,
    ):
        super().__init__()
        check_scalar_lam(lam)
        self.potts = bool(potts)
        self.solver_kwargs = check_solver_kwargs({"method": method, **solver_kwargs})
        self.learn_lam = bool(learn_lam)
        if self.learn_lam:
            self.raw_lam = nn.Parameter(torch.tensor(softplus_inverse(float(lam))))
        else:
            self.fixed_lam = float(lam)

    @property
    def lam(self) -> Tensor | float:
        """λ: ``softplus(raw_lam)`` when learnt, else the fixed float."""
        if self.learn_lam:
            return nn.functional.softplus(self.raw_lam)
        return self.fixed_lam

    def forward(self, unary: Tensor, embeddings: Tensor) -> Tensor:
        """MAP scores (B, L, H, W) of the G-CRF with the given unaries and embeddings."""
        shapes = layer_shapes(tuple(unary.shape), tuple(embeddings.shape), self.potts)
        x = _solve(
            self.potts,
            embeddings.reshape(shapes.core_embeddings),
            unary.reshape(shapes.core_unary),
            self.lam,
            self.solver_kwargs,
        )
        return x.reshape(shapes.output)

    def extra_repr(self) -> str:
        with torch.no_grad():
            lam = float(self.lam)
        settings = ", ".join(f"{k}={v!r}" for k, v in self.solver_kwargs.items())
        return f"lam={lam:.6g}, potts={self.potts}, learn_lam={self.learn_lam}, {settings}"
