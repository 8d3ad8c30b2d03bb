"""``refine`` on TensorFlow tensors: class probabilities refined with the image by a
low-rank Potts G-CRF, differentiable with respect to the probabilities."""

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
from lowrank_gcrf.refine_passes import APPEARANCE_WEIGHT, SMOOTH_WEIGHT, passes_parameters
from lowrank_gcrf.refine_strength import AUTO, scaled_by_confidence
from lowrank_gcrf.smooth_refine import gaussian_weights
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
    is restored). ``∂L/∂probs`` flows through the mean-field passes (the default
    ``passes=2``, in TensorFlow operations: the resolvent by Woodbury, the smoothness kernel
    by 1-D convolutions, the softmaxes), or with ``passes=0`` through the exact Potts solve,
    :func:`~lowrank_gcrf.adapters.tensorflow.solve_potts`, and the softmax. With
    ``strength="auto"`` and ``passes=0`` the strength read from the probabilities'
    confidence scales Â, also without gradient (it chooses the model, as a hyperparameter
    would).

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
    >>> import tensorflow as tf
    >>> from lowrank_gcrf.adapters.tensorflow import refine
    >>> probs = tf.nn.softmax(tf.random.normal((4, 32, 32)), axis=0)            # (L, H, W)
    >>> image = tf.random.uniform((3, 32, 32), maxval=256, dtype=tf.int32)
    >>> refine(probs, tf.cast(image, tf.uint8)).shape
    TensorShape([4, 32, 32])
    """
    params = RefineParameters(**parameters)
    check_adapter_parameters(params)
    params = passes_parameters(params)
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
    if params.passes > 0:
        spatial = tf.shape(probs)[rank - spatial_dims :]
        static = probs.shape[rank - spatial_dims :]
        x = _passes(Ahat, b, params, spatial, static)
    else:
        x = solve_potts(Ahat, b, params.lam, method=method, rtol=SOLVE_RTOL)
    return tf.cast(tf.reshape(tf.nn.softmax(x, axis=1), tf.shape(probs)), probs.dtype)


def _passes(
    Ahat: tf.Tensor, b: tf.Tensor, params: RefineParameters, spatial: tf.Tensor, static: Any
) -> tf.Tensor:
    """The scores of :func:`lowrank_gcrf.refine`'s mean-field passes
    (:mod:`lowrank_gcrf.refine_passes`) in TensorFlow operations, differentiable in ``b``."""
    shape = tf.shape(b)
    grid = tf.concat([shape[:2], spatial], axis=0)
    eye = tf.eye(tf.shape(Ahat)[1], dtype=tf.float64)
    gram = tf.cast(tf.matmul(Ahat, Ahat, transpose_b=True), tf.float64)
    capacitance = tf.cast(tf.linalg.inv(params.lam * eye - gram), b.dtype)
    keep = APPEARANCE_WEIGHT * (1.0 - params.strength)
    q = tf.nn.softmax(b, axis=1)
    x = b
    for _ in range(params.passes):
        coefficients = tf.matmul(tf.matmul(q, Ahat, transpose_b=True), capacitance)
        spread = q + tf.matmul(coefficients, Ahat)
        filtered = _gaussian_filter(tf.reshape(q, grid), params.sxy_smooth, static)
        x = b + keep * spread + SMOOTH_WEIGHT * (tf.reshape(filtered, shape) - q)
        q = tf.nn.softmax(x, axis=1)
    return x


def _gaussian_filter(x: tf.Tensor, sigma: float, static: Any) -> tf.Tensor:
    """:func:`lowrank_gcrf.smooth_refine.gaussian_filter` over the spatial axes (all after
    the first two) by 1-D convolutions, zero outside the image (``static``: their lengths
    where known, which shorten the filter to what an axis needs)."""
    rank = len(static) + 2
    for axis in range(2, rank):
        length = static[axis - 2]
        weights = gaussian_weights(sigma, length if length is not None else 1 << 30)
        kernel = tf.reshape(tf.constant(weights, dtype=x.dtype), (-1, 1, 1))
        perm = [i for i in range(rank) if i != axis] + [axis]
        moved = tf.transpose(x, perm)
        rows = tf.reshape(moved, tf.stack([-1, tf.shape(moved)[-1], 1]))
        out = tf.nn.conv1d(rows, kernel, stride=1, padding="SAME")
        inverse = [perm.index(i) for i in range(rank)]
        x = tf.transpose(tf.reshape(out, tf.shape(moved)), inverse)
    return x
