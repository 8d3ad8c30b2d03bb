"""The Potts embeddings Â that :func:`~lowrank_gcrf.refine` solves with, from the image.

The dense CRF's kernels at rank D (:mod:`lowrank_gcrf.image_kernels`), one image at a time,
scaled to the strength: the exact solve's (``passes=0``) and the landmarks' passes'
appearance kernel, which the PyTorch and TensorFlow adapters differentiate through there.
"""

from __future__ import annotations

import math
from typing import Any

import array_api_compat

from .image_kernels import dense_crf_features, potts_embeddings, scaled_to_strength
from .refine_inputs import RefineParameters, channels_first, checked_spatial_dims
from .refine_strength import AUTO
from .threads import core_function
from .validation import array_namespace


@core_function
def refine_embeddings(
    image: Any,
    params: RefineParameters,
    *,
    spatial_dims: int,
    dtype: Any,
    channel_axis: int | None = None,
) -> Any:
    """The Potts embeddings Â (n, D, P) that :func:`refine` solves with, one per image.

    ``image`` (..., C, *spatial), or the layout ``channel_axis`` names (see :func:`refine`),
    is flattened to n = prod(...) images; each gets the rank-D features of the dense CRF
    kernels (:mod:`lowrank_gcrf.image_kernels`), and the batch is scaled so that
    ``‖Â‖₂² = strength · λ`` per image (``‖Â‖₂² = λ`` with ``strength="auto"``: the caller
    scales each image by the square root of its strength,
    :func:`~lowrank_gcrf.refine_strength.with_strengths`). Â comes in ``dtype``; an empty
    batch gives an empty (0, D, P) array. Not differentiable (the image is data): the
    adapters compute Â with it and differentiate through the solve or the landmarks' passes.
    """
    xp = array_namespace(image)
    spatial_dims = checked_spatial_dims(spatial_dims)
    image = channels_first(xp, image, spatial_dims, channel_axis)
    spatial = tuple(image.shape[-spatial_dims:])
    channels = image.shape[-spatial_dims - 1]
    n_images = math.prod(image.shape[: -spatial_dims - 1])
    if n_images == 0:
        device = array_api_compat.device(image)
        return xp.zeros((0, params.rank, math.prod(spatial)), dtype=dtype, device=device)
    images = xp.reshape(image, (n_images, channels, *spatial))
    # Only the weights' ratio matters (the embeddings are scaled to the strength): relative
    # to the larger, a weight such as 1e300 cannot overflow float32 on its way.
    top = max(params.w_appearance, params.w_smooth)
    embeddings = [
        xp.astype(
            potts_embeddings(
                xp,
                dense_crf_features(
                    xp,
                    images[i, ...],
                    sxy=params.sxy,
                    srgb=params.srgb,
                    sxy_smooth=params.sxy_smooth,
                    w_appearance=params.w_appearance / top,
                    w_smooth=params.w_smooth / top,
                    landmarks=params.landmarks,
                    approximation=params.approximation,
                    seed=params.seed,
                    dtype=dtype,
                ),
                rank=params.rank,
                normalization=params.normalization,
                seed=params.seed,
            ),
            dtype,
        )
        for i in range(n_images)
    ]
    strength = 1.0 if params.strength == AUTO else params.strength
    return scaled_to_strength(xp, xp.stack(embeddings), strength=strength, lam=params.lam)
