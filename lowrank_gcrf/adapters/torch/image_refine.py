"""``refine`` on PyTorch tensors: class probabilities refined with the image by mean field
in the dense CRF's lattice or by a low-rank Potts G-CRF, differentiable with respect to the
probabilities."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lowrank_gcrf.adapters.bridge import refine_appearance
from lowrank_gcrf.adapters.torch.autograd import core_stream, tensor_to_core
from lowrank_gcrf.adapters.torch.functional import solve_potts
from lowrank_gcrf.dtypes import dtype_name
from lowrank_gcrf.errors import GCRFTypeError
from lowrank_gcrf.lattice_appearance import LatticeArrays
from lowrank_gcrf.refine import PROB_FLOOR, SOLVE_RTOL
from lowrank_gcrf.refine_inputs import (
    RefineParameters,
    check_adapter_parameters,
    checked_spatial_dims,
)
from lowrank_gcrf.refine_passes import (
    APPEARANCE_WEIGHT,
    LATTICE_APPEARANCE_WEIGHT,
    LATTICE_SMOOTH_WEIGHT,
    SMOOTH_WEIGHT,
    passes_parameters,
    uses_lattice,
)
from lowrank_gcrf.refine_strength import AUTO, scaled_by_confidence
from lowrank_gcrf.smooth_refine import gaussian_filter
from lowrank_gcrf.validation import array_namespace


def refine(
    probs: Tensor,
    image: Tensor,
    *,
    logits: bool = False,
    spatial_dims: int = 2,
    channel_axis: int | None = None,
    method: str = "direct",
    **parameters: Any,
) -> Tensor:
    """:func:`lowrank_gcrf.refine` on tensors, differentiable with respect to ``probs``.

    The image is data, without gradient: the core builds from it either the appearance
    lattices (the default passes, ``appearance_kernel="auto"``: the permutohedral lattice's
    sparse factors, :mod:`lowrank_gcrf.lattice_appearance`, built on the host and moved to
    the tensors' device) or the embeddings Â. ``∂L/∂probs`` flows through the mean-field
    passes (the default ``passes=2``, in tensor operations: the lattice's filter by sparse
    CSR products, its transpose in the backward, or the resolvent by Woodbury with a D × D
    capacitance computed once; the smoothness kernel by the core's
    :func:`~lowrank_gcrf.smooth_refine.gaussian_filter`, a product with each axis's banded
    matrix; the softmaxes), or with ``passes=0`` through the exact Potts solve,
    :func:`~lowrank_gcrf.adapters.torch.solve_potts`, and the softmax. With
    ``strength="auto"`` and ``passes=0`` the strength read from the probabilities'
    confidence scales Â, also without gradient (it chooses the model, as a hyperparameter
    would).

    Parameters
    ----------
    probs : Tensor (..., L, *spatial)
        Class probabilities, or scores with ``logits=True``.
    image : Tensor (..., C, *spatial)
        uint8, or floating on the 0–255 scale; the batch and spatial shape of ``probs``, on
        its device.
    logits, spatial_dims, channel_axis, method
        As for :func:`lowrank_gcrf.refine`.
    **parameters
        Its kernel, approximation and strength keywords (``sxy``, ``srgb``, ``sxy_smooth``,
        ``w_appearance``, ``w_smooth``, ``strength``, ``rank``, ``landmarks``, ``seed``,
        ``lam``, ``approximation``, ``normalization``, ``passes``, ``smooth_kernel`` and
        ``appearance_kernel``, as the core's: ``"auto"`` is the lattice's passes with
        ``strength="auto"`` and ``w_smooth=0`` on any device; only the exact solve's exact
        smoothness kernel is the core's alone).

    Returns
    -------
    Tensor like ``probs``
        Refined probabilities: the softmax over the label axis of the last pass's scores (of
        the Potts MAP with ``passes=0``).

    Examples
    --------
    >>> import torch
    >>> from lowrank_gcrf.adapters.torch import refine
    >>> probs = torch.softmax(torch.randn(4, 32, 32), dim=0).requires_grad_()   # (L, H, W)
    >>> image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)           # (C, H, W)
    >>> refined = refine(probs, image)
    >>> refined[0].sum().backward()                    # gradients reach the probabilities
    >>> refined.shape, probs.grad.shape
    (torch.Size([4, 32, 32]), torch.Size([4, 32, 32]))
    """
    if not (isinstance(probs, Tensor) and isinstance(image, Tensor)):
        raise GCRFTypeError(
            f"expected torch tensors for probs and image, got {type(probs).__name__} and "
            f"{type(image).__name__}; use lowrank_gcrf.refine for NumPy or CuPy arrays"
        )
    params = RefineParameters(**parameters)
    check_adapter_parameters(params)
    lattice = uses_lattice(params)
    if not lattice:
        params = passes_parameters(params)
    spatial_dims = checked_spatial_dims(spatial_dims)
    compute = torch.float64 if probs.dtype == torch.float64 else torch.float32
    with core_stream(probs.device):
        core_probs = tensor_to_core(_dlpack_dtype(probs, compute))
        core_image = tensor_to_core(_dlpack_dtype(image, compute))
        appearance = refine_appearance(
            core_probs,
            core_image,
            params,
            lattice=lattice,
            spatial_dims=spatial_dims,
            logits=logits,
            channel_axis=channel_axis,
            carried_dtype=dtype_name(probs.dtype),
        )
        if not lattice:
            Ahat = appearance
            if params.strength == AUTO:
                Ahat = scaled_by_confidence(array_namespace(Ahat), Ahat, core_probs, logits=logits)
            Ahat = torch.from_dlpack(Ahat)
    scores = probs.to(compute)
    if not logits:
        scores = torch.log(scores.clamp_min(PROB_FLOOR))
    spatial = tuple(probs.shape[-spatial_dims:])
    labels = probs.shape[-spatial_dims - 1]
    b = scores.reshape(-1, labels, math.prod(spatial))
    if params.passes == 0:
        x = solve_potts(Ahat, b, params.lam, method=method, rtol=SOLVE_RTOL)
        refined = torch.softmax(x, dim=1)
    elif lattice:
        message = _lattice_message(appearance, b)
        refined = _passes(message, b, LATTICE_SMOOTH_WEIGHT, params, spatial)
    else:
        message = _resolvent_message(Ahat, b, params)
        refined = _passes(message, b, SMOOTH_WEIGHT, params, spatial)
    return refined.reshape(probs.shape).to(probs.dtype)


def _passes(
    appearance: Callable[[Tensor], Tensor],
    b: Tensor,
    smooth_weight: float,
    params: RefineParameters,
    spatial: tuple,
) -> Tensor:
    """The probabilities ``softmax(x_n)`` of :func:`lowrank_gcrf.refine`'s mean-field passes
    (:mod:`lowrank_gcrf.refine_passes`) in tensor operations, differentiable in ``b``."""
    n, labels, pixels = b.shape
    q = torch.softmax(b, dim=1)
    for _ in range(params.passes):
        grid = q.reshape(n, labels, *spatial)
        filtered = gaussian_filter(array_namespace(q), grid, params.sxy_smooth, len(spatial))
        x = b + appearance(q) + smooth_weight * (filtered.reshape(n, labels, pixels) - q)
        q = torch.softmax(x, dim=1)
    return q


def _resolvent_message(
    Ahat: Tensor, b: Tensor, params: RefineParameters
) -> Callable[[Tensor], Tensor]:
    """The landmarks' message ``β(1 − α)(I − ÂᵀÂ/λ)⁻¹ q`` by Woodbury, the D × D capacitance
    computed once (:class:`lowrank_gcrf.refine_passes.ResolventMessage`)."""
    At = Ahat.transpose(-1, -2)
    eye = torch.eye(Ahat.shape[1], dtype=torch.float64, device=Ahat.device)
    capacitance = torch.linalg.inv(params.lam * eye - (Ahat @ At).double()).to(b.dtype)
    keep = APPEARANCE_WEIGHT * (1.0 - params.strength)
    return lambda q: keep * (q + ((q @ At) @ capacitance) @ Ahat)


def _lattice_message(lattice: LatticeArrays, b: Tensor) -> Callable[[Tensor], Tensor]:
    """The lattice's message ``w_a (N − diag N) q``
    (:mod:`lowrank_gcrf.lattice_appearance`), the filter ``W B Wᵀ`` by sparse CSR products
    (:class:`_LatticeFilter`), in ``b``'s dtype and on its device."""
    factors = _LatticeFactors.of(lattice, b)
    scale = torch.from_numpy(lattice.scale).to(b.device, b.dtype).unsqueeze(-1)
    own = torch.from_numpy(lattice.own).to(b.device, b.dtype).unsqueeze(-1)

    def message(q: Tensor) -> Tensor:
        n, labels, pixels = q.shape
        flat = q.transpose(1, 2).reshape(n * pixels, labels)
        filtered = _LatticeFilter.apply(scale * flat, factors)
        out = LATTICE_APPEARANCE_WEIGHT * (scale * filtered - own * flat)
        return out.reshape(n, pixels, labels).transpose(1, 2)

    return message


@dataclass(frozen=True)
class _LatticeFactors:
    """W (n·P × M), Wᵀ and the blur steps B_k (M × M) as sparse CSR tensors."""

    weights: Tensor
    splat: Tensor
    blur: tuple[Tensor, ...]

    @classmethod
    def of(cls, lattice: LatticeArrays, like: Tensor) -> _LatticeFactors:
        def csr(m: Any) -> Tensor:
            parts = (torch.from_numpy(a).to(like.device) for a in (m.indptr, m.indices, m.data))
            indptr, indices, data = parts
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
                return torch.sparse_csr_tensor(
                    indptr, indices, data.to(like.dtype), size=m.shape, check_invariants=False
                )

        weights, splat, blur = lattice.csr_factors()
        return cls(csr(weights), csr(splat), tuple(csr(step) for step in blur))

    def filter(self, v: Tensor, *, transpose: bool) -> Tensor:
        """``W B Wᵀ v``, or ``W Bᵀ Wᵀ v``: each blur step is symmetric (a vertex and its
        neighbour along a direction are each other's), so Bᵀ is the steps in reverse."""
        x = self.splat @ v
        for step in reversed(self.blur) if transpose else self.blur:
            x = step @ x
        return self.weights @ x


class _LatticeFilter(torch.autograd.Function):
    """``W B Wᵀ v`` for v (n·P, L), differentiable in v: the backward applies the transpose
    with the same factors (sparse tensors' own autograd transposes them on every call)."""

    @staticmethod
    def forward(v: Tensor, factors: _LatticeFactors) -> Tensor:
        return factors.filter(v, transpose=False)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Tensor) -> None:
        ctx.factors = inputs[1]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return ctx.factors.filter(grad, transpose=True), None


def _dlpack_dtype(tensor: Tensor, compute: torch.dtype) -> Tensor:
    """``tensor``, or in ``compute`` where it is bfloat16, which has no NumPy dtype to cross
    DLPack with (its rounding is still what the core judges it by)."""
    return tensor.to(compute) if tensor.dtype == torch.bfloat16 else tensor
