"""``refine``'s strength chosen from the unary itself: more propagation for a less certain one.

A network whose softmax is calibrated is wrong at a pixel with probability ``1 − max_k p_k``,
so the mean of that over an image, ``e``, is the fraction of its pixels the unary is expected
to get wrong. A confident, blurry prediction (a stride-8 network's, wrong only near the
boundaries) has a small ``e`` and wants little propagation (it can only lose detail); a noisy
one has a large ``e`` and wants its votes pooled over many similar pixels. ``strength = α``
propagates about ``n = 1/(1 − α)`` steps, and the automatic rule makes the steps beyond the
first proportional to the odds of an error:

    n = 1 + c · e / (1 − e),    α = min(1 − 1/n, α_max),

with one constant ``c`` (:data:`STEPS_PER_ERROR_ODDS`) chosen on the refine benchmark's
validation split, whose photographs and object shapes its test split never uses. A perfect
unary (e = 0) gets α = 0 and comes back unchanged: the rule cannot make a good unary much
worse by smoothing it more than its errors call for.
"""

from __future__ import annotations

from typing import Any

#: ``strength="auto"``: the strength of each image is chosen from its unary's confidence.
AUTO = "auto"
#: c: propagation steps beyond the first per unit odds of an error, ``e / (1 − e)``
#: (chosen on the benchmark's validation split, where c = 20 serves both unary kinds).
STEPS_PER_ERROR_ODDS = 20.0
#: α_max: the automatic strength stays at least 0.05 below 1, the Potts system's limit
#: (stronger settings lost validation mIoU on both unary kinds).
MAX_AUTO_STRENGTH = 0.95


def expected_error(xp: Any, scores: Any, *, logits: bool) -> Any:
    """``e = mean_i (1 − max_k p_ik)`` per image of ``scores`` (n, L, P), in float64.

    ``scores`` are probabilities, or with ``logits=True`` scores whose softmax over the
    labels gives them. The maximum is taken stably: ``max_k p_k = 1 / Σ_k exp(s_k − max s)``.
    """
    s = xp.astype(scores, xp.float64)
    if logits:
        top = 1.0 / xp.sum(xp.exp(s - xp.max(s, axis=1, keepdims=True)), axis=1)
    else:
        top = xp.max(s, axis=1)
    return xp.clip(1.0 - xp.mean(top, axis=1), 0.0, 1.0)


def strength_from_error(xp: Any, error: Any, *, gain: float = STEPS_PER_ERROR_ODDS) -> Any:
    """α = min(1 − 1/n, α_max) with n = 1 + c·e/(1 − e) (module docstring), elementwise."""
    odds = error / xp.maximum(1.0 - error, 1e-12)
    return xp.minimum(1.0 - 1.0 / (1.0 + gain * odds), MAX_AUTO_STRENGTH)


def with_strengths(xp: Any, Ahat: Any, strengths: Any) -> Any:
    """Embeddings scaled to ``‖Â‖₂² = α λ`` per image from embeddings (n, D, P) scaled to
    ``‖Â‖₂² = λ`` (:func:`~lowrank_gcrf.refine.refine_embeddings` with ``strength="auto"``):
    ``Â · √α``, with α (n,) per image."""
    factor = xp.astype(xp.sqrt(strengths), Ahat.dtype)
    return Ahat * factor[:, None, None]


def scaled_by_confidence(xp: Any, Ahat: Any, probs: Any, *, logits: bool) -> Any:
    """Embeddings (n, D, P) scaled to ``‖Â‖₂² = λ`` rescaled to each image's automatic
    strength, read from ``probs`` (..., L, *spatial) with the n images' P pixels."""
    n, _, pixels = Ahat.shape
    if n == 0:
        return Ahat
    scores = xp.reshape(probs, (n, -1, pixels))
    return with_strengths(
        xp, Ahat, strength_from_error(xp, expected_error(xp, scores, logits=logits))
    )
