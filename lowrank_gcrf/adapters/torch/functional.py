"""The dense G-CRF solves as differentiable PyTorch functions, named as the core's
(:func:`solve`, :func:`solve_potts`, :func:`solve_signed`), and the layers' scalings of the
embeddings: :func:`strength_scaled` (a learnt strength, the default) and the
positive-definiteness clamp :func:`pd_scaled`.

Precision: float32 and float64 are solved natively; float16/bfloat16 inputs (for example
from convolutions under ``torch.autocast``) are solved in float32 and the result is cast
back to their dtype. Double backward is not supported (the backward is
``once_differentiable``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lowrank_gcrf.adapters.bridge import (
    check_rescaling,
    check_solver_kwargs,
    signed_stack,
    top_eigenvectors,
)
from lowrank_gcrf.adapters.layer_plan import GRAM_SQUARINGS, Block
from lowrank_gcrf.adapters.torch.autograd import (
    core_stream,
    lam_to_core,
    solve_tensors,
    tensor_to_core,
)
from lowrank_gcrf.adapters.torch.traceable_solve import full_precision
from lowrank_gcrf.errors import GCRFTypeError


def solve(A: Tensor, b: Tensor, lam: Tensor | float, **solver_kwargs: Any) -> Tensor:
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
        ``method`` ("auto", "cg", "direct"), ``rtol``, ``atol``, ``maxiter``,
        ``on_failure``, as for :func:`lowrank_gcrf.solve`; used by the forward and the
        backward solve.

    Returns
    -------
    Tensor (..., N)
        x, on the device of A, in the promoted dtype of A and b.

    Raises
    ------
    lowrank_gcrf.GCRFError
        The core's errors, unchanged (bad shapes, λ ≤ 0, non-convergence, ...).

    Examples
    --------
    >>> import torch
    >>> from lowrank_gcrf.adapters.torch import solve
    >>> A = (torch.randn(4, 30, dtype=torch.float64) / 4).requires_grad_()
    >>> b = torch.randn(30, dtype=torch.float64)
    >>> x = solve(A, b, 1.0)
    >>> x.sum().backward()
    >>> A.grad.shape
    torch.Size([4, 30])
    """
    return solve_tensors("general", A, b, lam, check_solver_kwargs(solver_kwargs))


def solve_potts(Ahat: Tensor, b: Tensor, lam: Tensor | float, **solver_kwargs: Any) -> Tensor:
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
        ``method``, ``rtol``, ``atol``, ``maxiter``, ``on_failure``, as for
        :func:`lowrank_gcrf.solve_potts`.

    Returns
    -------
    Tensor (..., L, P)
        x, on the device of Ahat, in the promoted dtype of Ahat and b.

    Raises
    ------
    lowrank_gcrf.GCRFError
        The core's errors, unchanged.

    Examples
    --------
    >>> import torch
    >>> from lowrank_gcrf.adapters.torch import solve_potts
    >>> Ahat = torch.randn(4, 20) / 10
    >>> lam = torch.tensor(1.0, requires_grad=True)
    >>> x = solve_potts(Ahat, torch.randn(3, 20), lam)
    >>> x.sum().backward()
    >>> x.shape, lam.grad is not None
    (torch.Size([3, 20]), True)
    """
    return solve_tensors("potts", Ahat, b, lam, check_solver_kwargs(solver_kwargs))


def solve_signed(
    A: Tensor | None, Gamma: Tensor | None, b: Tensor, lam: Tensor | float, **solver_kwargs: Any
) -> Tensor:
    """Solve the signed dense G-CRF ``(λI + AᵀA − ΓᵀΓ) x = b``, differentiably.

    Parameters
    ----------
    A : Tensor (..., D, N) or None
        Repulsive embeddings of the N = L·P variables, label-major (n = l·P + p).
    Gamma : Tensor (..., E, N) or None
        Attractive embeddings; not both None. An absent factor gets no gradient.
    b : Tensor (..., N)
    lam : float or Tensor
        λ > 0 with M positive definite (``λ > ‖Γ‖₂²`` suffices; otherwise
        :class:`lowrank_gcrf.IndefiniteSystemError`); a tensor that requires grad receives
        ``∂L/∂λ``.
    **solver_kwargs
        ``method``, ``rtol``, ``atol``, ``maxiter``, ``on_failure``, as for
        :func:`lowrank_gcrf.solve_signed`.

    Returns
    -------
    Tensor (..., N)
        x, in the promoted dtype of A, Gamma and b.

    Raises
    ------
    lowrank_gcrf.GCRFError
        The core's errors, unchanged.

    Examples
    --------
    >>> import torch
    >>> from lowrank_gcrf.adapters.torch import solve_signed
    >>> A, Gamma = torch.randn(4, 30) / 4, torch.randn(2, 30) / 10
    >>> solve_signed(A, Gamma, torch.randn(30), 1.0).shape
    torch.Size([30])
    """
    parts = [t for t in (A, Gamma) if t is not None]
    if not all(isinstance(t, Tensor) for t in parts):
        raise GCRFTypeError(
            "expected torch tensors (or None) for A and Gamma; use lowrank_gcrf.solve_signed "
            "for NumPy or CuPy arrays"
        )
    stack, common = signed_stack(*(None if t is None else (t.shape, t.dtype) for t in (A, Gamma)))
    parts = [t.to(getattr(torch, common)) for t in parts]
    U = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-2)
    # One tensor carries both factors: torch.cat splits its gradient between them.
    return solve_tensors(stack, U, b, lam, check_solver_kwargs(solver_kwargs))


def pd_scaled(Ahat: Tensor, lam: Tensor | float, bound: float, *, name: str = "Ahat") -> Tensor:
    """Â rescaled, differentiably, so that ``‖Â‖₂² ≤ bound·λ`` (the Potts condition with margin).

    ``‖Â‖₂²`` is the largest eigenvalue of the D×D Gram ``ÂÂᵀ``, exact (in float64, as
    ``vᵀGv`` with the core's top eigenvector v: the value and gradient of the eigenvalue);
    the factor is ``sqrt(bound·λ / max(‖Â‖₂², bound·λ))``, the identity (with zero
    gradient) where the bound already holds. Embeddings with NaN or Inf, a Gram beyond
    float64 or a λ that is not finite and > 0 raise the core's
    :class:`~lowrank_gcrf.GCRFError`, naming ``name`` or ``lam``.

    Examples
    --------
    >>> import torch
    >>> from lowrank_gcrf.adapters.torch import pd_scaled
    >>> Ahat = pd_scaled(torch.randn(4, 20), 1.0, 0.9)
    >>> bool(torch.linalg.matrix_norm(Ahat, ord=2) ** 2 <= 0.9 + 1e-6)
    True
    """
    wide = Ahat.double()  # a half-precision or huge float32 Gram would overflow
    gram = wide @ wide.mT
    top = _top_eigenvectors(wide, gram.detach(), lam, name)
    mu = torch.einsum("...i,...ij,...j->...", top, gram, top)
    target = bound * (lam.double() if isinstance(lam, Tensor) else lam)
    factor = torch.sqrt(target / torch.maximum(mu, torch.as_tensor(target, dtype=mu.dtype)))
    return Ahat * factor.to(Ahat.dtype)[..., None, None]


@torch.compiler.disable
def _top_eigenvectors(wide: Tensor, gram: Tensor, lam: Tensor | float, name: str) -> Tensor:
    """The Gram's top eigenvectors from the core (a compiled model breaks its graph here,
    as at the solve), after the checks that name what the eigensolve cannot take."""
    usable = torch.isfinite(gram).all()
    if isinstance(lam, Tensor):
        lam = lam.double()  # a half-precision λ has no NumPy dtype to cross DLPack with
        usable = usable & torch.isfinite(lam).all() & (lam > 0).all()
    if not bool(usable):
        check_rescaling(tensor_to_core(wide), lam_to_core(lam), name)
    with core_stream(gram.device):
        return torch.from_dlpack(top_eigenvectors(tensor_to_core(gram)))


def pd_rescaled(A: Tensor, block: Block | None, lam: Tensor | float, bound: float) -> Tensor:
    """``A`` (B, C, n) with the channels of ``block`` rescaled by :func:`pd_scaled` (a layer's
    plan, :class:`~lowrank_gcrf.adapters.layer_plan.SolvePlan`); ``A`` itself for None."""
    if block is None:
        return A
    scaled = pd_scaled(A[:, block.start : block.stop], lam, bound, name=block.name)
    return torch.cat([A[:, : block.start], scaled, A[:, block.stop :]], dim=1)


def spectral_bound(A: Tensor) -> Tensor:
    """An upper bound of ``‖A‖₂²`` for A (..., D, n), in matrix products only (traceable).

    ``(tr G^m)^(1/m)`` with ``G = AAᵀ`` and ``m = 2^k``
    (:data:`~lowrank_gcrf.adapters.layer_plan.GRAM_SQUARINGS`) is never below the largest
    eigenvalue ``‖A‖₂²`` and above it by at most ``D^(1/m)``. G is squared k times, each
    square divided by its trace ``t_j`` so that nothing overflows:
    ``(tr G^m)^(1/m) = tr G · Π_j t_j^(1/2^j)``. Computed in float32 or wider.
    """
    # Under autocast the products would run in half precision: no bound, an overflowing Gram.
    with full_precision(A.device.type):
        wide = A if A.dtype == torch.float64 else A.float()
        tiny = torch.finfo(wide.dtype).tiny
        gram = wide @ wide.mT
        bound = torch.diagonal(gram, dim1=-2, dim2=-1).sum(-1).clamp_min(tiny)
        power = gram / bound[..., None, None]
        for j in range(1, GRAM_SQUARINGS + 1):
            power = power @ power
            trace = torch.diagonal(power, dim1=-2, dim2=-1).sum(-1).clamp_min(tiny)
            power = power / trace[..., None, None]
            bound = bound * trace ** (1.0 / 2**j)
        return bound.clamp_min(tiny)


def _unit_peak(part: Tensor) -> Tensor:
    """``part`` (B, k, n) divided by its largest magnitude per batch element, so that its Gram
    neither overflows nor underflows whatever the network's scale. The scaling that follows
    is invariant to this factor, whose gradient contribution is therefore zero: detached."""
    peak = part.detach().abs().amax(dim=(-2, -1)).clamp_min(torch.finfo(part.dtype).tiny)
    return part / peak[:, None, None]


def strength_scaled(
    A: Tensor, blocks: tuple[Block, ...], strengths: Tensor, lam: Tensor | float
) -> Tensor:
    """``A`` (B, C, n) with each block of channels scaled to ``‖block‖₂² ≤ ρ·λ``, its strength
    ρ from ``strengths`` (one per block): the embeddings give the affinities' shape, ρ their
    size, whatever the network's scale
    (:func:`~lowrank_gcrf.adapters.torch.functional.spectral_bound`; equality for a rank-one
    block).

    Examples
    --------
    >>> import torch
    >>> from lowrank_gcrf.adapters.layer_plan import Block
    >>> from lowrank_gcrf.adapters.torch import strength_scaled
    >>> A = strength_scaled(1e3 * torch.randn(1, 4, 50), (Block("Ahat", 0, 4),),
    ...                     torch.tensor([0.3]), 1.0)
    >>> bool(torch.linalg.matrix_norm(A, ord=2) ** 2 <= 0.3 * (1 + 1e-5))
    True
    """
    parts = []
    for index, block in enumerate(blocks):
        part = A[:, block.start : block.stop]
        if block.stop > block.start:
            part = _unit_peak(part)
            factor = torch.sqrt(strengths[index] * lam / spectral_bound(part))
            part = part * factor.to(part.dtype)[:, None, None]
        parts.append(part)
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
