"""``refine`` on TensorFlow tensors: class probabilities refined with the image by mean field
in the dense CRF's lattice or by a low-rank Potts G-CRF, differentiable with respect to the
probabilities."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorflow as tf

from lowrank_gcrf.adapters.bridge import refine_appearance
from lowrank_gcrf.adapters.tensorflow.functional import solve_potts
from lowrank_gcrf.adapters.tensorflow.op import from_core, tensor_to_core
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

    The image is data, without gradient: the core builds from it, directly in eager mode and
    through ``tf.py_function`` in a graph, either the appearance lattices (the default
    passes, ``appearance_kernel="auto"``: index arrays of the permutohedral lattice,
    :mod:`lowrank_gcrf.lattice_appearance`) or the embeddings Â. ``∂L/∂probs`` flows through
    the mean-field passes (the default ``passes=2``, in TensorFlow operations: the lattice's
    filter by sparse products, its transpose in the backward, or the resolvent by Woodbury; the
    smoothness kernel by 1-D convolutions; the softmaxes), or with ``passes=0`` through the
    exact Potts solve, :func:`~lowrank_gcrf.adapters.tensorflow.solve_potts`, and the
    softmax. With ``strength="auto"`` and ``passes=0`` the strength read from the
    probabilities' confidence scales Â, also without gradient (it chooses the model, as a
    hyperparameter would).

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
    >>> import tensorflow as tf
    >>> from lowrank_gcrf.adapters.tensorflow import refine
    >>> probs = tf.nn.softmax(tf.random.normal((4, 32, 32)), axis=0)            # (L, H, W)
    >>> image = tf.random.uniform((3, 32, 32), maxval=256, dtype=tf.int32)
    >>> refine(probs, tf.cast(image, tf.uint8)).shape
    TensorShape([4, 32, 32])
    """
    params = RefineParameters(**parameters)
    check_adapter_parameters(params)
    lattice = uses_lattice(params)
    if not lattice:
        params = passes_parameters(params)
    spatial_dims = checked_spatial_dims(spatial_dims)
    probs, image = tf.convert_to_tensor(probs), tf.convert_to_tensor(image)
    compute = tf.float64 if probs.dtype == tf.float64 else tf.float32
    carried = probs.dtype.name

    def appearance(p: tf.Tensor, i: tf.Tensor) -> Any:
        core_probs = tensor_to_core(p)
        core = refine_appearance(
            core_probs,
            tensor_to_core(i),
            params,
            lattice=lattice,
            spatial_dims=spatial_dims,
            logits=logits,
            channel_axis=channel_axis,
            carried_dtype=carried,
        )
        if lattice:
            return [getattr(core, name) for name in _ARRAY_FIELDS]
        if params.strength == AUTO:
            core = scaled_by_confidence(array_namespace(core), core, core_probs, logits=logits)
        return from_core(core)

    # bfloat16 has no NumPy dtype to cross DLPack with (the core still judges the
    # probabilities by its rounding, ``carried``).
    crossing = [tf.cast(t, compute) if t.dtype == tf.bfloat16 else t for t in (probs, image)]
    rank = probs.shape.rank
    n = tf.reduce_prod(tf.shape(probs)[: rank - spatial_dims - 1])
    pixels = tf.reduce_prod(tf.shape(probs)[rank - spatial_dims :])
    scores = tf.cast(probs, compute)
    if not logits:
        scores = tf.math.log(tf.maximum(scores, tf.constant(PROB_FLOOR, compute)))
    b = tf.reshape(scores, tf.stack([n, tf.shape(probs)[rank - spatial_dims - 1], pixels]))
    spatial = tf.shape(probs)[rank - spatial_dims :]
    static = probs.shape[rank - spatial_dims :]
    if lattice:
        if tf.executing_eagerly():
            arrays = appearance(*crossing)
        else:
            types = [tf.int64, tf.float32, tf.int64, tf.float32, tf.float32, tf.float32]
            # Data, as Â is: no gradient flows back into the py_function from them.
            arrays = [tf.stop_gradient(a) for a in tf.py_function(appearance, crossing, types)]
            for array, ndim in zip(arrays, _ARRAY_RANKS, strict=True):
                array.set_shape([None] * ndim)
        fields = dict(zip(_ARRAY_FIELDS, map(tf.convert_to_tensor, arrays), strict=True))
        message = _lattice_message(fields, compute)
        refined = _passes(message, b, LATTICE_SMOOTH_WEIGHT, params, spatial, static)
        return tf.cast(tf.reshape(refined, tf.shape(probs)), probs.dtype)
    if tf.executing_eagerly():
        Ahat = appearance(*crossing)
    else:
        Ahat = tf.stop_gradient(tf.py_function(appearance, crossing, compute))
    Ahat = tf.reshape(Ahat, tf.stack([n, params.rank, pixels]))
    if params.passes > 0:
        message = _resolvent_message(Ahat, b, params)
        refined = _passes(message, b, SMOOTH_WEIGHT, params, spatial, static)
    else:
        x = solve_potts(Ahat, b, params.lam, method=method, rtol=SOLVE_RTOL)
        refined = tf.nn.softmax(x, axis=1)
    return tf.cast(tf.reshape(refined, tf.shape(probs)), probs.dtype)


#: The fields of :class:`~lowrank_gcrf.lattice_appearance.LatticeArrays`, in the order the
#: graph's ``tf.py_function`` returns them.
_ARRAY_FIELDS = ("vertices", "barycentric", "neighbours", "weights", "scale", "own")
_ARRAY_RANKS = (2, 2, 3, 3, 1, 1)


def _passes(
    appearance: Callable[[tf.Tensor], tf.Tensor],
    b: tf.Tensor,
    smooth_weight: float,
    params: RefineParameters,
    spatial: tf.Tensor,
    static: Any,
) -> tf.Tensor:
    """The probabilities ``softmax(x_n)`` of :func:`lowrank_gcrf.refine`'s mean-field passes
    (:mod:`lowrank_gcrf.refine_passes`) in TensorFlow operations, differentiable in ``b``."""
    shape = tf.shape(b)
    grid = tf.concat([shape[:2], spatial], axis=0)
    q = tf.nn.softmax(b, axis=1)
    for _ in range(params.passes):
        filtered = _gaussian_filter(tf.reshape(q, grid), params.sxy_smooth, static)
        x = b + appearance(q) + smooth_weight * (tf.reshape(filtered, shape) - q)
        q = tf.nn.softmax(x, axis=1)
    return q


def _resolvent_message(
    Ahat: tf.Tensor, b: tf.Tensor, params: RefineParameters
) -> Callable[[tf.Tensor], tf.Tensor]:
    """The landmarks' message ``β(1 − α)(I − ÂᵀÂ/λ)⁻¹ q`` by Woodbury, the D × D capacitance
    computed once (:class:`lowrank_gcrf.refine_passes.ResolventMessage`)."""
    eye = tf.eye(tf.shape(Ahat)[1], dtype=tf.float64)
    gram = tf.cast(tf.matmul(Ahat, Ahat, transpose_b=True), tf.float64)
    capacitance = tf.cast(tf.linalg.inv(params.lam * eye - gram), b.dtype)
    keep = APPEARANCE_WEIGHT * (1.0 - params.strength)

    def message(q: tf.Tensor) -> tf.Tensor:
        coefficients = tf.matmul(tf.matmul(q, Ahat, transpose_b=True), capacitance)
        return keep * (q + tf.matmul(coefficients, Ahat))

    return message


def _lattice_message(
    lattice: dict[str, tf.Tensor], dtype: tf.DType
) -> Callable[[tf.Tensor], tf.Tensor]:
    """The lattice's message ``w_a (N − diag N) q``
    (:mod:`lowrank_gcrf.lattice_appearance`), the filter ``W B Wᵀ`` by sparse products
    (:func:`_lattice_filter`), in ``dtype``."""
    vertices = lattice["vertices"]
    shape = tf.shape(vertices, out_type=tf.int64)
    rows = tf.repeat(tf.range(shape[0]), shape[1])
    weights = tf.sparse.SparseTensor(
        tf.stack([rows, tf.reshape(vertices, [-1])], axis=1),
        tf.reshape(tf.cast(lattice["barycentric"], dtype), [-1]),
        tf.stack([shape[0], tf.shape(lattice["neighbours"], out_type=tf.int64)[1]]),
    )
    blur = (lattice["neighbours"], tf.cast(lattice["weights"], dtype))
    scale, own = (tf.cast(lattice[k], dtype)[:, None] for k in ("scale", "own"))

    def message(q: tf.Tensor) -> tf.Tensor:
        shape = tf.shape(q)
        flat = tf.reshape(tf.transpose(q, (0, 2, 1)), tf.stack([-1, shape[1]]))
        filtered = _lattice_filter(weights, blur, scale * flat)
        out = LATTICE_APPEARANCE_WEIGHT * (scale * filtered - own * flat)
        return tf.transpose(tf.reshape(out, tf.stack([shape[0], shape[2], shape[1]])), (0, 2, 1))

    return message


def _lattice_filter(
    weights: tf.sparse.SparseTensor, blur: tuple[tf.Tensor, tf.Tensor], v: tf.Tensor
) -> tf.Tensor:
    """``W B Wᵀ v`` for v (n·P, L), W sparse and the blur steps B_k (three entries a row:
    ``blur`` holds their columns and values, (d + 1, M, 3)) applied by a fold; the gradient
    is the transpose ``W Bᵀ Wᵀ``, the same steps in reverse (each step is symmetric: a
    vertex and its neighbour along a direction are each other's)."""
    columns, values = blur
    m = tf.shape(columns, out_type=tf.int64)[1]
    rows = tf.repeat(tf.range(m), 3)

    def step(x: tf.Tensor, entries: tuple[tf.Tensor, tf.Tensor]) -> tf.Tensor:
        indices = tf.stack([rows, tf.reshape(entries[0], [-1])], axis=1)
        matrix = tf.sparse.SparseTensor(indices, tf.reshape(entries[1], [-1]), tf.stack([m, m]))
        return tf.sparse.sparse_dense_matmul(matrix, x)

    def apply(u: tf.Tensor, fold: Callable) -> tf.Tensor:
        x = tf.sparse.sparse_dense_matmul(weights, u, adjoint_a=True)
        x = fold(step, (columns, values), initializer=x)
        return tf.sparse.sparse_dense_matmul(weights, x)

    @tf.custom_gradient
    def filtered(u: tf.Tensor) -> tuple[tf.Tensor, Callable]:
        return apply(u, tf.foldl), lambda grad: apply(grad, tf.foldr)

    return filtered(v)


def _gaussian_filter(x: tf.Tensor, sigma: float, static: Any) -> tf.Tensor:
    """:func:`lowrank_gcrf.smooth_refine.gaussian_filter` over the spatial axes (all after
    the first two), zero outside the image, one axis at a time (``static``: their lengths
    where known, which shorten the filter to what an axis needs).

    The labels are moved last, as the channels of a depthwise convolution: each axis is then
    the height of a 4-D view (the axes before it times the batch, the axis, the axes after
    it, the labels), with no transpose between axes: TensorFlow's per-channel filter,
    where 1-D convolutions of single-channel rows (the same sums) were most of the passes'
    time on CPU."""
    rank = len(static) + 2
    labels = x.shape[1] if x.shape[1] is not None else tf.shape(x)[1]
    y = tf.transpose(x, [0, *range(2, rank), 1])
    shape = tf.shape(y)
    for i, length in enumerate(static):
        weights = gaussian_weights(sigma, length if length is not None else 1 << 30)
        kernel = tf.tile(
            tf.constant(weights.reshape(-1, 1, 1, 1), dtype=x.dtype), [1, 1, labels, 1]
        )
        view = tf.stack(
            [
                tf.reduce_prod(shape[: i + 1]),
                shape[i + 1],
                tf.reduce_prod(shape[i + 2 : rank - 1]),
                shape[rank - 1],
            ]
        )
        y = tf.nn.depthwise_conv2d(tf.reshape(y, view), kernel, [1, 1, 1, 1], "SAME")
    return tf.transpose(tf.reshape(y, shape), [0, rank - 1, *range(1, rank - 1)])
