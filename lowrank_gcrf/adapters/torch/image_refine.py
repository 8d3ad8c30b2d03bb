"""``refine`` on PyTorch tensors: class probabilities refined with the image by a low-rank
Potts G-CRF, differentiable with respect to the probabilities."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lowrank_gcrf.adapters.bridge import refine_embeddings
from lowrank_gcrf.adapters.torch.autograd import core_stream, tensor_to_core
from lowrank_gcrf.adapters.torch.functional import solve_potts
from lowrank_gcrf.dtypes import dtype_name
from lowrank_gcrf.errors import GCRFTypeError
from lowrank_gcrf.refine import PROB_FLOOR, SOLVE_RTOL
from lowrank_gcrf.refine_inputs import (
    RefineParameters,
    check_adapter_parameters,
    checked_spatial_dims,
)
from lowrank_gcrf.refine_passes import APPEARANCE_WEIGHT, SMOOTH_WEIGHT, passes_parameters
from lowrank_gcrf.refine_strength import AUTO, scaled_by_confidence
from lowrank_gcrf.smooth_refine import gaussian_weights
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

    The embeddings Â come from the image through the core, without gradient (the image is
    data). ``∂L/∂probs`` flows through the mean-field passes (the default ``passes=2``: the
    resolvent by Woodbury with a D × D capacitance computed once, the smoothness kernel by
    1-D convolutions, and the softmaxes, all in tensor operations), or with ``passes=0``
    through the exact Potts solve, :func:`~lowrank_gcrf.adapters.torch.solve_potts`, and the
    softmax. With ``strength="auto"`` and ``passes=0`` the strength read from the
    probabilities' confidence scales Â, also without gradient (it chooses the model, as a
    hyperparameter would).

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
        ``appearance_kernel`` — ``"landmarks"`` only, which ``"auto"`` is here: the exact
        solve's exact smoothness kernel and the lattice's passes are the core's alone, so
        that the default passes here are the core's ``appearance_kernel="landmarks"``).

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
    params = passes_parameters(params)
    spatial_dims = checked_spatial_dims(spatial_dims)
    compute = torch.float64 if probs.dtype == torch.float64 else torch.float32
    with core_stream(probs.device):
        core_probs = tensor_to_core(_dlpack_dtype(probs, compute))
        Ahat = refine_embeddings(
            core_probs,
            tensor_to_core(_dlpack_dtype(image, compute)),
            params,
            spatial_dims=spatial_dims,
            logits=logits,
            channel_axis=channel_axis,
            carried_dtype=dtype_name(probs.dtype),
        )
        if params.strength == AUTO:
            Ahat = scaled_by_confidence(array_namespace(Ahat), Ahat, core_probs, logits=logits)
        Ahat = torch.from_dlpack(Ahat)
    scores = probs.to(compute)
    if not logits:
        scores = torch.log(scores.clamp_min(PROB_FLOOR))
    b = scores.reshape(Ahat.shape[0], probs.shape[-spatial_dims - 1], Ahat.shape[-1])
    if params.passes > 0:
        x = _passes(Ahat, b, params, tuple(probs.shape[-spatial_dims:]))
    else:
        x = solve_potts(Ahat, b, params.lam, method=method, rtol=SOLVE_RTOL)
    return torch.softmax(x, dim=1).reshape(probs.shape).to(probs.dtype)


def _passes(Ahat: Tensor, b: Tensor, params: RefineParameters, spatial: tuple) -> Tensor:
    """The scores of :func:`lowrank_gcrf.refine`'s mean-field passes
    (:mod:`lowrank_gcrf.refine_passes`) in tensor operations, differentiable in ``b``."""
    n, labels, pixels = b.shape
    At = Ahat.transpose(-1, -2)
    eye = torch.eye(Ahat.shape[1], dtype=torch.float64, device=Ahat.device)
    capacitance = torch.linalg.inv(params.lam * eye - (Ahat @ At).double()).to(b.dtype)
    keep = APPEARANCE_WEIGHT * (1.0 - params.strength)
    q = torch.softmax(b, dim=1)
    x = b
    for _ in range(params.passes):
        spread = q + ((q @ At) @ capacitance) @ Ahat
        filtered = _gaussian_filter(q.reshape(n, labels, *spatial), params.sxy_smooth)
        x = b + keep * spread + SMOOTH_WEIGHT * (filtered.reshape(n, labels, pixels) - q)
        q = torch.softmax(x, dim=1)
    return x


def _gaussian_filter(x: Tensor, sigma: float) -> Tensor:
    """:func:`lowrank_gcrf.smooth_refine.gaussian_filter` over the spatial axes (all after
    the first two) by 1-D convolutions, zero outside the image."""
    for axis in range(2, x.ndim):
        weights = gaussian_weights(sigma, x.shape[axis])
        kernel = torch.as_tensor(weights, dtype=x.dtype, device=x.device).reshape(1, 1, -1)
        moved = x.movedim(axis, -1)
        rows = moved.reshape(-1, 1, moved.shape[-1])
        out = torch.nn.functional.conv1d(rows, kernel, padding=(kernel.shape[-1] - 1) // 2)
        x = out.reshape(moved.shape).movedim(-1, axis)
    return x


def _dlpack_dtype(tensor: Tensor, compute: torch.dtype) -> Tensor:
    """``tensor``, or in ``compute`` where it is bfloat16, which has no NumPy dtype to cross
    DLPack with (its rounding is still what the core judges it by)."""
    return tensor.to(compute) if tensor.dtype == torch.bfloat16 else tensor
