"""``refine`` on TensorFlow tensors: class probabilities refined with the image by an exact
Potts G-CRF, differentiable with respect to the probabilities."""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from lowrank_gcrf.adapters.bridge import refine_embeddings
from lowrank_gcrf.adapters.tensorflow.functional import solve_potts
from lowrank_gcrf.adapters.tensorflow.op import from_core, tensor_to_core
from lowrank_gcrf.refine import PROB_FLOOR, SOLVE_RTOL
from lowrank_gcrf.refine_inputs import (
    RefineParameters,
    check_adapter_parameters,
    checked_spatial_dims,
)
from lowrank_gcrf.refine_strength import AUTO, scaled_by_confidence
from lowrank_gcrf.validation import array_namespace


def refine(
    probs: Any,
    image: Any,
    *,
    logits: bool = False,
    spatial_dims: int = 2,
    channel_axis: int | None = None,
    method: str = "direct",
    **parameters: Any,
) -> tf.Tensor:
    """:func:`lowrank_gcrf.refine` on tensors, differentiable with respect to ``probs``.

    The embeddings Â come from the image through the core, without gradient (the image is
    data): directly in eager mode, through ``tf.py_function`` in a graph (the static shape
    is restored). The solve is :func:`~lowrank_gcrf.adapters.tensorflow.solve_potts`, so
    ``∂L/∂probs`` flows through the exact Potts solve and the softmax. With
    ``strength="auto"`` the strength read from the probabilities' confidence scales Â, also
    without gradient (it chooses the model, as a hyperparameter would).

    Parameters
    ----------
    probs : Tensor (..., L, *spatial)
        Class probabilities, or scores with ``logits=True``; a static rank is needed.
    image : Tensor (..., C, *spatial)
        uint8, or floating on the 0–255 scale; the batch and spatial shape of ``probs``.
    logits, spatial_dims, channel_axis, method
        As for :func:`lowrank_gcrf.refine`.
    **parameters
        Its kernel, approximation and strength keywords (``sxy``, ``srgb``, ``sxy_smooth``,
        ``w_appearance``, ``w_smooth``, ``strength``, ``rank``, ``landmarks``, ``seed``,
        ``lam``, ``approximation``, ``normalization``, ``smooth_kernel`` — ``"landmarks"``
        only: the exact smoothness kernel is the core's alone).

    Returns
    -------
    Tensor like ``probs``
        Refined probabilities, ``softmax`` of the Potts MAP scores over the label axis.

    Examples
    --------
    >>> import tensorflow as tf
    >>> from lowrank_gcrf.adapters.tensorflow import refine
    >>> probs = tf.nn.softmax(tf.random.normal((4, 32, 32)), axis=0)            # (L, H, W)
    >>> image = tf.random.uniform((3, 32, 32), maxval=256, dtype=tf.int32)
    >>> refine(probs, tf.cast(image, tf.uint8)).shape
    TensorShape([4, 32, 32])
    """
    params = RefineParameters(**parameters)
    check_adapter_parameters(params)
    spatial_dims = checked_spatial_dims(spatial_dims)
    probs, image = tf.convert_to_tensor(probs), tf.convert_to_tensor(image)
    compute = tf.float64 if probs.dtype == tf.float64 else tf.float32
    carried = probs.dtype.name

    def embeddings(p: tf.Tensor, i: tf.Tensor) -> Any:
        core_probs = tensor_to_core(p)
        core = refine_embeddings(
            core_probs,
            tensor_to_core(i),
            params,
            spatial_dims=spatial_dims,
            logits=logits,
            channel_axis=channel_axis,
            carried_dtype=carried,
        )
        if params.strength == AUTO:
            core = scaled_by_confidence(array_namespace(core), core, core_probs, logits=logits)
        return from_core(core)

    # bfloat16 has no NumPy dtype to cross DLPack with (the core still judges the
    # probabilities by its rounding, ``carried``).
    crossing = [tf.cast(t, compute) if t.dtype == tf.bfloat16 else t for t in (probs, image)]
    if tf.executing_eagerly():
        Ahat = embeddings(*crossing)
    else:
        Ahat = tf.stop_gradient(tf.py_function(embeddings, crossing, compute))
    rank = probs.shape.rank
    n = tf.reduce_prod(tf.shape(probs)[: rank - spatial_dims - 1])
    pixels = tf.reduce_prod(tf.shape(probs)[rank - spatial_dims :])
    Ahat = tf.reshape(Ahat, tf.stack([n, params.rank, pixels]))
    scores = tf.cast(probs, compute)
    if not logits:
        scores = tf.math.log(tf.maximum(scores, tf.constant(PROB_FLOOR, compute)))
    b = tf.reshape(scores, tf.stack([n, tf.shape(probs)[rank - spatial_dims - 1], pixels]))
    x = solve_potts(Ahat, b, params.lam, method=method, rtol=SOLVE_RTOL)
    return tf.cast(tf.reshape(tf.nn.softmax(x, axis=1), tf.shape(probs)), probs.dtype)
