"""The tensor operations of the Keras layers' shape contract
(:mod:`lowrank_gcrf.adapters.layer_shapes`): static checks while tracing, runtime checks of
sizes unknown then, the reshapes to the core's layout and the channels-last transposes."""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from lowrank_gcrf.adapters.layer_plan import LAYER_MODELS
from lowrank_gcrf.adapters.layer_shapes import (
    embeddings_layout,
    layer_shapes,
    paired_axes,
    spatial_rank,
)
from lowrank_gcrf.errors import GCRFError


def check_static_layout(unary_shape: Any, embeddings_shape: Any, model: str) -> list:
    """Check the layer's static (channels-first) shapes; the axis pairs left to check when the
    graph runs.

    A size unknown on one side takes the other side's, so that :func:`layer_shapes` checks
    all that is known while tracing.
    """
    unary_shape, embeddings_shape = tf.TensorShape(unary_shape), tf.TensorShape(embeddings_shape)
    if unary_shape.rank is None or embeddings_shape.rank is None:
        raise GCRFError(
            "DenseGCRF needs unary and embeddings of known rank (give tf.function an "
            "input_signature with their ranks)"
        )
    u, e = unary_shape.as_list(), embeddings_shape.as_list()
    rank = spatial_rank(len(u))
    if len(e) != 1 + len(LAYER_MODELS[model].channels) + rank:
        layer_shapes(_fill(u), _fill(e), model)  # raises the error that names the layout
    pairs = paired_axes(model, rank)
    unknown = [(i, j) for i, j in pairs if u[i] is None or e[j] is None]
    for i, j in unknown:
        u[i] = e[j] = e[j] if u[i] is None else u[i]
    layer_shapes(_fill(u), _fill(e), model)
    return unknown


def _fill(sizes: list) -> tuple[int, ...]:
    # Any size stands for a dimension unknown on both sides.
    return tuple(1 if d is None else d for d in sizes)


def shape_of(t: tf.Tensor) -> list:
    """The shape of ``t``: static sizes where known, scalar tensors elsewhere."""
    if t.shape.is_fully_defined():
        return t.shape.as_list()
    dynamic = tf.shape(t)
    return [dynamic[i] if d is None else d for i, d in enumerate(t.shape)]


def core_layout(unary: tf.Tensor, embeddings: tf.Tensor, model: str) -> tuple[tf.Tensor, tf.Tensor]:
    """(b, A): the layer's channels-first inputs as the core's right-hand sides and embeddings.

    Label-major over row-major pixels, so both are reshapes without a copy.
    """
    unknown = check_static_layout(unary.shape, embeddings.shape, model)
    checks = []
    if unknown:
        u_axes, e_axes = zip(*unknown, strict=True)
        rank = spatial_rank(unary.shape.rank)
        checks.append(
            tf.debugging.assert_equal(
                tf.gather(tf.shape(unary), u_axes),
                tf.gather(tf.shape(embeddings), e_axes),
                message="DenseGCRF: embeddings do not match unary (B, L, *spatial): expected "
                + embeddings_layout(model, rank),
            )
        )
    u, e = shape_of(unary), shape_of(embeddings)
    with tf.control_dependencies(checks):
        per_label = LAYER_MODELS[model].per_label
        b = tf.reshape(unary, [u[0], -1] if per_label else [u[0], u[1], -1])
        return b, tf.reshape(embeddings, [e[0], e[1], -1])


def to_channels_first(t: tf.Tensor, channels: int) -> tf.Tensor:
    """(B, *spatial, *channels) → (B, *channels, *spatial)."""
    rank = t.shape.rank
    spatial = list(range(1, rank - channels))
    return tf.transpose(t, [0, *range(rank - channels, rank), *spatial])


def first_order(shape: tf.TensorShape, channels: int) -> list:
    """A static shape (B, *spatial, *channels) in the order (B, *channels, *spatial)."""
    sizes = shape.as_list()
    return [sizes[0], *sizes[len(sizes) - channels :], *sizes[1 : len(sizes) - channels]]


def to_channels_last(t: tf.Tensor) -> tf.Tensor:
    """(B, L, *spatial) → (B, *spatial, L)."""
    return tf.transpose(t, [0, *range(2, t.shape.rank), 1])
