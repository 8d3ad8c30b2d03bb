"""One Keras training run: a keras.applications MobileNetV3Small trunk (``weights=None``)
with a 1×1 convolution or the Keras ``GCRFHead`` on stride-8 features.

keras.applications ships classifiers, not segmentation networks, so the trunk builds
LR-ASPP's feature combination itself: the last stride-8 block ("expanded_conv_2_add", 24
channels) concatenated with the final stride-32 features (576 channels) reduced by a 1×1
convolution, BatchNorm and ReLU to 128 channels and upsampled: 152 channels. The scene side
must be a multiple of 32. There is no ``as-is`` variant.

A seed fixes the trunk and the unary convolution (loaded into every head's ``unary``
branch), as in :mod:`.torch_networks`. Training is a ``tf.function`` step (gradient tape,
the optimizer's update; eager where ``Config.keras_graph`` is off): ``model.fit`` reports
running means, not each step's loss and gradient norm. BatchNorm statistics are
re-estimated before the test, as in :mod:`.torch_job`; a control run then measures the
ground-truth oracles on its unaries (:mod:`.oracles`).
"""

from __future__ import annotations

import os
import time
import warnings
import zlib
from typing import Any

import numpy as np

from .config import HEAD_MODELS, OPTIMIZERS, Config, Job
from .head_state import head_state
from .oracles import oracle_mious
from .records import library_warnings, miou_percent, run_record, unavailable_record
from .scenes import NUM_LABELS, make_split

#: the last block of MobileNetV3Small at stride 8
LOW_LAYER = "expanded_conv_2_add"
#: channels of the reduced stride-32 features (as LR-ASPP's)
HIGH_CHANNELS = 128
#: the name of the layer that upsamples the head's scores to the input size
UPSAMPLE_LAYER = "upsample_scores"
EVAL_BATCH = 32


def _tensorflow() -> Any:
    """TensorFlow at one intra-op and one inter-op thread (set once, before it starts)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass  # already running: set by an earlier job of this worker
    return tf


def _seed(*keys: object) -> None:
    import keras

    keras.utils.set_random_seed(zlib.crc32(repr(keys).encode()))


def build(variant: str, seed: int, side: int) -> tuple[Any, Any]:
    """The Keras model of one variant (images (B, side, side, 3) → scores (B, side, side,
    L)) and its head.

    Raises
    ------
    ValueError
        ``GCRFHead`` does not support the variant's model in this version of the library.
    """
    import keras

    from lowrank_gcrf.adapters.tensorflow import GCRFHead

    _seed("keras", seed, "trunk")
    base = keras.applications.MobileNetV3Small(
        input_shape=(side, side, 3), include_top=False, weights=None, include_preprocessing=False
    )
    high = keras.layers.Conv2D(HIGH_CHANNELS, 1, use_bias=False)(base.output)
    high = keras.layers.ReLU()(keras.layers.BatchNormalization()(high))
    high = keras.layers.UpSampling2D(4, interpolation="bilinear")(high)
    features = keras.layers.Concatenate()([base.get_layer(LOW_LAYER).output, high])
    _seed("keras", seed, "null" if variant == "null" else "unary")
    unary = keras.layers.Conv2D(NUM_LABELS, 1)
    # Keras draws the weights when a layer is built: now, right after its seed
    unary.build(features.shape)
    head = unary
    if variant in HEAD_MODELS:
        _seed("keras", seed, "embeddings")
        head = GCRFHead(NUM_LABELS, model=variant)
    upsample = keras.layers.UpSampling2D(8, interpolation="bilinear", name=UPSAMPLE_LAYER)
    scores = upsample(head(features))
    model = keras.Model(base.input, scores)
    if head is not unary:
        head.unary.set_weights(unary.get_weights())
    return model, head


def _optimizer(name: str) -> Any:
    import keras

    kind, lr = OPTIMIZERS[name]
    if kind == "sgd":
        return keras.optimizers.SGD(learning_rate=lr, momentum=0.9)
    return keras.optimizers.Adam(learning_rate=lr)


def _batchnorms(layer: Any) -> list[Any]:
    import keras

    if isinstance(layer, keras.layers.BatchNormalization):
        return [layer]
    return [bn for inner in getattr(layer, "layers", []) for bn in _batchnorms(inner)]


def reestimate_batchnorm(model: Any, images: np.ndarray) -> None:
    """Every BatchNorm's moving statistics replaced by the statistics of ``images`` (one
    forward pass in training mode at momentum 0)."""
    for bn in _batchnorms(model):
        bn.momentum = 0.0
    model(images, training=True)


def train(model: Any, job: Job, config: Config, images: np.ndarray, labels: np.ndarray) -> dict:
    """Train ``model`` in place; its losses, gradient norms and step times (lists).

    A run stops at its first non-finite loss: what follows would train on NaNs.
    """
    tf = _tensorflow()
    import keras

    opt = _optimizer(job.optimizer)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def step(x: Any, y: Any) -> tuple[Any, Any]:
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss, tf.linalg.global_norm(grads)

    if config.keras_graph:
        step = tf.function(step)
    rng = np.random.default_rng(job.seed)
    trace: dict[str, list[float]] = {"losses": [], "grad_norms": [], "step_seconds": []}
    for _ in range(config.steps_of(job.network)):
        index = rng.integers(len(images), size=config.batch)
        start = time.perf_counter()
        loss, norm = step(images[index], labels[index])
        trace["losses"].append(float(loss))
        trace["grad_norms"].append(float(norm))
        trace["step_seconds"].append(time.perf_counter() - start)
        if not np.isfinite(trace["losses"][-1]):
            break
    return trace


def predict(model: Any, images: np.ndarray) -> np.ndarray:
    """Label maps of ``images`` (B, H, W, 3), BatchNorm in inference mode."""
    return np.concatenate(
        [
            np.argmax(model(images[s : s + EVAL_BATCH], training=False), axis=-1)
            for s in range(0, len(images), EVAL_BATCH)
        ]
    )


def unary_oracles(
    model: Any, unary: Any, images: np.ndarray, labels: np.ndarray
) -> dict[str, float]:
    """:func:`~benchmarks.heads.oracles.oracle_mious` of the control ``model`` (its 1×1
    convolution ``unary``) on test ``images`` (B, H, W, 3) and their ``labels``."""
    import keras

    low_res = keras.Model(model.input, unary.output)
    scores = np.concatenate(
        [
            np.asarray(low_res(images[s : s + EVAL_BATCH], training=False))
            for s in range(0, len(images), EVAL_BATCH)
        ]
    )
    upsample = model.get_layer(UPSAMPLE_LAYER)

    def upsampled(x: np.ndarray) -> np.ndarray:
        return np.asarray(upsample(np.ascontiguousarray(x.transpose(0, 2, 3, 1)))).transpose(
            0, 3, 1, 2
        )

    return oracle_mious(scores.transpose(0, 3, 1, 2), labels, upsampled)


def run(job: Job, config: Config) -> dict[str, Any]:
    """Train ``job`` for its network's steps and test it; its :func:`run_record`."""
    _tensorflow()
    train_split = make_split("train", config.train_images, config.side, config.scene_seed)
    test = make_split("test", config.test_images, config.side, config.scene_seed)
    try:
        model, head = build(job.variant, job.seed, config.side)
    except ValueError as error:
        return unavailable_record(job, str(error))
    images = np.ascontiguousarray(train_split.images.transpose(0, 2, 3, 1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trace = train(model, job, config, images, train_split.labels)
        reestimate_batchnorm(model, images[: config.bn_images])
        test_images = np.ascontiguousarray(test.images.transpose(0, 2, 3, 1))
        predicted = predict(model, test_images)
    control = job.variant == "control"
    return run_record(
        job,
        **trace,
        miou=miou_percent(predicted, test.labels),
        state=head_state(head if job.variant in HEAD_MODELS else None),
        warnings=library_warnings(caught),
        oracles=unary_oracles(model, head, test_images, test.labels) if control else None,
    )
