"""The G-CRF solve in PyTorch operations only, for deployment: what ``torch.export``,
``torch.onnx.export`` and ``torch.compile(fullgraph=True)`` can trace.

The core's solve runs in NumPy behind DLPack, which no tracer can follow. This one is the
Woodbury identity of ``docs/maths.md#exact-low-rank-solves`` in matrix products,
element-wise operations and reductions: every capacitance inverse comes from a fixed number
of Newton–Schulz iterations (no eigensolver, factorization, solve or inverse), a number
derived from the caller's bound on the embeddings (:mod:`lowrank_gcrf.adapters.traceable_plan`),
so that the truncation error is certified below the compute dtype's machine epsilon. The
loops are Python loops over that small count: a traced graph holds 2k small ``(D, D)``
products per capacitance and three (general, signed) or five (Potts) products with the
embeddings.

It computes no gradient of its own beyond what autograd derives from these operations;
training uses the core's exact, checked solve.
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from lowrank_gcrf.adapters.bridge import SignedStack, SolveAs
from lowrank_gcrf.adapters.torch.autograd import dtype_plan
from lowrank_gcrf.adapters.traceable_plan import Inversion, traceable_plan
from lowrank_gcrf.dtypes import dtype_name


def newton_schulz(C: Tensor, inversion: Inversion) -> Tensor:
    """``X ≈ C⁻¹`` for symmetric C (..., n, n) with spectrum in ``[lo, hi]``:
    ``X₀ = 2/(lo + hi)·I``, ``X ← X(2I − CX)``, ``inversion.steps`` times, so that
    ``‖I − CX‖₂ ≤ q^(2^k)`` (:mod:`~lowrank_gcrf.adapters.traceable_plan`)."""
    eye = _eye_like(C)
    X = inversion.start * eye
    for _ in range(inversion.steps):
        X = X @ (2 * eye - C @ X)
    return X


def _eye_like(C: Tensor) -> Tensor:
    """The identity of C's trailing size, dtype and device."""
    return torch.eye(C.shape[-1], dtype=C.dtype, device=C.device)


def _transpose(U: Tensor) -> Tensor:
    # transpose(-1, -2), not .mT: older ONNX exporters refuse aten::mT.
    return U.transpose(-1, -2)


def _shifted_solve(
    U: Tensor, gram: Tensor, v: Tensor, lam: Tensor | float, alpha: float, inversion: Inversion
) -> Tensor:
    """``(λI + αUᵀU)⁻¹ v`` for rows v (..., k, n) by Woodbury: ``(v − α(vUᵀ)C⁻¹U/λ)/λ`` with
    the scaled capacitance ``C = I + α·gram``, ``gram = UUᵀ/λ``."""
    X = newton_schulz(_eye_like(gram) + alpha * gram, inversion)
    return (v - alpha * ((v @ _transpose(U)) @ X) @ U / lam) / lam


def _signed_solve(
    U: Tensor,
    gram: Tensor,
    v: Tensor,
    lam: Tensor | float,
    repulsive: int,
    plan: dict[str, Inversion],
) -> Tensor:
    """``(λI + UᵀSU)⁻¹ v`` for U = [A; Γ] by the block LDLᵀ of the scaled capacitance
    ``K = S + UUᵀ/λ`` (``docs/maths.md#exact-solve``): q = H⁻¹(Gᵀ C_A⁻¹ u − w),
    p = C_A⁻¹(u − G q), with ``C_A = I + AAᵀ/λ``, ``G = AΓᵀ/λ`` and the Schur complement
    ``H = I − ΓΓᵀ/λ + Gᵀ C_A⁻¹ G``, both positive definite, each inverted by Newton–Schulz."""
    d = repulsive
    uw = v @ _transpose(U)
    u, w = uw[..., :d], uw[..., d:]
    schur = _eye_like(gram[..., d:, d:]) - gram[..., d:, d:]
    if d:
        X_a = newton_schulz(_eye_like(gram[..., :d, :d]) + gram[..., :d, :d], plan["repulsive"])
        coupling = gram[..., :d, d:]
        schur = schur + _transpose(coupling) @ X_a @ coupling
    X_h = newton_schulz(schur, plan["schur"])
    if d:
        q = (u @ X_a @ coupling - w) @ X_h
        p = (u - q @ _transpose(coupling)) @ X_a
        pq = torch.cat([p, q], dim=-1)
    else:
        pq = -w @ X_h
    return (v - (pq @ U) / lam) / lam


def full_precision(device_type: str) -> contextlib.AbstractContextManager:
    """Autocast switched off where it is on: it would run the products in half precision,
    below the certified accuracy. Elsewhere a no-op, so that traced graphs stay flat (an
    autocast region becomes a nested graph in ``torch.export``)."""
    if torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def traceable_solve(
    solve_as: SolveAs,
    A: Tensor,
    b: Tensor,
    lam: Tensor | float,
    strength_bounds: tuple[float, ...],
) -> Tensor:
    """x = M⁻¹ b in PyTorch operations only, certified by the embeddings' strength bounds.

    Parameters
    ----------
    solve_as : str or SignedStack
        ``"general"``: A (..., D, N), b (..., N), ``M = λI + AᵀA`` (Eq. 5); ``"potts"``:
        Â (..., D, P), b (..., L, P), ``M = λI + (J_L − I_L) ⊗ ÂᵀÂ`` (Eq. 12), solved by the
        class-sum / deviation split; ``SignedStack(D)``: ``[A; Γ]`` (..., D + E, N),
        b (..., N), ``M = λI + AᵀA − ΓᵀΓ``. As the layers pass them to the core.
    A, b : Tensor
        Embeddings and right-hand side; computed in the core's dtype policy (float64 stays
        float64, half precision is computed in float32) and returned in b's.
    lam : float or Tensor
        λ > 0, a number or a tensor of shape () or of the batch shape.
    strength_bounds : tuple of float
        One ρ per embedding block with ``‖block‖₂² ≤ ρ·λ`` guaranteed by the caller:
        ``(ρ,)`` for general and Potts (Potts: ρ < 1), ``(ρ_A, ρ_Γ)`` for signed (ρ_Γ < 1).
        They fix the iteration counts; embeddings that break them get a wrong x, unflagged.

    Returns
    -------
    Tensor
        x, shaped like b. Its truncation error is at most
        :attr:`~lowrank_gcrf.adapters.traceable_plan.TraceablePlan.bound` ≤ ε relative;
        rounding adds about ε·κ, as for the core's first Woodbury solve.

    Notes
    -----
    Newton–Schulz ``X ← X(2I − CX)`` from ``X₀ = 2/(lo + hi)·I`` squares the residual
    ``I − CX`` at each step; the count k is the least with ``q^(2^k)`` below ε divided by the
    model's amplification (:func:`~lowrank_gcrf.adapters.traceable_plan.traceable_plan`).
    """
    compute, output = dtype_plan(A, b)
    with full_precision(A.device.type):
        return _solve_in(solve_as, A.to(compute), b.to(compute), lam, strength_bounds).to(output)


def _solve_in(
    solve_as: SolveAs, A: Tensor, b: Tensor, lam: Tensor | float, strength_bounds: tuple
) -> Tensor:
    """:func:`traceable_solve` in the compute dtype of A and b."""
    compute = A.dtype
    if isinstance(lam, Tensor):
        lam = lam.to(device=A.device, dtype=compute)[..., None, None]
    labels = int(b.shape[-2]) if solve_as == "potts" else 1
    plan = traceable_plan(
        solve_as,
        strength_bounds,
        rows=int(A.shape[-2]),
        labels=labels,
        compute_dtype=dtype_name(compute),
    ).inversions
    gram = A @ _transpose(A) / lam
    if solve_as == "potts":
        class_sum = b.sum(dim=-2, keepdim=True)
        x = _shifted_solve(A, gram, class_sum, lam, float(labels - 1), plan["sum"]) / labels
        if labels > 1:
            deviation = b - class_sum / labels
            x = x + _shifted_solve(A, gram, deviation, lam, -1.0, plan["deviation"])
        return x
    rows = b[..., None, :]
    if isinstance(solve_as, SignedStack) and solve_as.repulsive_rank < A.shape[-2]:
        x = _signed_solve(A, gram, rows, lam, solve_as.repulsive_rank, plan)
    else:
        x = _shifted_solve(A, gram, rows, lam, 1.0, plan["general"])
    return x[..., 0, :]
