"""The TensorFlow adapter: custom-gradient ops and the Keras 3 layer over DLPack."""

from __future__ import annotations

import functools
import gc
import json
import os
import re
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from model_cases import REGISTRY, each_model  # noqa: E402

import lowrank_gcrf as lg  # noqa: E402
from lowrank_gcrf.adapters import bridge  # noqa: E402
from lowrank_gcrf.adapters import tensorflow as tf_adapter  # noqa: E402
from lowrank_gcrf.adapters.tensorflow import (  # noqa: E402
    DenseGCRF,
    XLAUnsupportedError,
    gcrf_solve,
    potts_solve,
)
from lowrank_gcrf.adapters.tensorflow import op as tf_op  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
METHODS = ["cg", "direct"]
TIGHT = dict(rtol=1e-12)
# Keras converts weights with np.array(variable) while saving; TensorFlow's variables
# predate NumPy 2's copy keyword.
KERAS_COPY_WARNING = "ignore:__array__ implementation doesn't accept a copy keyword"


def system(case, seed: int = 0, batch_shape=(2,)):
    """κ = 20, D = 3 and N = 12 (general; signed with E = 2 more rows) or P = 4, L = 3
    (Potts), per-system λ, float64."""
    return case.make(
        seed, rank=3, pixels=4, labels=3, kappa=20.0, batch_shape=batch_shape,
        per_batch_lam=True,
    )  # fmt: skip


def solve_fn(case):
    """The adapter's function of ``case``'s model, on stacked embeddings."""
    return functools.partial(case.adapter_solve, tf_adapter)


# -- the ops: values and gradients -------------------------------------------------------------


def tape_gradients(case, method, U, b, lam, gx, mode):
    """x and the tape's gradients in U, b and λ: eagerly, with the tape inside a
    tf.function, or with the tape around a call of a tf.function."""

    def forward(U, b, lam):
        return solve_fn(case)(U, b, lam, method=method, **TIGHT)

    def differentiate(forward, U, b, lam):
        with tf.GradientTape() as tape:
            tape.watch([U, b, lam])
            x = forward(U, b, lam)
            loss = tf.reduce_sum(x * gx)
        return x, tape.gradient(loss, [U, b, lam])

    inputs = tf.constant(U), tf.constant(b), tf.constant(lam)
    if mode == "eager":
        return differentiate(forward, *inputs)
    if mode == "tape inside tf.function":
        return tf.function(lambda *t: differentiate(forward, *t))(*inputs)
    return differentiate(tf.function(forward), *inputs)


@pytest.mark.parametrize("mode", ["eager", "tape inside tf.function", "tape around tf.function"])
@pytest.mark.parametrize("method", METHODS)
@each_model
def test_tape_gradients_equal_core_vjps(case, method, mode):
    s = system(case)
    lam = np.asarray(s.lam)
    gx = np.random.default_rng(1).standard_normal(s.b.shape)
    x, (gU, gb, glam) = tape_gradients(case, method, s.embeddings, s.b, lam, gx, mode)
    x_core = case.solve(s.embeddings, s.b, lam, method=method, **TIGHT)
    expected = case.vjp(s.embeddings, x_core, gx, lam, method=method, **TIGHT)
    assert x.shape == s.b.shape
    np.testing.assert_allclose(x.numpy(), x_core, rtol=1e-10, atol=1e-12)
    for got, want in zip((gU, gb, glam), expected, strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf.function"])
@pytest.mark.parametrize("method", METHODS)
@each_model
def test_compute_gradient_float64(case, method, graph):
    """The theoretical Jacobians (our VJPs) equal tf.test.compute_gradient's numerical ones."""
    s = system(case, seed=3)

    def f(U, b, lam):
        return solve_fn(case)(U, b, lam, method=method, **TIGHT)

    theoretical, numerical = tf.test.compute_gradient(
        tf.function(f) if graph else f,
        [tf.constant(s.embeddings), tf.constant(s.b), tf.constant(np.asarray(s.lam))],
        delta=1e-6,
    )
    for t, n in zip(theoretical, numerical, strict=True):
        np.testing.assert_allclose(t, n, rtol=1e-5, atol=1e-7)


@each_model
def test_python_float_lam_keeps_float64(case):
    s = system(case, batch_shape=())
    lam = float(np.max(s.lam)) * 1.1  # a float with no exact float32 value
    x = solve_fn(case)(tf.constant(s.embeddings), tf.constant(s.b), lam, **TIGHT)
    expected = case.solve(s.embeddings, s.b, lam, **TIGHT)
    np.testing.assert_allclose(x.numpy(), expected, rtol=1e-12, atol=1e-14)


def test_scalar_lam_gradient_sums_over_batch():
    s = system(REGISTRY["general"])
    lam = tf.Variable(0.3, dtype=tf.float64)
    with tf.GradientTape() as tape:
        x = gcrf_solve(tf.constant(s.embeddings), tf.constant(s.b), lam, **TIGHT)
        loss = tf.reduce_sum(x)
    glam = tape.gradient(loss, lam)
    x_core = lg.solve(s.embeddings, s.b, 0.3, **TIGHT)
    _, _, per_system = lg.solve_vjp(s.embeddings, x_core, np.ones_like(x_core), 0.3, **TIGHT)
    assert glam.shape == () and float(glam) == pytest.approx(per_system.sum(), rel=1e-10)


def test_half_precision_solved_in_float32():
    s = system(REGISTRY["general"])
    U16, b16 = tf.constant(s.embeddings, tf.float16), tf.constant(s.b, tf.float16)
    x = gcrf_solve(U16, b16, 0.5)
    assert x.dtype == tf.float16
    x32 = gcrf_solve(tf.cast(U16, tf.float32), tf.cast(b16, tf.float32), 0.5)
    np.testing.assert_array_equal(x.numpy(), tf.cast(x32, tf.float16).numpy())


# -- DLPack and the forward/backward hand-over -------------------------------------------------


def test_inputs_cross_by_dlpack_without_copy(monkeypatch):
    """The arrays handed to the core are views of TensorFlow's buffers."""
    s = system(REGISTRY["potts"])
    U, b = tf.constant(s.embeddings), tf.constant(s.b)
    seen = []
    original = bridge.CoreSolve.__init__

    def spy(self, potts, embeddings, b_, lam, kwargs):
        seen.append((embeddings, b_))
        original(self, potts, embeddings, b_, lam, kwargs)

    monkeypatch.setattr(bridge.CoreSolve, "__init__", spy)
    potts_solve(U, b, np.asarray(s.lam))
    ((embeddings, b_core),) = seen
    assert embeddings.ctypes.data == np.from_dlpack(U).ctypes.data
    assert b_core.ctypes.data == np.from_dlpack(b).ctypes.data


def aligned(n: int, offset: int) -> np.ndarray:
    """A float64 vector of ones whose buffer starts ``offset`` bytes past a 64-byte line."""
    buffer = np.ones(n + 16)
    start = ((offset - buffer.ctypes.data) % 64) // 8
    return buffer[start : start + n]


def test_results_shared_when_aligned_copied_otherwise():
    """TensorFlow's CPU kernels abort on buffers below 64-byte alignment, so those are
    copied; aligned ones are shared."""
    shared, copied = aligned(1000, 0), aligned(1000, 16)
    for array, is_shared in ((shared, True), (copied, False)):
        tensor = tf_op.from_core(array)
        assert (np.from_dlpack(tensor).ctypes.data == array.ctypes.data) is is_shared
        assert float(tf.reduce_sum(tensor)) == 1000.0  # a CPU kernel reads it safely


def spy_solves(monkeypatch) -> dict:
    """Count backward passes that reuse a forward's CoreSolve and those that refactorize,
    and keep weak references to every CoreSolve made."""
    counts = {"reused": 0, "refactorized": 0, "solves": []}
    backward, init, from_solution = (
        bridge.CoreSolve.backward,
        bridge.CoreSolve.__init__,
        bridge.CoreSolve.from_solution,
    )

    def spy_backward(self, gx):
        counts["reused"] += 1
        return backward(self, gx)

    def spy_init(self, *args):
        counts["solves"].append(weakref.ref(self))
        init(self, *args)

    def spy_from_solution(*args):
        counts["refactorized"] += 1
        counts["reused"] -= 1  # its backward runs through CoreSolve.backward too
        return from_solution(*args)

    monkeypatch.setattr(bridge.CoreSolve, "backward", spy_backward)
    monkeypatch.setattr(bridge.CoreSolve, "__init__", spy_init)
    monkeypatch.setattr(bridge.CoreSolve, "from_solution", staticmethod(spy_from_solution))
    return counts


def test_graph_backward_reuses_the_forward_factorization(monkeypatch):
    counts = spy_solves(monkeypatch)
    s = system(REGISTRY["potts"])
    U, b = tf.constant(s.embeddings), tf.constant(s.b)

    @tf.function
    def gradient(U, b):
        with tf.GradientTape() as tape:
            tape.watch(U)
            loss = tf.reduce_sum(potts_solve(U, b, np.asarray(s.lam)) ** 2)
        return tape.gradient(loss, U)

    for _ in range(3):
        gradient(U, b)
    assert counts["reused"] == 3 and counts["refactorized"] == 0


def test_graph_inference_keeps_no_solve(monkeypatch):
    counts = spy_solves(monkeypatch)
    s = system(REGISTRY["general"])
    infer = tf.function(lambda U, b: gcrf_solve(U, b, 0.5))
    for _ in range(3):
        infer(tf.constant(s.embeddings), tf.constant(s.b))
    gc.collect()
    assert len(counts["solves"]) == 3
    assert all(ref() is None for ref in counts["solves"])


# -- errors ------------------------------------------------------------------------------------


def raised(fn) -> tuple[type, str]:
    with pytest.raises(lg.GCRFError) as exc:
        fn()
    return type(exc.value), str(exc.value)


def bad_potts_inputs():
    rng = np.random.default_rng(0)
    return rng.standard_normal((3, 8)), rng.standard_normal((2, 8))


def test_core_errors_surface_unchanged_eagerly():
    Ahat, b = bad_potts_inputs()
    for lam in (-1.0, 0.1):  # λ ≤ 0, then an indefinite Potts system
        expected = raised(lambda lam=lam: lg.solve_potts(Ahat, b, lam))
        assert raised(lambda lam=lam: potts_solve(tf.constant(Ahat), tf.constant(b), lam)) == (
            expected
        )
    expected = raised(lambda: lg.solve(Ahat, b[0, :5], 1.0))  # bad shape
    assert raised(lambda: gcrf_solve(tf.constant(Ahat), tf.constant(b[0, :5]), 1.0)) == expected


def test_graph_mode_errors_keep_the_core_class_and_message():
    Ahat, b = bad_potts_inputs()
    kind, message = raised(lambda: lg.solve_potts(Ahat, b, 0.1))
    with pytest.raises(tf.errors.InvalidArgumentError) as exc:
        tf.function(lambda U, v: potts_solve(U, v, 0.1))(tf.constant(Ahat), tf.constant(b))
    assert f"{kind.__name__}: {message}" in str(exc.value)


def test_trace_time_errors_keep_their_type():
    """Errors of the call itself are raised while tracing, with their own type."""
    U, b = tf.zeros((2, 3)), tf.zeros(3)
    with pytest.raises(lg.GCRFError, match="unknown solver keyword"):
        tf.function(lambda U, b: gcrf_solve(U, b, 1.0, tol=1e-3))(U, b)
    with pytest.raises(lg.GCRFTypeError, match="floating"):
        tf.function(lambda U, b: gcrf_solve(U, b, 1.0))(tf.zeros((2, 3), tf.int32), b)
    kind, message = raised(lambda: lg.solve(np.zeros((2, 3)), np.zeros(3), -1.0))
    with pytest.raises(kind) as exc:  # autograph puts the traced call stack before the message
        tf.function(lambda U, b: gcrf_solve(U, b, -1.0))(U, b)
    assert message in str(exc.value)
    layer = tf.function(DenseGCRF(potts=True, data_format="channels_first"))
    with pytest.raises(lg.GCRFError, match=r"\(B, D, H, W\) for potts=True"):
        layer(tf.zeros((1, 3, 4, 4)), tf.zeros((1, 2, 3, 4, 4)))


def test_xla_gives_the_documented_error():
    s = system(REGISTRY["general"])

    @tf.function(jit_compile=True)
    def compiled(U, b):
        return gcrf_solve(U, b, 1.0)

    with pytest.raises(XLAUnsupportedError, match=r"jit_compile=False"):
        compiled(tf.constant(s.embeddings), tf.constant(s.b))

    # A layer that must run the core's solve cannot be compiled (the default layer runs its
    # traceable solve under XLA: tests/test_export_tensorflow.py).
    layer = DenseGCRF(potts=True, data_format="channels_first", traceable=False)
    with pytest.raises(XLAUnsupportedError, match=r"XLA"):
        tf.function(layer, jit_compile=True)(tf.zeros((1, 2, 3, 3)), tf.zeros((1, 2, 3, 3)))


def test_layer_errors_name_the_layout():
    layer = DenseGCRF(potts=True, data_format="channels_first")
    with pytest.raises(lg.GCRFError, match=r"\(B, D, H, W\) for potts=True"):
        layer(tf.zeros((1, 3, 4, 4)), tf.zeros((1, 2, 3, 4, 4)))
    with pytest.raises(lg.GCRFError, match="lam must be finite and > 0"):
        DenseGCRF(lam=0.0, data_format="channels_first")
    with pytest.raises(lg.GCRFError, match="unknown solver keyword"):
        gcrf_solve(tf.zeros((2, 3)), tf.zeros(3), 1.0, tol=1e-3)


def test_layer_checks_sizes_unknown_while_tracing():
    """H and W known only when the graph runs are checked then, not silently mixed up."""
    call = tf.function(
        DenseGCRF(data_format="channels_first"),
        input_signature=[
            tf.TensorSpec((None, 2, None, None)),
            tf.TensorSpec((None, 3, 2, None, None)),
        ],
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\(B, D, L, H, W\)"):
        call(tf.zeros((1, 2, 4, 6)), tf.zeros((1, 3, 2, 6, 4)))  # same H·W, swapped


# -- the Keras layer ---------------------------------------------------------------------------


def layer_inputs(case, batch=2, labels=3, dim=2, height=3, width=4, seed=0):
    """Unary (B, L, H, W) and embeddings (B, *channels, H, W) scaled so that every
    embedding's ‖·‖₂² ≤ ‖·‖_F² < λ = 1: well conditioned, no bound active."""
    rng = np.random.default_rng(seed)
    unary = rng.standard_normal((batch, labels, height, width))
    channels = case.embedding_channels(dim, labels)
    embeddings = rng.standard_normal((batch, *channels, height, width))
    embeddings *= 0.5 / np.sqrt(height * width * np.prod(channels))
    return unary, embeddings


@each_model
def test_layer_is_the_core_solve_in_label_major_layout(case):
    unary, embeddings = layer_inputs(case)
    B, L, H, W = unary.shape
    layer = DenseGCRF(
        lam=1.0, dtype="float64", data_format="channels_first", **TIGHT, **case.layer_kwargs()
    )
    scores = layer(unary, embeddings)
    x = case.layer_reference(unary, embeddings, 1.0, **TIGHT)
    assert scores.shape == (B, L, H, W) and scores.dtype == tf.float64
    np.testing.assert_allclose(scores.numpy(), x, rtol=1e-10)


@each_model
def test_layer_with_sizes_unknown_while_tracing(case):
    """A fully convolutional model: B, H and W unknown while tracing."""
    layer = DenseGCRF(lam=1.0, dtype="float64", data_format="channels_first", **case.layer_kwargs())
    L, D = 3, 2
    embed_spec = (None, *case.embedding_channels(D, L), None, None)
    call = tf.function(
        layer,
        input_signature=[
            tf.TensorSpec((None, L, None, None), tf.float64),
            tf.TensorSpec(embed_spec, tf.float64),
        ],
    )
    for height, width in ((3, 4), (5, 2)):
        unary, embeddings = layer_inputs(case, labels=L, dim=D, height=height, width=width)
        np.testing.assert_allclose(
            call(unary, embeddings).numpy(), layer(unary, embeddings).numpy(), rtol=1e-12
        )
    output = call.get_concrete_function().structured_outputs
    assert output.shape.as_list() == [None, L, None, None]


@keras.saving.register_keras_serializable(package="lowrank_gcrf_tests")
class UnitEmbeddings(keras.layers.Layer):
    """Per-pixel unit vectors scaled so that ‖Â‖_F² = 0.5·λ (the Potts PD condition)."""

    def __init__(self, lam: float, **kwargs):
        super().__init__(**kwargs)
        self.lam = lam

    def call(self, e):
        pixels = e.shape[1] * e.shape[2]
        return tf.math.l2_normalize(e, axis=-1) * (0.5 * self.lam / pixels) ** 0.5

    def get_config(self):
        return {**super().get_config(), "lam": self.lam}


def segmenter(case, labels=3, dim=4, size=6, learn_lam=True) -> keras.Model:
    """Channels last, Keras' default (TensorFlow's CPU kernels have no NCHW convolution
    gradient without XLA)."""
    images = keras.Input((size, size, 2))
    features = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(images)
    unary = keras.layers.Conv2D(labels, 1)(features)
    channels = case.embedding_channels(dim, labels)
    embeddings = keras.layers.Conv2D(int(np.prod(channels)), 1)(features)
    if case.potts_layout:
        embeddings = UnitEmbeddings(1.0)(embeddings)
    else:
        embeddings = keras.layers.Reshape((size, size, *channels))(embeddings)
    crf = DenseGCRF(lam=1.0, learn_lam=learn_lam, **case.layer_kwargs())
    return keras.Model(images, crf(unary, embeddings))


def consensus_task(n=32, size=6, labels=3, seed=0):
    """Each image's class is written at two pixels only; every pixel must predict it.
    Images are channels last (n, size, size, 2)."""
    rng = np.random.default_rng(seed)
    classes = rng.integers(labels, size=n)
    x = rng.standard_normal((n, size, size, 2)).astype("float32") * 0.1
    for i, c in enumerate(classes):
        for p in rng.choice(size * size, 2, replace=False):
            x[i, p // size, p % size, 0] = 3.0 * (c - 1)
            x[i, p // size, p % size, 1] = 3.0
    y = np.broadcast_to(classes[:, None, None], (n, size, size))
    return x, np.ascontiguousarray(y)


def pixel_ce(y_true, scores):
    return keras.losses.sparse_categorical_crossentropy(y_true, scores, from_logits=True)


@each_model
def test_model_fit_reduces_loss(case):
    keras.utils.set_random_seed(0)
    model = segmenter(case)
    model.compile(keras.optimizers.Adam(0.02), pixel_ce)
    x, y = consensus_task()
    history = model.fit(x, y, batch_size=8, epochs=6, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.7 * losses[0], losses
    crf = model.layers[-1]
    assert float(crf.lam) != pytest.approx(1.0)  # λ was learnt


def test_keras_embedding_branch_receives_gradients():
    keras.utils.set_random_seed(1)
    model = segmenter(REGISTRY["potts"])
    x, y = consensus_task(n=4)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(pixel_ce(y, model(x)))
    embed = [w for w in model.trainable_weights if "conv2d" in w.path][-2:]
    grads = tape.gradient(loss, embed)
    assert all(g is not None and np.all(np.isfinite(g)) and np.any(g != 0) for g in grads)


@pytest.mark.filterwarnings(KERAS_COPY_WARNING)
def test_save_and_load_round_trip(tmp_path):
    keras.utils.set_random_seed(2)
    model = segmenter(REGISTRY["potts"])
    model.compile(keras.optimizers.Adam(0.05), pixel_ce)
    x, y = consensus_task(n=8)
    model.fit(x, y, epochs=1, verbose=0)
    path = tmp_path / "gcrf.keras"
    model.save(path)
    loaded = keras.models.load_model(path, compile=False)
    crf = loaded.layers[-1]
    assert isinstance(crf, DenseGCRF) and crf.potts and crf.learn_lam
    assert crf.get_config() == model.layers[-1].get_config()
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def channels_last_segmenter(labels=3, dim=2, size=6) -> keras.Model:
    """Convolutions in NHWC (TensorFlow's CPU Conv2D has no float16 NCHW kernel), then the
    layer's channels-first layout."""
    images = keras.Input((size, size, 2))
    features = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(images)
    unary = keras.layers.Permute((3, 1, 2))(keras.layers.Conv2D(labels, 1)(features))
    embeddings = keras.layers.Permute((3, 1, 2))(keras.layers.Conv2D(dim * labels, 1)(features))
    embeddings = keras.layers.Reshape((dim, labels, size, size))(embeddings)
    return keras.Model(
        images, DenseGCRF(lam=1.0, learn_lam=True, data_format="channels_first")(unary, embeddings)
    )


@pytest.fixture
def mixed_float16():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_mixed_float16_policy(mixed_float16, monkeypatch):
    keras.utils.set_random_seed(3)
    model = channels_last_segmenter()
    assert model.layers[-1].compute_dtype == "float16"
    lams = []
    init = bridge.CoreSolve.__init__

    def spy(self, potts, embeddings, b, lam, kwargs):
        lams.append(lam)
        init(self, potts, embeddings, b, lam, kwargs)

    monkeypatch.setattr(bridge.CoreSolve, "__init__", spy)
    x = consensus_task(n=2)[0]
    scores = model(x)
    assert scores.dtype == tf.float16
    # λ reaches the float32 solve without a float16 round trip.
    assert lams[0].dtype == np.float32 and float(lams[0]) == pytest.approx(1.0, abs=1e-6)
    # The same weights in float32: the float16 result is the float32 one to half precision.
    keras.mixed_precision.set_global_policy("float32")
    reference = channels_last_segmenter()
    reference.set_weights(model.get_weights())
    np.testing.assert_allclose(scores.numpy(), reference(x).numpy(), rtol=2e-2, atol=2e-2)


def test_keras_jit_compile_falls_back_to_graph_mode():
    model = segmenter(REGISTRY["general"])
    with pytest.warns(UserWarning, match="jit_compile"):
        model.compile("sgd", "mse", jit_compile=True)
    assert model.jit_compile is False
    model.compile("sgd", "mse")  # "auto" resolves to no XLA as well
    assert model.jit_compile is False
    x, _ = consensus_task(n=4)
    model.fit(x, np.zeros((4, 6, 6, 3), "float32"), verbose=0)


def test_mirrored_strategy_step_equals_single_device():
    """model.fit over 2 logical CPUs updates the weights as one device does (a subprocess:
    logical devices must be set before TensorFlow initialises its devices)."""
    worker = Path(__file__).with_name("tf_mirrored_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(worker)], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["replicas"] == 2
    assert max(result["moved"]) > 1e-3  # the step did change the weights
    assert max(result["diff"]) < 1e-6


@pytest.mark.gpu
@pytest.mark.skipif(not tf.config.list_physical_devices("GPU"), reason="needs a GPU")
def test_gpu_matches_cpu():
    pytest.importorskip("cupy", reason="GPU tensors need CuPy (extra cuda12/cuda13)")
    s = system(REGISTRY["general"])
    lam = np.asarray(s.lam)
    gx = np.random.default_rng(1).standard_normal(s.b.shape)
    with tf.device("/GPU:0"):
        x, grads = tape_gradients(False, "direct", s.embeddings, s.b, lam, gx, "eager")
    assert "GPU" in x.device
    x_core = lg.solve(s.embeddings, s.b, lam, method="direct", **TIGHT)
    np.testing.assert_allclose(x.numpy(), x_core, rtol=1e-9)
    expected = lg.solve_vjp(s.embeddings, x_core, gx, lam, method="direct", **TIGHT)
    for got, want in zip(grads, expected, strict=True):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-8, atol=1e-10)


# -- the README example ------------------------------------------------------------------------


def python_block(path: Path) -> str | None:
    blocks = re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), re.S)
    keras_blocks = [b for b in blocks if "lowrank_gcrf.adapters.tensorflow" in b]
    return keras_blocks[0] if keras_blocks else None


def test_readme_keras_example_runs(capsys):
    example = python_block(REPO / "README.md")
    assert example is not None, "no Keras example in README.md"
    exec(compile(example, "README (Keras)", "exec"), {})
    losses = [float(v) for v in re.findall(r"loss ([0-9.]+)", capsys.readouterr().out)]
    assert len(losses) == 5 and losses[-1] < losses[0]
