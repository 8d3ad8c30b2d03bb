"""``refine``: a network's class probabilities refined with the image by a dense CRF.

DeepLab's recipe refines a segmentation network's softmax with a fully connected CRF whose
pairwise kernels come from the image (positions and colours). ``refine`` runs it two ways.

By default (``passes=2``), two mean-field passes (:mod:`lowrank_gcrf.refine_passes`): each
pixel's message is a weighted sum of its neighbours' probabilities under the appearance
kernel, filtered by the permutohedral lattice (:mod:`lowrank_gcrf.permutohedral`, the
filter of pydensecrf) and symmetrically normalised, plus the smoothness kernel by exact
separable filtering, with a softmax between the passes. With ``appearance_kernel=
"landmarks"`` (and for arrays other than NumPy's) the appearance message is instead the
resolvent of the low-rank Potts G-CRF below, applied to the probabilities; a numeric
``strength`` or ``w_smooth > 0``, which concern that G-CRF, select it too.

With ``passes=0``, the exact MAP of a low-rank Potts G-CRF (Eq. 11–12): the two Gaussian
kernels are approximated at rank D (:mod:`lowrank_gcrf.image_kernels`) and the MAP is found
exactly by :func:`~lowrank_gcrf.solve_potts`. With unary scores ``b_k = log p_k`` and
``K = ÂᵀÂ``, the MAP ``x`` of ``(λI + (J − I) ⊗ K) x = b`` splits into a per-pixel class sum,
which softmax ignores, and the deviations ``x_k − x̄ = (λI − K)⁻¹ (b_k − b̄) = λ⁻¹ Σₙ (K/λ)ⁿ
(b_k − b̄)``: each pixel's scores are propagated to the pixels the kernel calls similar,
with weight ``strengthⁿ`` after n steps (``‖K‖₂ = strength·λ``). With the symmetric
normalisation this is Zhou et al.'s label spreading ``(I − αS)⁻¹Y`` with ``α = strength``
and a low-rank S. Logits give the same result as the log of their softmax (a per-pixel
constant only shifts the class sum).

The checks of the parameters and the arrays are :mod:`lowrank_gcrf.refine_inputs`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import array_api_compat

from .api import solve_potts
from .dtypes import floating_dtypes
from .image_embeddings import refine_embeddings
from .refine_inputs import RefineParameters, RefineShape, check_refine_inputs
from .refine_passes import check_appearance_kernel, passes_scores
from .refine_strength import (
    AUTO,
    expected_error,
    scaled_by_confidence,
    strength_from_error,
    with_strengths,
)
from .smooth_refine import NormalisedSmoothness, solve_deviations
from .threads import core_function

#: Probabilities are clipped below at this value before their logarithm (as pydensecrf's
#: ``unary_from_softmax``), so that a zero probability is a large finite penalty.
PROB_FLOOR = 1e-5
#: Relative residual of the solve: the refined probabilities change by about this fraction
#: of the scores, far below what moves an argmax; float32 reaches it up to κ ≈ 10⁴.
SOLVE_RTOL = 1e-4


@core_function
def refine(
    probs: Any,
    image: Any,
    *,
    sxy: float = 80.0,
    srgb: float = 13.0,
    sxy_smooth: float = 3.0,
    w_appearance: float = 4.0,
    w_smooth: float = 0.0,
    strength: float | str = "auto",
    rank: int = 32,
    landmarks: int = 128,
    spatial_dims: int = 2,
    channel_axis: int | None = None,
    seed: int = 0,
    logits: bool = False,
    lam: float = 1.0,
    approximation: str = "nystrom-kmeans",
    normalization: str = "symmetric",
    smooth_kernel: str = "landmarks",
    passes: int = 2,
    appearance_kernel: str = "auto",
    method: str = "direct",
    return_info: bool = False,
) -> Any:
    """Refine class probabilities with the image by a dense CRF.

    By default, two mean-field passes with the dense CRF's kernels (``passes`` and
    ``appearance_kernel`` below). With ``passes=0``, solves
    ``(λI + (J − I) ⊗ ÂᵀÂ) x = log p`` (Eq. 11–12) with embeddings Â from the image — a
    rank-``rank`` approximation of the dense CRF's appearance and smoothness Gaussian
    kernels, symmetrically normalised and scaled so that
    ``‖Â‖₂² = strength · λ`` exactly (the Potts condition λ > ‖Â‖₂² with margin
    ``1 − strength``) — and returns ``softmax(x)`` over the labels (``log p`` is clipped
    below at ``log 1e-5``).

    Parameters
    ----------
    probs : array (..., L, *spatial)
        Class probabilities (a softmax over axis ``-spatial_dims - 1``), or unnormalised
        scores with ``logits=True``. float16 and bfloat16 are computed in float32.
    image : array (..., C, *spatial), or the layout ``channel_axis`` names
        The image, any number of channels C, same batch and spatial shape as ``probs``:
        uint8 (0–255) or floating **on the same 0–255 scale** (multiply a [0, 1] image by
        255). A warning is emitted for a floating image within [−1, 1], and for an image
        on a wider scale, such as 12- or 16-bit: an integer image above 255, a floating one
        above 510 (a 0–255 image resampled with overshoot stays below).
    sxy, srgb : float, default 80 and 13
        Appearance kernel bandwidths (pydensecrf's ``addPairwiseBilateral(sxy, srgb)``,
        DeepLab's θα and θβ): pixels within about sxy pixels and srgb colour levels of each
        other are coupled.
    sxy_smooth : float, default 3
        Smoothness kernel bandwidth in pixels (``addPairwiseGaussian(sxy)``, θγ).
    w_appearance, w_smooth : float, default 4 and 0
        Relative weights of the two kernels in Â (DeepLab's ``compat`` 4 and 3). Only their
        ratio matters: the symmetric normalisation divides out their overall scale, and
        ``strength`` sets it instead. The smoothness kernel is off in Â by default: a kernel
        a few pixels wide is far from low rank, and with the quarter of the landmarks it gets
        its approximation lowered validation mIoU in the benchmark. The passes apply it
        exactly in a message of their own; with ``passes=0``, ``smooth_kernel="exact"``
        holds it exactly, at about twice the time. The lattice's passes have fixed weights
        of their own (``appearance_kernel``): ``w_smooth > 0`` asks for Â's smoothness part,
        so that ``"auto"`` then takes the landmarks.
    strength : float in [0, 1), or "auto" (default)
        ``‖Â‖₂²/λ``: how far scores propagate along similar pixels (the weight of n-step
        paths is strengthⁿ; about ``1/(1 − strength)`` steps). With ``passes=0``, 0
        returns ``probs`` (up to the clipping below); values close to 1 smooth more (the
        margin ``1 − strength`` is how far the system stays from indefinite). With
        ``passes=0``, ``"auto"`` chooses it per image from the unary's confidence
        (:mod:`lowrank_gcrf.refine_strength`): with ``e`` the mean of ``1 − max_k p_k``
        over the pixels (the fraction a calibrated network gets wrong),
        ``strength = min(1 − 1/(1 + 20·e/(1 − e)), 0.95)``: about 0.5 for a confident
        stride-8 prediction (e ≈ 0.05), 0.9 for one with 30 % of its pixels wrong at
        probability 0.7, 0 for a one-hot unary. It reads the confidence from ``probs`` (or
        their softmax with ``logits=True``): pass calibrated probabilities, not sharpened
        or tempered ones, or give a number. With the landmarks' passes, ``"auto"`` is 0.8:
        the softmax between passes bounds what the propagation can do; the lattice's passes
        (the default for NumPy and CuPy arrays) have no strength.
    rank : int, default 32
        Rank D of the embeddings Â: the solve costs about D²·P + 8·D·L·P.
    landmarks : int, default 128
        m ≥ rank: Nyström landmarks (or random features) of the kernel approximation, which
        is then compressed to its top ``rank`` eigen-directions. Quality follows m more than
        D (see the benchmark); the feature map costs about m·P kernel evaluations and one
        rank × m by m × P product.
    spatial_dims : {1, 2, 3}, default 2
        Number of trailing spatial axes of ``probs`` (3 for volumes).
    channel_axis : int, optional
        The axis of ``image`` that holds its channels, as scikit-image's ``channel_axis``:
        ``-1`` for the (..., H, W, C) layout of scikit-image, PIL and pydensecrf. The other
        axes are read as ``probs``'s, batch then spatial. Default: channels right before
        the spatial axes, (..., C, *spatial) (axis −3 for 2-D images). Unlike in
        scikit-image, ``None`` does not mean grayscale: give a grayscale image a channel
        axis of length 1.
    seed : int, default 0
        Seeds the landmark sampling and k-means (or the random features): the result is
        deterministic, and each image of a batch gets the same result as alone. The
        lattice draws nothing.
    logits : bool, default False
        ``probs`` holds scores (the result equals that of their softmax, since a per-pixel
        constant does not change the refined probabilities).
    lam : float, default 1
        λ; with ``passes=0`` the refined scores scale as 1/λ (a temperature): with λ = 1 a
        pixel with no similar neighbour keeps its log-probabilities. The passes do not
        depend on it (the landmarks' resolvent is normalised, the lattice has none).
    approximation : {"nystrom-kmeans", "nystrom-random", "rff"}
        Kernel feature map (:mod:`lowrank_gcrf.image_kernels`).
    normalization : {"symmetric", "none"}
        ``"symmetric"``: ``Δ^{-1/2} W Δ^{-1/2}`` as in spectral clustering (default).
    smooth_kernel : {"landmarks", "exact"}, default "landmarks"
        How the smoothness kernel (``w_smooth > 0``) is held. ``"landmarks"``: in the rank-D
        embeddings, from a quarter of the landmarks. ``"exact"``: by Gaussian filtering
        (:mod:`lowrank_gcrf.smooth_refine`), each kernel symmetrically normalised and given
        the share ``w/(w_appearance + w_smooth)`` of the strength, the deviations of the
        Potts MAP solved by CG preconditioned by the low-rank appearance part (``method`` is
        then not used; the info reports that CG and the deviation systems' residual). NumPy
        and CuPy only (not the adapters).
    passes : int, default 2
        0: the exact Potts solve above. n ≥ 1: n mean-field passes instead
        (:mod:`lowrank_gcrf.refine_passes`), ``x_t = log p + a(q_{t−1}) + w_s (G − I)
        q_{t−1}``, ``q_t = softmax(x_t)`` from ``q_0 = p``, with G DeepLab's smoothness
        Gaussian (``sxy_smooth``) by exact filtering and the appearance message ``a`` as
        ``appearance_kernel`` says. The softmax between passes removes isolated wrong pixels
        that the linear solve keeps.
    appearance_kernel : {"auto", "lattice", "landmarks"}, default "auto"
        How the passes hold the appearance kernel. ``"lattice"``: the dense CRF's bilateral
        kernel (``sxy``, ``srgb``) filtered by the permutohedral lattice
        (:mod:`lowrank_gcrf.permutohedral`, pydensecrf's filter), symmetrically normalised,
        without each pixel's own term: ``a(q) = w_a (N − diag N) q``, w_a = 7.5, w_s = 0.1;
        NumPy and CuPy arrays (the adapters' tensors too; built on the host from the image,
        applied by SciPy's or cuSPARSE's products), filtered in float32 (float64 probabilities
        get float32's precision in that message; the adapters filter float64 tensors in
        float64), and no ``strength``, ``rank``,
        ``landmarks``, ``approximation`` or ``normalization`` (the kernel is not low rank).
        ``"landmarks"``: this solve's normalised resolvent at rank D,
        ``a(q) = β(1 − α)(I − ÂᵀÂ/λ)⁻¹ q``, β = 100, w_s = 1, α = 0.8 with
        ``strength="auto"`` (at 1.5–2.5 times the lattice's time on one CPU thread in the
        benchmark). ``"auto"``: ``"lattice"`` with ``strength="auto"`` and ``w_smooth=0``,
        else ``"landmarks"`` (a numeric ``strength`` or ``w_smooth > 0``, which concern Â;
        arrays of other array-API libraries). The weights were chosen on the
        benchmark's validation split. The adapters' ``"auto"`` is the same rule with the
        lattice on any device (built on the host, applied to the tensors).
    method : {"direct", "cg", "auto"}, default "direct"
        Passed to :func:`~lowrank_gcrf.solve_potts`.
    return_info : bool
        Also return the solve's :class:`~lowrank_gcrf.SolveInfo` (fields of the batch shape);
        for the passes, ``method="passes"`` and the number of passes, the residual that of
        the landmarks' last resolvent solve, NaN for the lattice (no linear system).

    Returns
    -------
    refined : array like ``probs`` (shape, dtype, library)
    info : SolveInfo, only with ``return_info=True``

    Raises
    ------
    GCRFError
        Shapes that disagree, NaN or Inf, probabilities that are negative or do not sum to
        1 (tolerance √ε + L·ε, ε that of their dtype, at least float32's: a float32
        softmax cast to float64 carries float32's rounding), parameters out of range, a
        bandwidth too small for the image to evaluate its kernel even in float64 (for the
        lattice: to hold the features in its float32 coordinates).
    GCRFTypeError
        Non-array inputs, arrays from different libraries, a non-floating ``probs``,
        parameters of the wrong type (booleans included; NumPy scalars are accepted).

    Notes
    -----
    The low-rank kernels are computed in the dtype of the solve (float32 or float64, from
    ``probs``; the lattice in float32), or in float64 where a bandwidth is so small against
    the image that the scaled features exceed 1/√ε of float32 (beyond it the Gaussian's
    exponent loses all precision); an empty batch gives an empty result.

    Examples
    --------
    >>> import numpy as np
    >>> import lowrank_gcrf as lg
    >>> rng = np.random.default_rng(0)
    >>> image = rng.integers(0, 256, (3, 32, 32), dtype=np.uint8)   # (C, H, W), 0–255
    >>> probs = rng.dirichlet(np.ones(4), size=(32, 32)).transpose(2, 0, 1)   # (L, H, W)
    >>> refined = lg.refine(probs, image)
    >>> refined.shape, bool(np.allclose(refined.sum(axis=0), 1.0))
    ((4, 32, 32), True)
    >>> hwc = np.ascontiguousarray(image.transpose(1, 2, 0))   # (H, W, C), as scikit-image
    >>> bool(np.array_equal(lg.refine(probs, hwc, channel_axis=-1), refined))
    True
    """
    params = RefineParameters(
        sxy=sxy,
        srgb=srgb,
        sxy_smooth=sxy_smooth,
        w_appearance=w_appearance,
        w_smooth=w_smooth,
        strength=strength,
        rank=rank,
        landmarks=landmarks,
        seed=seed,
        lam=lam,
        approximation=approximation,
        normalization=normalization,
        smooth_kernel=smooth_kernel,
        passes=passes,
        appearance_kernel=appearance_kernel,
    )
    shape = check_refine_inputs(
        probs, image, spatial_dims=spatial_dims, logits=logits, channel_axis=channel_axis
    )
    xp = shape.xp
    check_appearance_kernel(params, xp)
    n, pixels = math.prod(shape.batch), math.prod(shape.spatial)
    scores = xp.reshape(xp.astype(probs, shape.compute), (n, shape.num_labels, pixels))
    b = scores if logits else xp.log(xp.maximum(scores, PROB_FLOOR))
    if params.passes > 0 and n > 0:
        x, info = passes_scores(
            image, b, params, shape, channel_axis=channel_axis, with_info=return_info
        )
    elif params.smooth_kernel == "exact" and params.w_smooth > 0 and n > 0:
        x, info = _exact_smoothness_solve(
            image, scores, b, params, shape, logits=logits, channel_axis=channel_axis
        )
    else:
        Ahat = refine_embeddings(
            image, params, spatial_dims=spatial_dims, dtype=shape.compute, channel_axis=channel_axis
        )
        if params.strength == AUTO:
            Ahat = scaled_by_confidence(xp, Ahat, scores, logits=logits)
        x, info = solve_potts(Ahat, b, lam, method=method, rtol=SOLVE_RTOL, return_info=True)
    x = x - xp.max(x, axis=1, keepdims=True)
    e = xp.exp(x)
    output = floating_dtypes(xp, probs=probs)[1]  # probs' dtype, in native byte order
    refined = xp.astype(xp.reshape(e / xp.sum(e, axis=1, keepdims=True), probs.shape), output)
    if not return_info:
        return refined
    info = dataclasses.replace(
        info,
        iterations=xp.reshape(info.iterations, shape.batch),
        residual=xp.reshape(info.residual, shape.batch),
        converged=xp.reshape(info.converged, shape.batch),
    )
    return refined, info


def _exact_smoothness_solve(
    image: Any,
    scores: Any,
    b: Any,
    params: RefineParameters,
    shape: RefineShape,
    *,
    logits: bool,
    channel_axis: int | None,
) -> tuple[Any, Any]:
    """The deviations of the Potts MAP (n, L, P) with the appearance kernel at rank D and the
    smoothness kernel exact (:mod:`lowrank_gcrf.smooth_refine`), the strength α (fixed or
    automatic) shared in proportion to ``w_appearance : w_smooth``."""
    xp = shape.xp
    n, labels, pixels = b.shape
    if params.strength == AUTO:
        alpha = strength_from_error(xp, expected_error(xp, scores, logits=logits))
    else:
        alpha = xp.full((n,), params.strength, dtype=xp.float64)
    appearance = params.w_appearance / (params.w_appearance + params.w_smooth)
    device = array_api_compat.device(b)
    if params.w_appearance > 0:
        unit = dataclasses.replace(params, w_smooth=0.0, strength=AUTO)
        Ahat = refine_embeddings(
            image,
            unit,
            spatial_dims=len(shape.spatial),
            dtype=shape.compute,
            channel_axis=channel_axis,
        )
        Ahat = with_strengths(xp, Ahat, alpha * appearance)
    else:
        Ahat = xp.zeros((n, params.rank, pixels), dtype=shape.compute, device=device)
    smoothness = NormalisedSmoothness(
        xp, shape.spatial, params.sxy_smooth, shape.compute, device=device
    )
    y, info = solve_deviations(
        xp,
        Ahat,
        smoothness,
        alpha * (1.0 - appearance),
        xp.reshape(b, (n, labels, *shape.spatial)),
        lam=params.lam,
        rtol=SOLVE_RTOL,
    )
    return xp.reshape(y, (n, labels, pixels)), info
