"""``refine(passes=n)``: mean-field passes whose appearance message is the Potts resolvent.

The exact Potts solve (:func:`~lowrank_gcrf.refine` with ``passes=0``) is linear in the scores: a
pixel whose own unary is wrong keeps it at full weight, and the Potts condition ‖K‖₂ < λ
bounds what its neighbours can add, so isolated wrong pixels (and with them classes absent
from the image) survive a noisy unary. Mean field removes them with its normalisation: each
pixel's message is a weighted sum of its neighbours' *probabilities*, bounded whatever their
scores, and the softmax between iterations saturates. The passes combine the two: with
``q₀ = p`` (the unary's probabilities) and ``b = log p``,

    x_t = b + β R q_{t−1} + w_s (G q_{t−1} − q_{t−1}),    q_t = softmax(x_t),

for t = 1 … n, and the result is ``q_n``. The appearance message is the G-CRF's normalised
resolvent ``R = (1 − α)(I − K/λ)⁻¹`` with ``K = ÂᵀÂ`` the low-rank appearance kernel scaled
to ``‖K‖₂ = αλ`` (Eq. 11–12's deviations propagate by the same operator): label spreading of
the probabilities along similar pixels. ‖R‖₂ = 1 (its top eigenvalue, on K's top
eigenvector, is (1 − α)/(1 − α)), so that β bounds the message of a pixel's whole
neighbourhood, whatever α. By Woodbury,

    (I − K/λ)⁻¹ q = q + Âᵀ (λI − ÂÂᵀ)⁻¹ Â q,

one D × D factorisation per image (condition number ≤ 1/(1 − α)) and O(D·L·P) per pass.
The smoothness message is the dense CRF's Gaussian kernel of bandwidth ``sxy_smooth``
(value 1 at distance 0, as pydensecrf's) applied exactly by separable filtering,
:func:`~lowrank_gcrf.smooth_refine.gaussian_filter`, without the pixel itself, with weight
``w_s`` (pydensecrf's ``compat``). β, w_s and α were chosen on the refine benchmark's
validation split (:data:`APPEARANCE_WEIGHT`, :data:`SMOOTH_WEIGHT`, :data:`PASSES_STRENGTH`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .info import SolveInfo
from .refine_inputs import RefineParameters
from .refine_strength import AUTO
from .smooth_refine import gaussian_filter

#: β: the weight of the appearance message, a pixel's label-spread neighbourhood (validation
#: mIoU against pydensecrf2 MF-5, mean over the two unaries, was best at 100 among 50, 100,
#: 150 and 200 with the others at their values here).
APPEARANCE_WEIGHT = 100.0
#: w_s: the weight of the smoothness message, in pydensecrf's units (compat × a kernel of
#: value 1 at distance 0); on validation 1.5 and DeepLab's 3 over-smoothed the coarse unary,
#: 0.5 and 0.7 left more of the noisy unary's errors.
SMOOTH_WEIGHT = 1.0
#: α with ``strength="auto"``: the exact solve's automatic rule (0.5 for a confident unary)
#: cut the appearance message's reach and cost the coarse unary on validation; with the
#: saturating softmax one fixed α serves both unary kinds (0.75 lost mIoU on the coarse
#: unary, 0.85 and 0.9 did no better than 0.8).
PASSES_STRENGTH = 0.8


def passes_parameters(params: RefineParameters) -> RefineParameters:
    """``params`` with ``strength="auto"`` replaced by :data:`PASSES_STRENGTH` when
    ``params.passes > 0`` (the embeddings are then built at that strength)."""
    if params.passes > 0 and params.strength == AUTO:
        return dataclasses.replace(params, strength=PASSES_STRENGTH)
    return params


def _softmax(xp: Any, x: Any) -> Any:
    """softmax over the labels, axis 1 of (n, L, P)."""
    e = xp.exp(x - xp.max(x, axis=1, keepdims=True))
    return e / xp.sum(e, axis=1, keepdims=True)


def _norms(xp: Any, u: Any) -> Any:
    """Per-image Euclidean norms of (n, ...) arrays, in float64."""
    n = u.shape[0]
    flat = xp.astype(xp.reshape(u, (n, -1)), xp.float64)
    return xp.sqrt(xp.sum(flat * flat, axis=1))


def mean_field_passes(
    xp: Any,
    Ahat: Any,
    strengths: Any,
    b: Any,
    spatial: tuple[int, ...],
    *,
    passes: int,
    lam: float,
    sxy_smooth: float,
    with_info: bool = True,
) -> tuple[Any, SolveInfo | None]:
    """The scores ``x_n`` (n, L, P) of ``passes`` mean-field passes (module docstring).

    Parameters
    ----------
    Ahat : array (n, D, P)
        Appearance embeddings with ``‖Âᵢ‖₂² = αᵢ λ``.
    strengths : array (n,)
        αᵢ, each in [0, 1).
    b : array (n, L, P)
        The unary scores ``log p`` (or logits: the first pass reads their softmax).
    spatial : tuple of int
        The images' spatial shape (P = prod(spatial)), for the smoothness filter.
    passes : int
        n ≥ 1.
    lam : float
        λ.
    sxy_smooth : float
        The smoothness kernel's bandwidth in pixels.
    with_info : bool, default True
        Compute the info; ``False`` returns None instead and skips the residual's matvec
        (as long as a pass's resolvent).

    Returns
    -------
    x : array like b
        The last pass's scores; ``softmax(x)`` over the labels is the refinement.
    info : SolveInfo or None
        ``method="passes"``: the number of passes, and the true relative residual of the
        last pass's resolvent solve ``(λI − ÂᵀÂ) z = λ q`` per image.
    """
    n, labels = b.shape[0], b.shape[1]
    dtype = b.dtype
    At = xp.matrix_transpose(Ahat)
    gram = xp.astype(Ahat @ At, xp.float64)
    eye = xp.eye(gram.shape[-1], dtype=xp.float64)
    capacitance = xp.astype(xp.linalg.inv(lam * eye - gram), dtype)
    keep = xp.reshape(xp.astype(1.0 - strengths, dtype), (n, 1, 1))

    def spread(q: Any) -> Any:
        # (I − K/λ)⁻¹ q by Woodbury: the labels share the D × D capacitance.
        return q + ((q @ At) @ capacitance) @ Ahat

    def smooth(q: Any) -> Any:
        grid = xp.reshape(q, (n, labels, *spatial))
        return xp.reshape(gaussian_filter(xp, grid, sxy_smooth, len(spatial)), q.shape) - q

    q = _softmax(xp, b)
    x = b
    for _ in range(passes):
        z = spread(q)
        x = b + APPEARANCE_WEIGHT * keep * z + SMOOTH_WEIGHT * smooth(q)
        previous, q = q, _softmax(xp, x)
    if not with_info:
        return x, None
    # The last resolvent solve's true residual, (λI − ÂᵀÂ) z = λ q_{n−1}, by a matvec.
    rhs = lam * previous
    residual = rhs - (lam * z - (z @ At) @ Ahat)
    norm = _norms(xp, rhs)
    residual = _norms(xp, residual) / xp.where(norm > 0, norm, 1.0)
    info = SolveInfo(
        method="passes",
        iterations=xp.full((n,), passes, dtype=xp.int64),
        residual=residual,
        converged=xp.ones((n,), dtype=xp.bool),
    )
    return x, info
