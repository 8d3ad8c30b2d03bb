"""``refine`` on PyTorch tensors: class probabilities refined with the image by an exact
Potts G-CRF, differentiable with respect to the probabilities."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lowrank_gcrf.adapters.bridge import refine_embeddings
from lowrank_gcrf.adapters.torch.autograd import core_stream, tensor_to_core
from lowrank_gcrf.adapters.torch.functional import solve_potts
from lowrank_gcrf.refine import PROB_FLOOR, SOLVE_RTOL, RefineParameters


def refine(
    probs: Tensor,
    image: Tensor,
    *,
    logits: bool = False,
    spatial_dims: int = 2,
    method: str = "direct",
    **parameters: Any,
) -> Tensor:
    """:func:`lowrank_gcrf.refine` on tensors, differentiable with respect to ``probs``.

    The embeddings Â come from the image through the core, without gradient (the image is
    data); the solve is :func:`~lowrank_gcrf.adapters.torch.solve_potts`, so ``∂L/∂probs``
    flows through the exact Potts solve and the softmax.

    Parameters
    ----------
    probs : Tensor (..., L, *spatial)
        Class probabilities, or scores with ``logits=True``.
    image : Tensor (..., C, *spatial)
        uint8, or floating on the 0–255 scale; the batch and spatial shape of ``probs``, on
        its device.
    logits, spatial_dims, method
        As for :func:`lowrank_gcrf.refine`.
    **parameters
        Its kernel, approximation and strength keywords (``sxy``, ``srgb``, ``sxy_smooth``,
        ``w_appearance``, ``w_smooth``, ``strength``, ``rank``, ``landmarks``, ``seed``,
        ``lam``, ``approximation``, ``normalization``).

    Returns
    -------
    Tensor like ``probs``
        Refined probabilities, ``softmax`` of the Potts MAP scores over the label axis.

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
    params = RefineParameters(**parameters)
    with core_stream(probs.device):
        Ahat = torch.from_dlpack(
            refine_embeddings(
                tensor_to_core(probs),
                tensor_to_core(image),
                params,
                spatial_dims=spatial_dims,
                logits=logits,
            )
        )
    scores = probs.to(torch.float64 if probs.dtype == torch.float64 else torch.float32)
    if not logits:
        scores = torch.log(scores.clamp_min(PROB_FLOOR))
    b = scores.reshape(Ahat.shape[0], probs.shape[-spatial_dims - 1], Ahat.shape[-1])
    x = solve_potts(Ahat, b, params.lam, method=method, rtol=SOLVE_RTOL)
    return torch.softmax(x, dim=1).reshape(probs.shape).to(probs.dtype)
