"""The ``DenseGCRF`` layers of every model and the ``GCRFHead`` of both frameworks as a user
meets them: raw convolution outputs, N-D volumes, Keras' channels-last layout, the failure
policy, the learnt strength that scales every embedding block (the default) and the raw
layers' positive-definiteness clamp (``strength=None``; Potts: Â, signed: Γ), with their
gradients.

References are core solves of the flattened float64 systems at rtol=1e-12
(``ModelCase.layer_reference``). The layers solve to their float64 default rtol = 1000ε ≈
2.2e-13 on systems with κ ≤ 1000 (asserted where they are drawn; the signed layers' Γ bound
leaves κ up to a few hundred, general and Potts stay below 40), so that the solutions agree
to about κ·rtol ≤ 2.2e-10; ``rtol=1e-9`` below leaves a margin without hiding a layout
error (which changes x at order 1).
"""

from __future__ import annotations

import math
import os
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from model_cases import ATTRACTIVE_DIM, MODEL_CASES, REGISTRY, each_model, top_eigenvalue

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
#: The models whose raw layers clamp (some of) their embeddings to ‖·‖₂² ≤ max_strength·λ.
bounded_models = pytest.mark.parametrize(
    "case", [case for case in MODEL_CASES if case.bounded_rows is not None], ids=str
)
#: The models GCRFHead builds.
head_models = pytest.mark.parametrize(
    "case", [case for case in MODEL_CASES if case.has_head], ids=str
)


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

    def strengths(self, layer) -> np.ndarray:
        return layer.strengths.detach().double().numpy()

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

    def strengths(self, layer) -> np.ndarray:
        return np.float64(layer.strengths.numpy())

    def set_lam(self, layer, lam: float) -> float:
        """Set a learnt λ; the value the layer now holds."""
        layer.raw_lam.assign(softplus_inverse(lam))
        return float(layer.lam)


FRAMEWORKS = pytest.mark.parametrize("fw", [Torch(), Keras()], ids=["torch", "keras"])


def core_reference(case, unary, embeddings, lam, max_strength=0.9, strength=None) -> np.ndarray:
    """The layer's output computed from the core on the flattened (label-major) system, with
    the embedding blocks scaled to a ``strength``, or else the bounded embeddings clamped to
    ‖·‖₂² ≤ max_strength·λ, in NumPy."""
    return case.layer_reference(unary, embeddings, lam, max_strength, strength, **TIGHT)


def layer_inputs(seed: int, case, spatial: tuple[int, ...], *, labels=3, dim=2, scale=3.0):
    """Unary (B, L, *spatial) and embeddings (B, D, *spatial) or (B, D(+E), L, *spatial) in
    float64; ``scale`` sets the embeddings' size (the bounds are active for large ones)."""
    rng = np.random.default_rng(seed)
    unary = rng.standard_normal((2, labels, *spatial))
    channels = case.embedding_channels(dim, labels)
    n = math.prod(spatial) * (1 if len(channels) == 1 else labels)
    embeddings = rng.standard_normal((2, *channels, *spatial)) * (scale / math.sqrt(n))
    return unary, embeddings


spatial_shapes = st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple)


# -- N-D volumes against the core --------------------------------------------------------------


@FRAMEWORKS
@each_model
@given(spatial=spatial_shapes, seed=st.integers(0, 2**16), scale=st.sampled_from([0.3, 3.0]))
def test_layer_is_the_core_solve_of_the_flattened_volume(fw, case, spatial, seed, scale):
    unary, embeddings = layer_inputs(seed, case, spatial, scale=scale)
    assert case.layer_system(unary, embeddings, 1.0).kappa <= 1000  # what AGREE assumes
    x = fw.call(fw.layer(lam=1.0, **case.layer_kwargs()), unary, embeddings)
    np.testing.assert_allclose(x, core_reference(case, unary, embeddings, 1.0), **AGREE)


@FRAMEWORKS
@each_model
@given(
    spatial=spatial_shapes,
    seed=st.integers(0, 2**16),
    scale=st.sampled_from([1e-3, 3.0, 1e4]),
    lam=st.sampled_from([0.5, 2.0]),
)
def test_learnt_strength_layer_solves_the_scaled_blocks(fw, case, spatial, seed, scale, lam):
    """The default layer: every embedding block scaled to ρ·λ over the layer's bound on its
    ‖·‖₂², whatever the embeddings' scale, then the core solve."""
    unary, embeddings = layer_inputs(seed, case, spatial, scale=scale)
    layer = fw.layer(lam=lam, **case.layer_kwargs(learnt=True))
    # The strengths as the layer holds them: its float32 parameters round 0.3 at 1e-8.
    strengths = fw.strengths(layer)
    np.testing.assert_allclose(strengths, 0.3, rtol=1e-7)
    assert case.layer_system(unary, embeddings, lam, strength=strengths).kappa <= 1000
    x = fw.call(layer, unary, embeddings)
    expected = core_reference(case, unary, embeddings, lam, strength=strengths)
    np.testing.assert_allclose(x, expected, **AGREE)


@pytest.mark.parametrize("spatial", [(7,), (3, 4, 5)], ids=["1d", "3d"])
@each_model
@given(seed=st.integers(0, 2**16))
def test_keras_channels_last_is_channels_first_transposed(spatial, case, seed):
    unary, embeddings = layer_inputs(seed, case, spatial)
    first = Keras().call(Keras().layer(lam=1.0, **case.layer_kwargs()), unary, embeddings)
    channels = len(case.embedding_channels(2, 3))
    last_layer = tf_adapter.DenseGCRF(
        lam=1.0, data_format="channels_last", dtype="float64", **case.layer_kwargs()
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
        ("signed", (2, 3, 7), (2, 4, 7), "(B, D+E, L, W)"),
        ("signed", (2, 3, 4, 5), (2, 4, 2, 4, 5), "(B, D+E, L, H, W)"),
    ],
)
def test_shape_errors_name_the_expected_layout(fw, model, unary_shape, embeddings_shape, expected):
    layer = fw.layer(**REGISTRY[model].layer_kwargs())
    with pytest.raises(lg.GCRFError, match=re.escape(expected)):
        fw.call(layer, np.zeros(unary_shape), np.zeros(embeddings_shape))


@FRAMEWORKS
def test_more_than_three_spatial_dimensions_are_refused(fw):
    with pytest.raises(lg.GCRFError, match="1 to 3 spatial dimensions"):
        fw.call(fw.layer(model="potts"), np.zeros((1, 2, 2, 2, 2, 2)), np.zeros((1, 1, 2, 2, 2, 2)))


# -- the Potts and signed layers are positive definite by construction -----------------------
# pd_scaled rescales Â (Potts) and Γ (signed) alike: its own tests take Potts embeddings.


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


@each_model
def test_torch_layer_gradients_through_scaling_solve_and_learnt_lam(case):
    rng = np.random.default_rng(1)
    unary = torch.from_numpy(rng.standard_normal((2, 3, 2, 3))).requires_grad_()
    channels = case.embedding_channels(2, 3)
    embeddings = torch.from_numpy(5.0 * rng.standard_normal((2, *channels, 2, 3)))
    embeddings.requires_grad_()
    layer = torch_adapter.DenseGCRF(lam=0.7, learn_lam=True, **case.layer_kwargs()).double()
    raw_lam = layer.raw_lam.detach().clone().requires_grad_()
    if case.bounded_rows is not None:  # the bound is active: its gradient is checked too
        U = embeddings.detach().numpy().reshape(2, channels[0], -1)
        assert np.all(top_eigenvalue(U[:, case.bounded_rows]) > 0.9 * 0.7)

    def scores(u, e, r):
        return torch.func.functional_call(layer, {"raw_lam": r}, (u, e))

    assert torch.autograd.gradcheck(scores, (unary, embeddings, raw_lam))


@FRAMEWORKS
@bounded_models
def test_learnt_lam_moves_the_bound_with_it(fw, case):
    unary, embeddings = layer_inputs(2, case, (3, 4), scale=10.0)
    layer = fw.layer(lam=1.0, learn_lam=True, **case.layer_kwargs())
    for lam in (1.0, 5.0):
        lam = fw.set_lam(layer, lam)
        expected = core_reference(case, unary, embeddings, lam)
        np.testing.assert_allclose(fw.call(layer, unary, embeddings), expected, **AGREE)


@FRAMEWORKS
@bounded_models
def test_max_strength_none_leaves_raw_embeddings_to_the_user(fw, case):
    unary, embeddings = layer_inputs(3, case, (4, 4), scale=10.0)
    unbounded = fw.layer(lam=1.0, max_strength=None, **case.layer_kwargs())
    with pytest.raises(lg.IndefiniteSystemError):
        fw.call(unbounded, unary, embeddings)
    # Where the bounded rows are below the bound already, bound or no bound gives the
    # plain solve.
    small = embeddings / 20.0
    x = fw.call(unbounded, unary, small)
    np.testing.assert_allclose(x, core_reference(case, unary, small, 1.0, None), **AGREE)


@pytest.mark.parametrize("max_strength", [0.0, 1.0, 1.5, True, "0.9"])
@bounded_models
def test_max_strength_outside_the_open_unit_interval_is_refused(case, max_strength):
    for layer in (torch_adapter.DenseGCRF, tf_adapter.DenseGCRF):
        for learnt in (False, True):
            with pytest.raises(lg.GCRFError, match="max_strength must be a number in"):
                layer(max_strength=max_strength, **case.layer_kwargs(learnt=learnt))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(strength=0.0), "strength"),
        (dict(strength=0.95), r"strength .* \(0, max_strength=0.9\)"),
        (dict(strength=True), "strength"),
        (dict(max_strength=None), "max_strength=None .* strength=None only"),
        (dict(max_strength=-1.0), r"max_strength must be a number in \(0, inf\)"),
        (dict(traceable="yes"), "traceable"),
    ],
)
def test_strength_arguments_are_checked(kwargs, match):
    for layer in (torch_adapter.DenseGCRF, tf_adapter.DenseGCRF):
        with pytest.raises(lg.GCRFError, match=match):
            layer(**kwargs)


@pytest.mark.parametrize("pd_bound", [0.5, None])
def test_pd_bound_is_deprecated_for_the_raw_layer_it_was(pd_bound):
    # A FutureWarning: shown by default, also when a head passes pd_bound on.
    for layer in (torch_adapter.DenseGCRF, tf_adapter.DenseGCRF):
        with pytest.warns(FutureWarning, match="strength=None, max_strength=x"):
            settings = layer(potts=True, pd_bound=pd_bound).settings
        assert (settings.strength, settings.max_strength) == (None, pd_bound)
    with pytest.warns(FutureWarning, match="pd_bound is deprecated"):
        head = torch_adapter.GCRFHead(4, 3, pd_bound=pd_bound)
    assert head.crf.settings.strength is None
    with pytest.raises(lg.GCRFError, match="not both"):
        torch_adapter.DenseGCRF(potts=True, pd_bound=pd_bound, strength=0.2)


def test_traceable_true_needs_a_strength_at_construction():
    for layer in (torch_adapter.DenseGCRF, tf_adapter.DenseGCRF):
        with pytest.raises(lg.GCRFError, match="traceable=True needs a learnt strength"):
            layer(potts=True, strength=None, traceable=True)


def test_general_layers_strength_may_exceed_lam():
    """The general model is positive definite for any A: its ceiling is any positive number."""
    unary, embeddings = layer_inputs(5, REGISTRY["general"], (3, 3), scale=3.0)
    layer = Torch().layer(model="general", strength=2.0, max_strength=4.0)
    strengths = Torch().strengths(layer)
    expected = core_reference(REGISTRY["general"], unary, embeddings, 1.0, strength=strengths)
    np.testing.assert_allclose(Torch().call(layer, unary, embeddings), expected, **AGREE)


# -- raw convolution outputs train ------------------------------------------------------------


def raw_bounded_rows(case, embeddings: np.ndarray) -> np.ndarray:
    """The rows a layer bounds, of channels-first raw embeddings in the core's layout."""
    return embeddings.reshape(embeddings.shape[0], embeddings.shape[1], -1)[:, case.bounded_rows]


def raw_dim(case) -> int:
    """D of the raw embeddings: 8 for Potts; signed: none, Γ alone (E = 2 per label), whose
    bound then bounds κ as Potts' does (raw repulsive embeddings would leave κ unbounded,
    and the float32 layer warns that it cannot reach its rtol)."""
    return 0 if case.name == "signed" else 8


@bounded_models
def test_torch_layer_trains_on_raw_convolution_outputs(case):
    torch.manual_seed(0)
    images = 20.0 * torch.randn(2, 3, 12, 12)
    targets = torch.randint(4, (2, 12, 12))
    channels = case.embedding_channels(raw_dim(case), 4)
    unary_conv = nn.Conv2d(3, 4, 3, padding=1)
    embed_conv = nn.Conv2d(3, math.prod(channels), 3, padding=1)

    def embed(x):
        return embed_conv(x).reshape(2, *channels, 12, 12)

    raw = embed(images).detach().numpy()
    assert np.all(top_eigenvalue(raw_bounded_rows(case, raw)) > 100.0)  # ≫ λ = 1
    unbounded = torch_adapter.DenseGCRF(lam=1.0, max_strength=None, **case.layer_kwargs())
    with pytest.raises(lg.IndefiniteSystemError):
        unbounded(unary_conv(images), embed(images))

    layer = torch_adapter.DenseGCRF(lam=1.0, **case.layer_kwargs())
    parameters = [*unary_conv.parameters(), *embed_conv.parameters()]
    optimizer = torch.optim.Adam(parameters, lr=0.01)
    losses = []
    for _ in range(5):
        loss = F.cross_entropy(layer(unary_conv(images), embed(images)), targets)
        optimizer.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in parameters)
        assert embed_conv.weight.grad.abs().max() > 0
        optimizer.step()
        losses.append(loss.item())
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses


def raw_keras_segmenter(case, labels: int, *, max_strength: float | None = 0.9) -> keras.Model:
    """Channels-last convolutions straight into the layer (no normalisation)."""
    channels = case.embedding_channels(raw_dim(case), labels)
    images = keras.Input((12, 12, 3))
    unary = keras.layers.Conv2D(labels, 3, padding="same", name="unary")(images)
    embeddings = keras.layers.Conv2D(math.prod(channels), 3, padding="same", name="embed")(images)
    embeddings = keras.layers.Reshape((12, 12, *channels))(embeddings)
    layer = tf_adapter.DenseGCRF(lam=1.0, max_strength=max_strength, **case.layer_kwargs())
    return keras.Model(images, layer(unary, embeddings))


@bounded_models
def test_keras_layer_trains_on_raw_convolution_outputs(case):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    images = 20.0 * rng.standard_normal((4, 12, 12, 3)).astype("float32")
    targets = rng.integers(4, size=(4, 12, 12))
    model = raw_keras_segmenter(case, 4)
    raw = keras.Model(model.input, model.layers[-2].output)(images).numpy()
    channels_first = np.moveaxis(raw, range(3, raw.ndim), range(1, raw.ndim - 2))
    assert np.all(top_eigenvalue(raw_bounded_rows(case, channels_first)) > 100.0)  # ≫ λ = 1
    unbounded = raw_keras_segmenter(case, 4, max_strength=None)
    unbounded.set_weights(model.get_weights())
    with pytest.raises(lg.IndefiniteSystemError):
        unbounded(images)

    model.compile(keras.optimizers.Adam(0.01), keras.losses.SparseCategoricalCrossentropy(True))
    # The untrained model's loss, as PyTorch's first step measures it (an epoch's loss in
    # the history is averaged over the steps it takes).
    before = model.evaluate(images, targets, verbose=0)
    losses = model.fit(images, targets, batch_size=2, epochs=4, verbose=0).history["loss"]
    after = model.evaluate(images, targets, verbose=0)
    assert np.all(np.isfinite(losses)) and after < before, (before, losses, after)


# -- the failure policy -----------------------------------------------------------------------


@FRAMEWORKS
@each_model
def test_layers_warn_and_return_the_best_iterate_by_default(fw, case):
    unary, embeddings = layer_inputs(4, case, (5, 5), scale=30.0)
    layer = fw.layer(lam=1.0, method="cg", maxiter=1, **case.layer_kwargs())
    with pytest.warns(lg.ConvergenceWarning, match="residual"):
        x = fw.call(layer, unary, embeddings)
    assert np.all(np.isfinite(x))
    raising = fw.layer(lam=1.0, method="cg", maxiter=1, on_failure="raise", **case.layer_kwargs())
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


def head_reference(features, unary_wb, embed_wb, strengths, case, embed_dim) -> np.ndarray:
    """A head's output from its branch weights: the 1×1 convolutions in NumPy, channel
    d·L + l of a per-label embedding branch as A[d, l], the blocks scaled to the head's
    strengths, then the core solve with λ = 1."""
    unary = pointwise(features, *unary_wb)
    embeddings = pointwise(features, *embed_wb)
    batch, _, *spatial = embeddings.shape
    channels = case.embedding_channels(embed_dim, unary.shape[1])
    embeddings = embeddings.reshape(batch, *channels, *spatial)
    return core_reference(case, unary, embeddings, 1.0, strength=strengths)


def head_kwargs(case) -> dict:
    """The head arguments of a model: E = ATTRACTIVE_DIM for signed, as its case splits."""
    return {"attractive_dim": ATTRACTIVE_DIM} if case.name == "signed" else {}


@head_models
@pytest.mark.parametrize("spatial", [(7,), (3, 4), (2, 3, 4)], ids=["1d", "2d", "3d"])
def test_torch_head_is_its_branches_then_the_core_solve(case, spatial):
    torch.manual_seed(0)
    head = torch_adapter.GCRFHead(
        5, 3, embed_dim=2, model=case.name, spatial_dims=len(spatial), **head_kwargs(case)
    )
    head = head.double()
    features = np.random.default_rng(0).standard_normal((2, 5, *spatial))
    x = head(torch.from_numpy(features)).detach().numpy()
    weights = [
        (conv.weight.detach().numpy().reshape(conv.out_channels, 5), conv.bias.detach().numpy())
        for conv in (head.unary, head.embed)
    ]
    strengths = Torch().strengths(head.crf)
    np.testing.assert_allclose(x, head_reference(features, *weights, strengths, case, 2), **AGREE)


@head_models
@pytest.mark.parametrize("spatial", [(7,), (3, 4), (2, 3, 4)], ids=["1d", "2d", "3d"])
def test_keras_head_is_its_branches_then_the_core_solve(case, spatial):
    keras.utils.set_random_seed(0)
    head = tf_adapter.GCRFHead(
        3,
        embed_dim=2,
        model=case.name,
        data_format="channels_last",
        dtype="float64",
        **head_kwargs(case),
    )
    features = np.random.default_rng(0).standard_normal((2, *spatial, 5))
    x = head(tf.constant(features)).numpy()
    weights = [
        (conv.kernel.numpy().reshape(5, -1).T, conv.bias.numpy())
        for conv in (head.unary, head.embed)
    ]
    strengths = Keras().strengths(head.crf)
    expected = head_reference(np.moveaxis(features, -1, 1), *weights, strengths, case, 2)
    np.testing.assert_allclose(x, np.moveaxis(expected, 1, -1), **AGREE)


def test_heads_learn_the_strength_by_default_and_pass_the_layer_settings_on():
    torch_head = torch_adapter.GCRFHead(4, 3, lam=2.0, max_strength=0.5, maxiter=7)
    keras_head = tf_adapter.GCRFHead(3, lam=2.0, max_strength=0.5, maxiter=7)
    for crf in (torch_head.crf, keras_head.crf):
        settings = crf.settings
        assert settings.model == "potts" and settings.learn_strength and not settings.learn_lam
        assert (settings.lam, settings.max_strength, settings.maxiter) == (2.0, 0.5, 7)
        assert crf.effective_lam == 2.0 and crf.effective_strength == {"Ahat": 0.3}
    assert [p for p in torch_head.crf.parameters()] == [torch_head.crf.raw_strength]
    assert keras_head.crf.trainable_weights == [keras_head.crf.raw_strength]


def test_signed_head_has_d_attractive_channels_by_default():
    head = torch_adapter.GCRFHead(4, 3, embed_dim=2, model="signed")
    assert head.embed.out_channels == (2 + 2) * 3 and head.crf.settings.attractive_dim == 2
    assert head(torch.randn(1, 4, 3, 3)).shape == (1, 3, 3, 3)
    assert set(head.crf.effective_strength) == {"A", "Gamma"}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(num_labels=0), "num_labels"),
        (dict(embed_dim=2.5), "embed_dim"),
        (dict(model="dense"), "model"),
        (dict(model="potts", attractive_dim=2), "attractive_dim goes with model='signed'"),
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
    head = tf_adapter.GCRFHead(3, embed_dim=2, model="general", lam=0.5, learn_lam=True)
    model = keras.Model(images, head(features))
    assert model.output_shape == (None, 6, 6, 3)
    x = np.random.default_rng(0).standard_normal((2, 6, 6, 3)).astype("float32")
    head.crf.raw_lam.assign(softplus_inverse(0.8))  # weights, not the initial values
    head.crf.raw_strength.assign([1.5])
    model.save(tmp_path / "head.keras")
    loaded = keras.models.load_model(tmp_path / "head.keras")
    loaded_head = loaded.layers[-1]
    assert isinstance(loaded_head, tf_adapter.GCRFHead)
    assert loaded_head.get_config() == head.get_config()
    assert float(loaded_head.crf.lam) == pytest.approx(0.8)
    assert loaded_head.crf.effective_strength == head.crf.effective_strength != {"A": 0.3}
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


@pytest.mark.parametrize(
    ("model", "unary_shape", "embeddings_shape", "expected"),
    [
        ("potts", (2, 7, 3), (2, 7, 4, 1), "(B, W, D)"),
        ("general", (2, 4, 5, 6, 3), (2, 4, 5, 7, 2, 3), "(B, Z, H, W, D, L)"),
        ("general", (2, 4, 5, 3), (2, 4, 5, 2, 4), "(B, H, W, D, L)"),
        ("signed", (2, 4, 5, 3), (2, 4, 5, 2, 4), "(B, H, W, D+E, L)"),
    ],
)
def test_keras_channels_last_errors_name_the_channels_last_layout(
    model, unary_shape, embeddings_shape, expected
):
    layer = tf_adapter.DenseGCRF(data_format="channels_last", **REGISTRY[model].layer_kwargs())
    # The message shows the user's shape, B being None in a functional model.
    got = ", ".join(map(str, embeddings_shape[1:])) + ")"
    pattern = re.escape(f"embeddings {expected}") + ".*" + re.escape(got)
    with pytest.raises(lg.GCRFError, match=pattern):
        layer(tf.zeros(unary_shape), tf.zeros(embeddings_shape))
    with pytest.raises(lg.GCRFError, match=pattern):  # building a functional model
        layer(keras.Input(unary_shape[1:]), keras.Input(embeddings_shape[1:]))
