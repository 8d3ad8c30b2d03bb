"""The reproduction's factored attractive embeddings Γ_{:, l, p} = U_l f_p and their
phase-2 target."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("skimage")
pytest.importorskip("sklearn")

from benchmarks.reproduce import training  # noqa: E402
from benchmarks.reproduce.config import QUICK, Variant  # noqa: E402
from benchmarks.reproduce.networks import (  # noqa: E402
    AttractiveHead,
    SegmentationNet,
    pixel_features,
    spectral_bounded,
)
from benchmarks.reproduce.scenes import NUM_CLASSES  # noqa: E402


@pytest.mark.parametrize("dim", [4, 16, 44])
def test_gram_from_the_factors_equals_the_gram_of_gamma(dim):
    torch.manual_seed(0)
    head = AttractiveHead(Variant("attractive", dim)).double()
    features = torch.randn(3, pixel_features(Variant("attractive", dim)), 5, 6).double()
    gamma = head(features).flatten(2)  # (B, E, L·P)
    with torch.no_grad():
        torch.testing.assert_close(head.gram(features), gamma @ gamma.transpose(1, 2))


@pytest.mark.parametrize("dim", [16, 44])
def test_initial_label_vectors_are_the_potts_model_on_label_deviations(dim):
    # E ≥ L·F: the centred U_lᵀU_m = ([l = m] − 1/L) I_F, so ΓᵀΓ = (I − J/L) ⊗ f fᵀ: the
    # Potts model of dimension F on the label deviations.
    torch.manual_seed(1)
    head = AttractiveHead(Variant("attractive", dim))
    features = head.vectors.shape[2]
    U = head.centred().detach().double()
    coupling = torch.einsum("elj,emk->lmjk", U, U)
    centring = torch.eye(NUM_CLASSES, dtype=torch.float64) - 1.0 / NUM_CLASSES
    expected = centring[:, :, None, None] * torch.eye(features, dtype=torch.float64)
    # U is float32 from a Householder QR: orthonormal to a few E·ε (ε = 1.2e-7).
    torch.testing.assert_close(coupling, expected, rtol=0, atol=4 * dim * 1.2e-7)


def test_attractive_embeddings_ignore_the_label_mean():
    # Σ_l Γ_{:, l, p} = 0, so Γ(1_L ⊗ v) = 0: a score shift shared by all labels is not pooled.
    torch.manual_seed(3)
    head = AttractiveHead(Variant("attractive", 22))
    with torch.no_grad():
        head.vectors.add_(torch.randn_like(head.vectors))  # any learned U, not only the start
        gamma = head(torch.randn(2, pixel_features(Variant("attractive", 22)), 4, 5))
    # float32: the mean and the sum each round by about L·ε relative to the largest entry
    atol = 2 * NUM_CLASSES * 1.2e-7 * float(gamma.abs().max())
    label_sum = gamma.sum(dim=2)
    torch.testing.assert_close(label_sum, torch.zeros_like(label_sum), atol=atol, rtol=0)


def test_attractive_embeddings_are_bounded_like_the_potts_ones():
    # The scale from the factored Gram bounds ‖Γ‖₂² < ρλ as spectral_bounded does on Γ itself.
    config = QUICK
    torch.manual_seed(2)
    model = SegmentationNet(Variant("attractive", 16), config)
    with torch.no_grad():
        model.branch[-1].weight.mul_(100.0)  # raw embeddings far above the bound
        images = torch.rand(2, 3, 16, 16)
        gamma = model.embeddings(images - 0.5)
        raw = model.attractive(model.branch(images - 0.5))
        expected = spectral_bounded(raw, config.lam, config.potts_margin)
        torch.testing.assert_close(gamma, expected, rtol=1e-4, atol=1e-6)
        flat = gamma.flatten(2)
        top = torch.linalg.eigvalsh((flat @ flat.transpose(1, 2)).double())[:, -1]
        assert bool((top < config.potts_margin * config.lam).all())
        assert bool((top > 0.5 * config.potts_margin * config.lam).all())


def test_attractive_phase_two_target_groups_every_digit_pixel():
    # One group of all digit pixels: pixel features equal to the digit indicator fit it
    # exactly (loss 0), whatever the digits' classes; the Potts target (one group per class)
    # does not accept them when a scene has two classes.
    config = QUICK
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[0, :4, :4] = 3
    labels[0, 4:, 4:] = 7
    indicator = (training.low_res_labels(labels) > 0).to(torch.float32)[:, None]

    class Fixed(torch.nn.Module):
        def forward(self, images):
            return indicator

    losses = {}
    for kind, dim in (("attractive", 16), ("potts", 1)):
        model = SegmentationNet(Variant(kind, dim), config)
        model.branch = Fixed()
        losses[kind] = float(training.affinity_loss(model, torch.zeros(1, 3, 8, 8), labels))
    assert losses["attractive"] == pytest.approx(0.0, abs=1e-6)
    assert losses["potts"] > 0.1
