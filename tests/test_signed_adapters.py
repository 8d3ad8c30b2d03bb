"""The signed model in the adapters, where the generic suites (tests/model_cases.py: A and Γ
both present, D ≥ 1) do not reach: ``signed_solve`` with a factor absent (None), layers whose
channels are all attractive, ``attractive_dim`` settings and configs.

References are the core's float64 ``solve_signed`` / ``solve_signed_vjp`` (themselves tested
against dense matrices in tests/test_signed.py); adapters add no arithmetic of their own, so
agreement is asserted to 1e-9 relative in float64.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
torch = pytest.importorskip("torch")

import lowrank_gcrf as lg  # noqa: E402
from lowrank_gcrf.adapters import torch as torch_adapter  # noqa: E402

TIGHT = dict(rtol=1e-12)
FACTORS = pytest.mark.parametrize("present", ["repulsive", "attractive"])


def _system(seed, present, batch=2, D=3, E=2, N=17):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((batch, D, N)) if present != "attractive" else None
    Gamma = 0.2 * rng.standard_normal((batch, E, N)) if present != "repulsive" else None
    b = rng.standard_normal((batch, N))
    lam = np.array([3.0, 4.0])[:batch]
    if Gamma is not None:  # positive definite whatever A is
        assert np.all(np.linalg.norm(Gamma, ord=2, axis=(-2, -1)) ** 2 < lam)
    return A, Gamma, b, lam


def _tensor(a, grad=True):
    return None if a is None else torch.tensor(a, requires_grad=grad)


@FACTORS
def test_torch_signed_solve_matches_core_and_gradients(present):
    A, Gamma, b, lam = _system(0, present)
    tA, tG, tb, tlam = (_tensor(a) for a in (A, Gamma, b, lam))
    x = torch_adapter.signed_solve(tA, tG, tb, tlam, **TIGHT)
    np.testing.assert_allclose(x.detach().numpy(), lg.solve_signed(A, Gamma, b, lam, **TIGHT))
    gx = np.random.default_rng(1).standard_normal(b.shape)
    x.backward(torch.from_numpy(gx))
    expected = lg.solve_signed_vjp(A, Gamma, x.detach().numpy(), gx, lam, **TIGHT)
    for tensor, want in zip((tA, tG, tb, tlam), expected, strict=True):
        assert (tensor is None) == (want is None)
        if tensor is not None:
            np.testing.assert_allclose(tensor.grad.numpy(), want, rtol=1e-9, atol=1e-12)


@FACTORS
def test_torch_signed_solve_gradcheck(present):
    A, Gamma, b, lam = _system(2, present, N=9)
    inputs = [_tensor(a) for a in (A, Gamma, b, lam)]
    present_inputs = [t for t in inputs if t is not None]

    def f(*args):
        it = iter(args)
        full = [None if t is None else next(it) for t in inputs]
        return torch_adapter.signed_solve(*full, **TIGHT)

    assert torch.autograd.gradcheck(f, present_inputs)


def test_torch_signed_solve_errors():
    with pytest.raises(lg.GCRFError, match="both are None"):
        torch_adapter.signed_solve(None, None, torch.ones(3), 1.0)
    with pytest.raises(lg.GCRFError, match="share the batch shape and N"):
        torch_adapter.signed_solve(torch.ones(2, 4), torch.ones(1, 5), torch.ones(4), 1.0)
    with pytest.raises(lg.GCRFTypeError, match="torch tensors"):
        torch_adapter.signed_solve(np.ones((2, 4)), None, torch.ones(4), 1.0)
    with pytest.raises(lg.IndefiniteSystemError, match="Increase lam above"):
        torch_adapter.signed_solve(None, 3 * torch.ones(1, 4), torch.ones(4), 1.0)


def _layer_inputs(seed, spatial=(4, 5), labels=3, channels=5, scale=3.0):
    rng = np.random.default_rng(seed)
    unary = rng.standard_normal((2, labels, *spatial))
    embeddings = scale * rng.standard_normal((2, channels, labels, *spatial))
    return unary, embeddings


def test_torch_layer_of_attractive_channels_only_is_pd_by_construction():
    unary, embeddings = _layer_inputs(3)
    # A is None; raw Γ clamped at ‖Γ‖₂² ≤ 0.9·λ.
    layer = torch_adapter.DenseGCRF(1.0, "signed", attractive_dim=5, strength=None, **TIGHT)
    out = layer(torch.from_numpy(unary), torch.from_numpy(embeddings))
    # The core's solve with Γ (all the channels) scaled to ‖Γ‖₂² = 0.9·λ.
    Gamma = embeddings.reshape(2, 5, -1)
    mu = np.linalg.eigvalsh(Gamma @ np.swapaxes(Gamma, -1, -2))[:, -1]
    assert np.all(mu > 0.9)  # the bound is active
    Gamma = Gamma * np.sqrt(0.9 / mu)[:, None, None]
    want = lg.solve_signed(None, Gamma, unary.reshape(2, -1), 1.0, **TIGHT)
    np.testing.assert_allclose(out.numpy(), want.reshape(unary.shape), rtol=1e-9, atol=1e-12)
    # Without the bound these embeddings are far from definite.
    unbounded = torch_adapter.DenseGCRF(
        1.0, "signed", attractive_dim=5, strength=None, max_strength=None, **TIGHT
    )
    with pytest.raises(lg.IndefiniteSystemError):
        unbounded(torch.from_numpy(unary), torch.from_numpy(embeddings))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(model="signed"), "attractive_dim"),
        (dict(model="potts", attractive_dim=2), "attractive_dim"),
        (dict(model="signed", attractive_dim=0), "attractive_dim"),
        (dict(model="signed", attractive_dim=True), "attractive_dim"),
    ],
)
def test_layer_settings_refuse_a_bad_attractive_dim(kwargs, match):
    with pytest.raises(lg.GCRFError, match=match):
        torch_adapter.DenseGCRF(**kwargs)


def test_layer_shape_errors_name_the_signed_layout():
    layer = torch_adapter.DenseGCRF(model="signed", attractive_dim=6)
    unary, embeddings = _layer_inputs(5)
    with pytest.raises(lg.GCRFError, match="exceeds the 5 embedding channels"):
        layer(torch.from_numpy(unary), torch.from_numpy(embeddings))
    with pytest.raises(lg.GCRFError, match=r"\(B, D\+E, L, H, W\)"):
        layer(torch.from_numpy(unary), torch.from_numpy(embeddings[:, :, 0]))


# -- TensorFlow -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tf_modules():
    tf = pytest.importorskip("tensorflow")
    pytest.importorskip("keras")
    from lowrank_gcrf.adapters import tensorflow as tf_adapter

    return tf, tf_adapter


@FACTORS
@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf.function"])
def test_tensorflow_signed_solve_and_gradients(tf_modules, present, graph):
    tf, tf_adapter = tf_modules
    A, Gamma, b, lam = _system(6, present)
    gx = np.random.default_rng(7).standard_normal(b.shape)
    variables = [None if a is None else tf.Variable(a) for a in (A, Gamma, b, lam)]

    def step():
        with tf.GradientTape() as tape:
            x = tf_adapter.signed_solve(*variables, **TIGHT)
            loss = tf.reduce_sum(x * gx)
        present_variables = [v for v in variables if v is not None]
        return x, tape.gradient(loss, present_variables)

    x, grads = (tf.function(step) if graph else step)()
    np.testing.assert_allclose(x.numpy(), lg.solve_signed(A, Gamma, b, lam, **TIGHT))
    expected = [
        g for g in lg.solve_signed_vjp(A, Gamma, x.numpy(), gx, lam, **TIGHT) if g is not None
    ]
    for got, want in zip(grads, expected, strict=True):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-12)


def test_keras_layer_round_trips_its_config(tf_modules):
    _, tf_adapter = tf_modules
    layer = tf_adapter.DenseGCRF(1.0, "signed", attractive_dim=2, dtype="float64", **TIGHT)
    config = layer.get_config()
    assert config["attractive_dim"] == 2 and config["model"] == "signed"
    assert tf_adapter.DenseGCRF.from_config(config).settings == layer.settings
