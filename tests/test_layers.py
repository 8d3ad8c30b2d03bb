"""The ``DenseGCRF`` layers and ``GCRFHead`` of both frameworks as a user meets them: raw
convolution outputs, N-D volumes, Keras' channels-last layout, the failure policy, and the
Potts layer's positive-definiteness scaling with its gradients.

References are core solves (``lg.solve`` / ``lg.solve_potts``) of the flattened float64
systems at rtol=1e-12. The layers solve to their float64 default rtol = 1000ε ≈ 2.2e-13 on
systems with κ ≤ 190, so that the solutions agree to about κ·rtol < 1e-10; ``rtol=1e-9``
below leaves a margin without hiding a layout error (which changes x at order 1).
"""

from __future__ import annotations

import math
import os
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
torch = pytest.importorskip("torch")
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import lowrank_gcrf as lg  # noqa: E402
from lowrank_gcrf.adapters import tensorflow as tf_adapter  # noqa: E402
from lowrank_gcrf.adapters import torch as torch_adapter  # noqa: E402
from lowrank_gcrf.adapters.bridge import softplus_inverse  # noqa: E402

TIGHT = dict(rtol=1e-12)
AGREE = dict(rtol=1e-9, atol=1e-12)
MODELS = pytest.mark.parametrize("model", ["potts", "general"])


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny tensors gain nothing from threads; spinning OpenMP workers starve the core's
    NumPy calls on a busy two-core runner."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Torch:
    """The PyTorch module, channels first, float64."""

    def layer(self, **kwargs):
        return torch_adapter.DenseGCRF(**kwargs).double()

    def call(self, layer, *arrays):
        return layer(*(torch.from_numpy(np.asarray(a)) for a in arrays)).detach().numpy()

    def set_lam(self, layer, lam: float) -> float:
        """Set a learnt λ; the value the layer now holds."""
        with torch.no_grad():
            layer.raw_lam.fill_(softplus_inverse(lam))
            return float(layer.lam)


class Keras:
    """The Keras layer, channels first (the PyTorch layout), float64."""

    def layer(self, **kwargs):
        return tf_adapter.DenseGCRF(data_format="channels_first", dtype="float64", **kwargs)

    def call(self, layer, *arrays):
        return layer(*(tf.constant(a) for a in arrays)).numpy()

    def set_lam(self, layer, lam: float) -> float:
        """Set a learnt λ; the value the layer now holds."""
        layer.raw_lam.assign(softplus_inverse(lam))
        return float(layer.lam)


FRAMEWORKS = pytest.mark.parametrize("fw", [Torch(), Keras()], ids=["torch", "keras"])


def top_eigenvalue(Ahat: np.ndarray) -> np.ndarray:
    """‖Â‖₂² of each (D, P) embedding of a batch, from the D×D Gram in float64."""
    Ahat = np.asarray(Ahat, dtype=np.float64)
    return np.linalg.eigvalsh(Ahat @ np.swapaxes(Ahat, -1, -2))[..., -1]


def core_reference(unary, embeddings, lam, model, pd_bound=0.9) -> np.ndarray:
    """The layer's output computed from the core on the flattened (label-major) system, with
    the Potts embeddings scaled to ‖Â‖₂² ≤ pd_bound·λ in NumPy."""
    batch, labels, *spatial = unary.shape
    pixels = math.prod(spatial)
    A = embeddings.reshape(batch, embeddings.shape[1], -1)
    if model == "potts":
        if pd_bound is not None:
            A = A * np.sqrt(np.minimum(1.0, pd_bound * lam / top_eigenvalue(A)))[:, None, None]
        x = lg.solve_potts(A, unary.reshape(batch, labels, pixels), lam, **TIGHT)
    else:
        x = lg.solve(A, unary.reshape(batch, labels * pixels), lam, **TIGHT)
    return x.reshape(unary.shape)


def layer_inputs(seed: int, model: str, spatial: tuple[int, ...], *, labels=3, dim=2, scale=3.0):
    """Unary (B, L, *spatial) and embeddings (B, D, *spatial) or (B, D, L, *spatial) in
    float64; ``scale`` sets the embeddings' size (the Potts bound is active for large ones)."""
    rng = np.random.default_rng(seed)
    unary = rng.standard_normal((2, labels, *spatial))
    channels = (dim,) if model == "potts" else (dim, labels)
    n = math.prod(spatial) * (1 if model == "potts" else labels)
    embeddings = rng.standard_normal((2, *channels, *spatial)) * (scale / math.sqrt(n))
    return unary, embeddings


spatial_shapes = st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple)


# -- N-D volumes against the core --------------------------------------------------------------


@FRAMEWORKS
@MODELS
@given(spatial=spatial_shapes, seed=st.integers(0, 2**16), scale=st.sampled_from([0.3, 3.0]))
def test_layer_is_the_core_solve_of_the_flattened_volume(fw, model, spatial, seed, scale):
    unary, embeddings = layer_inputs(seed, model, spatial, scale=scale)
    x = fw.call(fw.layer(lam=1.0, model=model), unary, embeddings)
    np.testing.assert_allclose(x, core_reference(unary, embeddings, 1.0, model), **AGREE)


@pytest.mark.parametrize("spatial", [(7,), (3, 4, 5)], ids=["1d", "3d"])
@MODELS
@given(seed=st.integers(0, 2**16))
def test_keras_channels_last_is_channels_first_transposed(spatial, model, seed):
    unary, embeddings = layer_inputs(seed, model, spatial)
    first = Keras().call(Keras().layer(lam=1.0, model=model), unary, embeddings)
    channels = 1 if model == "potts" else 2
    last_layer = tf_adapter.DenseGCRF(
        lam=1.0, model=model, data_format="channels_last", dtype="float64"
    )
    last = last_layer(
        tf.constant(np.moveaxis(unary, 1, -1)),
        tf.constant(np.moveaxis(embeddings, range(1, 1 + channels), range(-channels, 0))),
    ).numpy()
    np.testing.assert_allclose(last, np.moveaxis(first, 1, -1), rtol=1e-12, atol=1e-14)


def test_keras_data_format_defaults_to_the_keras_setting():
    assert tf_adapter.DenseGCRF().data_format == keras.config.image_data_format()
    with pytest.raises(lg.GCRFError, match="channels_last"):
        tf_adapter.DenseGCRF(data_format="NHWC")


# -- shape errors name the layout --------------------------------------------------------------


@FRAMEWORKS
@pytest.mark.parametrize(
    ("model", "unary_shape", "embeddings_shape", "expected"),
    [
        ("potts", (2, 3, 7), (2, 4, 3, 7), "(B, D, W)"),
        ("general", (2, 3, 7), (2, 4, 7), "(B, D, L, W)"),
        ("potts", (2, 3, 4, 5, 6), (2, 4, 4, 5, 7), "(B, D, Z, H, W)"),
        ("general", (2, 3, 4, 5, 6), (2, 4, 3, 4, 5), "(B, D, L, Z, H, W)"),
    ],
)
def test_shape_errors_name_the_expected_layout(fw, model, unary_shape, embeddings_shape, expected):
    layer = fw.layer(model=model)
    with pytest.raises(lg.GCRFError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        fw.call(layer, np.zeros(unary_shape), np.zeros(embeddings_shape))


@FRAMEWORKS
def test_more_than_three_spatial_dimensions_are_refused(fw):
    with pytest.raises(lg.GCRFError, match="1 to 3 spatial dimensions"):
        fw.call(fw.layer(model="potts"), np.zeros((1, 2, 2, 2, 2, 2)), np.zeros((1, 1, 2, 2, 2, 2)))


# -- the Potts layer is positive definite by construction ------------------------------------


def test_pd_scaled_reaches_the_bound_exactly_and_is_the_identity_below_it():
    rng = np.random.default_rng(0)
    big, small = rng.standard_normal((2, 3, 10))
    big *= 3.0 / np.sqrt(top_eigenvalue(big))  # ‖Â‖₂² = 9 > 0.9·2
    small *= 1.0 / np.sqrt(top_eigenvalue(small))  # ‖Â‖₂² = 1 < 0.9·2
    Ahat = np.stack([big, small])
    for scaled in (
        torch_adapter.pd_scaled(torch.from_numpy(Ahat), 2.0, 0.9).numpy(),
        tf_adapter.pd_scaled(tf.constant(Ahat), 2.0, 0.9).numpy(),
    ):
        assert top_eigenvalue(scaled[0]) == pytest.approx(0.9 * 2.0, rel=1e-12)
        np.testing.assert_array_equal(scaled[1], small)


def active_bound_case(seed: int = 0):
    """Â (2, 3, 6) with ‖Â‖₂² = 4 and 9, and λ = 2 (0-d, requiring grad): bound 1.8 active."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((2, 3, 6))
    A *= (np.array([2.0, 3.0]) / np.sqrt(top_eigenvalue(A)))[:, None, None]
    return A, 2.0


def test_torch_gradients_flow_through_the_pd_scaling():
    A, lam = active_bound_case()
    A = torch.from_numpy(A).requires_grad_()
    lam = torch.tensor(lam, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, lam_: torch_adapter.pd_scaled(a, lam_, 0.9), (A, lam))


def test_tensorflow_pd_scaling_gradient_matches_finite_differences():
    A, lam = active_bound_case()
    # Central differences in float64: truncation O(δ²) and rounding O(ε/δ) both ≈ 1e-10.
    theoretical, numerical = tf.test.compute_gradient(
        lambda a, lam_: tf_adapter.pd_scaled(a, lam_, 0.9),
        [tf.constant(A), tf.constant(lam, dtype=tf.float64)],
        delta=1e-5,
    )
    for t, n in zip(theoretical, numerical, strict=True):
        np.testing.assert_allclose(t, n, rtol=1e-6, atol=1e-8)


def test_torch_layer_gradients_through_scaling_solve_and_learnt_lam():
    rng = np.random.default_rng(1)
    unary = torch.from_numpy(rng.standard_normal((2, 3, 2, 3))).requires_grad_()
    embeddings = torch.from_numpy(5.0 * rng.standard_normal((2, 2, 2, 3))).requires_grad_()
    layer = torch_adapter.DenseGCRF(lam=0.7, model="potts", learn_lam=True).double()
    raw_lam = layer.raw_lam.detach().clone().requires_grad_()
    assert np.all(top_eigenvalue(embeddings.detach().numpy().reshape(2, 2, 6)) > 0.9 * 0.7)

    def scores(u, e, r):
        return torch.func.functional_call(layer, {"raw_lam": r}, (u, e))

    assert torch.autograd.gradcheck(scores, (unary, embeddings, raw_lam))


@FRAMEWORKS
def test_learnt_lam_moves_the_bound_with_it(fw):
    unary, embeddings = layer_inputs(2, "potts", (3, 4), scale=10.0)
    layer = fw.layer(lam=1.0, model="potts", learn_lam=True)
    for lam in (1.0, 5.0):
        lam = fw.set_lam(layer, lam)
        expected = core_reference(unary, embeddings, lam, "potts")
        np.testing.assert_allclose(fw.call(layer, unary, embeddings), expected, **AGREE)


@FRAMEWORKS
def test_pd_bound_none_leaves_the_embeddings_to_the_user(fw):
    unary, embeddings = layer_inputs(3, "potts", (4, 4), scale=10.0)
    with pytest.raises(lg.IndefiniteSystemError):
        fw.call(fw.layer(lam=1.0, model="potts", pd_bound=None), unary, embeddings)
    # Where ‖Â‖₂² < λ already, bound or no bound gives the plain Potts solve.
    small = embeddings / 20.0
    x = fw.call(fw.layer(lam=1.0, model="potts", pd_bound=None), unary, small)
    np.testing.assert_allclose(x, core_reference(unary, small, 1.0, "potts", None), **AGREE)


@pytest.mark.parametrize("pd_bound", [0.0, 1.0, 1.5, True, "0.9"])
def test_pd_bound_outside_the_open_unit_interval_is_refused(pd_bound):
    for layer in (torch_adapter.DenseGCRF, tf_adapter.DenseGCRF):
        with pytest.raises(lg.GCRFError, match="pd_bound"):
            layer(model="potts", pd_bound=pd_bound)


# -- raw convolution outputs train ------------------------------------------------------------


def test_torch_potts_layer_trains_on_raw_convolution_outputs():
    torch.manual_seed(0)
    images = 20.0 * torch.randn(2, 3, 12, 12)
    targets = torch.randint(4, (2, 12, 12))
    unary_conv, embed_conv = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1)
    raw = embed_conv(images)
    assert np.all(top_eigenvalue(raw.detach().reshape(2, 8, -1).numpy()) > 100.0)  # ≫ λ = 1
    with pytest.raises(lg.IndefiniteSystemError):
        torch_adapter.DenseGCRF(lam=1.0, model="potts", pd_bound=None)(unary_conv(images), raw)

    layer = torch_adapter.DenseGCRF(lam=1.0, model="potts")
    parameters = [*unary_conv.parameters(), *embed_conv.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=0.01)
    losses = []
    for _ in range(5):
        loss = F.cross_entropy(layer(unary_conv(images), embed_conv(images)), targets)
        optimizer.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in parameters)
        assert embed_conv.weight.grad.abs().max() > 0
        optimizer.step()
        losses.append(loss.item())
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses


def raw_keras_segmenter(labels: int, *, pd_bound: float | None = 0.9) -> keras.Model:
    """Channels-last convolutions straight into the Potts layer (no normalisation)."""
    images = keras.Input((12, 12, 3))
    unary = keras.layers.Conv2D(labels, 3, padding="same", name="unary")(images)
    embeddings = keras.layers.Conv2D(8, 3, padding="same", name="embed")(images)
    scores = tf_adapter.DenseGCRF(lam=1.0, model="potts", pd_bound=pd_bound)(unary, embeddings)
    return keras.Model(images, scores)


def test_keras_potts_layer_trains_on_raw_convolution_outputs():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images = 20.0 * rng.standard_normal((4, 12, 12, 3)).astype("float32")
    targets = rng.integers(4, size=(4, 12, 12))
    model = raw_keras_segmenter(4)
    raw = keras.Model(model.input, model.get_layer("embed").output)(images).numpy()
    raw = np.moveaxis(raw, -1, 1).reshape(4, 8, -1)
    assert np.all(top_eigenvalue(raw) > 100.0)  # ≫ λ = 1
    unbounded = raw_keras_segmenter(4, pd_bound=None)
    unbounded.set_weights(model.get_weights())
    with pytest.raises(lg.IndefiniteSystemError):
        unbounded(images)

    model.compile(keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(True))
    losses = model.fit(images, targets, batch_size=2, epochs=4, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses


# -- the failure policy -----------------------------------------------------------------------


@FRAMEWORKS
def test_layers_warn_and_return_the_best_iterate_by_default(fw):
    unary, embeddings = layer_inputs(4, "general", (5, 5), scale=30.0)
    layer = fw.layer(lam=1.0, model="general", method="cg", maxiter=1)
    with pytest.warns(lg.ConvergenceWarning, match="residual"):
        x = fw.call(layer, unary, embeddings)
    assert np.all(np.isfinite(x))
    raising = fw.layer(lam=1.0, model="general", method="cg", maxiter=1, on_failure="raise")
    with pytest.raises(lg.ConvergenceError):
        fw.call(raising, unary, embeddings)


@FRAMEWORKS
def test_default_rtol_is_a_thousand_machine_epsilons(fw):
    layer = fw.layer()
    assert layer.settings.rtol is None
    assert layer.settings.options("float32").rtol == pytest.approx(1000 * 2.0**-23)
    assert layer.settings.options("float64").rtol == pytest.approx(1000 * 2.0**-52)


# -- the ready heads -------------------------------------------------------------------------


def pointwise(features: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """A 1×1 convolution of channels-first features (B, C, *spatial) in NumPy; weight (O, C)."""
    return np.einsum("oc,bc...->bo...", weight, features) + bias.reshape(
        -1, *[1] * (features.ndim - 2)
    )


def head_reference(features, unary_wb, embed_wb, lam, model, embed_dim) -> np.ndarray:
    """A head's output from its branch weights: the 1×1 convolutions in NumPy, channel
    d·L + l of the general embedding branch as A[d, l], then the core solve."""
    unary = pointwise(features, *unary_wb)
    embeddings = pointwise(features, *embed_wb)
    if model == "general":
        batch, _, *spatial = embeddings.shape
        embeddings = embeddings.reshape(batch, embed_dim, unary.shape[1], *spatial)
    return core_reference(unary, embeddings, lam, model)


@MODELS
@pytest.mark.parametrize("spatial", [(7,), (3, 4), (2, 3, 4)], ids=["1d", "2d", "3d"])
def test_torch_head_is_its_branches_then_the_core_solve(model, spatial):
    torch.manual_seed(0)
    head = torch_adapter.GCRFHead(5, 3, embed_dim=2, model=model, spatial_dims=len(spatial))
    head = head.double()
    features = np.random.default_rng(0).standard_normal((2, 5, *spatial))
    x = head(torch.from_numpy(features)).detach().numpy()
    weights = [
        (conv.weight.detach().numpy().reshape(conv.out_channels, 5), conv.bias.detach().numpy())
        for conv in (head.unary, head.embed)
    ]
    lam = float(head.crf.lam.detach())
    np.testing.assert_allclose(x, head_reference(features, *weights, lam, model, 2), **AGREE)


@MODELS
@pytest.mark.parametrize("spatial", [(7,), (3, 4), (2, 3, 4)], ids=["1d", "2d", "3d"])
def test_keras_head_is_its_branches_then_the_core_solve(model, spatial):
    keras.utils.set_random_seed(0)
    head = tf_adapter.GCRFHead(
        3, embed_dim=2, model=model, data_format="channels_last", dtype="float64"
    )
    features = np.random.default_rng(0).standard_normal((2, *spatial, 5))
    x = head(tf.constant(features)).numpy()
    weights = [
        (conv.kernel.numpy().reshape(5, -1).T, conv.bias.numpy())
        for conv in (head.unary, head.embed)
    ]
    expected = head_reference(np.moveaxis(features, -1, 1), *weights, float(head.crf.lam), model, 2)
    np.testing.assert_allclose(x, np.moveaxis(expected, 1, -1), **AGREE)


def test_heads_learn_lam_by_default_and_pass_the_layer_settings_on():
    torch_head = torch_adapter.GCRFHead(4, 3, lam=2.0, pd_bound=0.5, maxiter=7)
    keras_head = tf_adapter.GCRFHead(3, lam=2.0, pd_bound=0.5, maxiter=7)
    for crf in (torch_head.crf, keras_head.crf):
        assert crf.settings.learn_lam and crf.settings.model == "potts"
        assert (crf.settings.lam, crf.settings.pd_bound, crf.settings.maxiter) == (2.0, 0.5, 7)
    assert float(torch_head.crf.lam.detach()) == pytest.approx(2.0)
    assert float(keras_head.crf.lam) == pytest.approx(2.0)
    assert any(p is torch_head.crf.raw_lam for p in torch_head.parameters())
    assert any(w is keras_head.crf.raw_lam for w in keras_head.trainable_weights)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(num_labels=0), "num_labels"),
        (dict(embed_dim=2.5), "embed_dim"),
        (dict(model="signed"), "model"),
        (dict(lam=-1.0), "lam"),
    ],
)
def test_head_arguments_are_checked(kwargs, match):
    arguments = dict(num_labels=3) | kwargs
    with pytest.raises(lg.GCRFError, match=match):
        torch_adapter.GCRFHead(4, **arguments)
    with pytest.raises(lg.GCRFError, match=match):
        tf_adapter.GCRFHead(**arguments)


def test_torch_head_refuses_features_of_another_layout():
    head = torch_adapter.GCRFHead(4, 3, spatial_dims=3)
    with pytest.raises(lg.GCRFError, match=r"\(B, C, Z, H, W\) with C=4"):
        head(torch.zeros(1, 4, 5, 5))
    with pytest.raises(lg.GCRFError, match=r"C=4, got \(1, 5, 2, 2, 2\)"):
        head(torch.zeros(1, 5, 2, 2, 2))
    with pytest.raises(lg.GCRFError, match="spatial_dims"):
        torch_adapter.GCRFHead(4, 3, spatial_dims=4)


def test_keras_head_refuses_features_of_another_rank():
    with pytest.raises(lg.GCRFError, match=r"\(B, H, W, C\)"):
        tf_adapter.GCRFHead(3, data_format="channels_last")(tf.zeros((1, 2, 2, 2, 2, 4)))


@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")
def test_keras_head_model_saves_and_loads(tmp_path):
    keras.utils.set_random_seed(0)
    images = keras.Input((6, 6, 3))
    features = keras.layers.Conv2D(4, 3, padding="same")(images)
    head = tf_adapter.GCRFHead(3, embed_dim=2, model="general", lam=0.5, pd_bound=None)
    model = keras.Model(images, head(features))
    assert model.output_shape == (None, 6, 6, 3)
    x = np.random.default_rng(0).standard_normal((2, 6, 6, 3)).astype("float32")
    head.crf.raw_lam.assign(softplus_inverse(0.8))  # a weight, not the initial λ
    model.save(tmp_path / "head.keras")
    loaded = keras.models.load_model(tmp_path / "head.keras")
    loaded_head = loaded.layers[-1]
    assert isinstance(loaded_head, tf_adapter.GCRFHead)
    assert loaded_head.get_config() == head.get_config()
    assert float(loaded_head.crf.lam) == pytest.approx(0.8)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


@pytest.mark.parametrize(
    ("model", "unary_shape", "embeddings_shape", "expected"),
    [
        ("potts", (2, 7, 3), (2, 7, 4, 1), "(B, W, D)"),
        ("general", (2, 4, 5, 6, 3), (2, 4, 5, 7, 2, 3), "(B, Z, H, W, D, L)"),
        ("general", (2, 4, 5, 3), (2, 4, 5, 2, 4), "(B, H, W, D, L)"),
    ],
)
def test_keras_channels_last_errors_name_the_channels_last_layout(
    model, unary_shape, embeddings_shape, expected
):
    layer = tf_adapter.DenseGCRF(model=model, data_format="channels_last")
    # The message shows the user's shape, B being None in a functional model.
    got = ", ".join(map(str, embeddings_shape[1:])) + ")"
    pattern = re.escape(f"embeddings {expected}") + ".*" + re.escape(got)
    with pytest.raises(lg.GCRFError, match=pattern):
        layer(tf.zeros(unary_shape), tf.zeros(embeddings_shape))
    with pytest.raises(lg.GCRFError, match=pattern):  # building a functional model
        layer(keras.Input(unary_shape[1:]), keras.Input(embeddings_shape[1:]))
