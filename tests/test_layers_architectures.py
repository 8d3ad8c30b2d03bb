"""``GCRFHead`` inside real segmentation architectures, trained for a few steps on the CPU:
torchvision's LR-ASPP MobileNetV3-Large and a Keras MobileNetV3-Small backbone, both built
with ``weights=None`` (random initialisation; the network is blocked while they are built
and trained, so that nothing can be downloaded).

Both heads take the backbones' raw features: no normalisation, and the Potts embeddings of
the fresh 1×1 convolutions are far above λ (asserted), so the layers' learnt-strength
scaling is what keeps the systems solvable.
"""

from __future__ import annotations

import importlib
import os
import socket
from types import ModuleType

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
torch = pytest.importorskip("torch")
tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from lowrank_gcrf.adapters import tensorflow as tf_adapter  # noqa: E402
from lowrank_gcrf.adapters import torch as torch_adapter  # noqa: E402

LABELS = 4


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails: pretrained weights cannot be fetched, even by mistake."""

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def import_torchvision() -> ModuleType:
    """torchvision (benchmarks.heads' import, which works next to a CPU-only torch), or a
    skip where it is not installed."""
    from benchmarks.heads.torchvision_import import import_torchvision as shared_import

    try:
        return shared_import()
    except ImportError:
        pytest.skip("torchvision is not installed")


def top_eigenvalues(Ahat: np.ndarray) -> np.ndarray:
    """‖Â‖₂² of each embedding matrix (B, D, P), in float64."""
    Ahat = np.asarray(Ahat, dtype=np.float64)
    return np.linalg.eigvalsh(Ahat @ np.swapaxes(Ahat, -1, -2))[..., -1]


class GCRFSegmenter(nn.Module):
    """A torchvision segmentation backbone whose classifier is replaced by ``GCRFHead`` on
    its high-level features, upsampled to the input size as LR-ASPP does."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        scores = self.head(self.backbone(images)["high"])
        return F.interpolate(scores, size=images.shape[-2:], mode="bilinear", align_corners=False)


def test_lraspp_mobilenet_v3_trains_with_a_gcrf_head(no_network, one_torch_thread):
    segmentation = importlib.import_module(import_torchvision().__name__ + ".models.segmentation")
    torch.manual_seed(0)
    lraspp = segmentation.lraspp_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=LABELS
    )
    channels = lraspp.classifier.cbr[0].in_channels  # the high-level features LR-ASPP uses
    head = torch_adapter.GCRFHead(channels, LABELS, embed_dim=8)
    model = GCRFSegmenter(lraspp.backbone, head)

    images = torch.randn(2, 3, 128, 128)
    targets = torch.randint(LABELS, (2, 128, 128))
    with torch.no_grad():
        embeddings = head.embed(model.backbone(images)["high"]).flatten(2)
    # Raw scales far beyond λ: the learnt strength sets the pairwise term's size anyway.
    assert np.all(top_eigenvalues(embeddings.numpy()) > 10 * head.crf.effective_lam)

    # From scratch, with batch statistics of two images: larger steps make the first ones noisy.
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    losses = []
    for _ in range(3):
        scores = model(images)
        assert scores.shape == (2, LABELS, 128, 128)
        loss = F.cross_entropy(scores, targets)
        optimizer.zero_grad()
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert all(torch.isfinite(g).all() for g in grads)
        for reached in (head.embed.weight, head.crf.raw_strength, model.backbone["0"][0].weight):
            assert reached.grad is not None and reached.grad.abs().max() > 0
        optimizer.step()
        losses.append(loss.item())
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses


def stride_8_features(backbone: keras.Model, size: int) -> keras.Model:
    """The backbone up to its last layer at output stride 8 (DeepLab's stride for a CRF)."""
    last = [layer for layer in backbone.layers if layer.output.shape[1] == size // 8][-1]
    return keras.Model(backbone.input, last.output)


def test_keras_mobilenet_v3_trains_with_a_gcrf_head_in_model_fit(no_network):
    keras.utils.set_random_seed(0)
    # Channels last: TensorFlow's CPU convolutions have no channels-first kernels.
    mobilenet = keras.applications.MobileNetV3Small(
        input_shape=(64, 64, 3), include_top=False, weights=None
    )
    backbone = stride_8_features(mobilenet, 64)
    head = tf_adapter.GCRFHead(LABELS, embed_dim=8, data_format="channels_last")
    images = keras.Input((64, 64, 3))
    scores = keras.layers.UpSampling2D(8, interpolation="bilinear")(head(backbone(images)))
    model = keras.Model(images, scores)
    assert model.output_shape == (None, 64, 64, LABELS)

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, size=(4, 64, 64, 3)).astype("float32")
    y = rng.integers(LABELS, size=(4, 64, 64))
    # What model.fit feeds the head: batch-normalised features (a fresh network's moving
    # statistics would shrink them by orders of magnitude).
    raw = head.embed(backbone(x, training=True)).numpy()
    raw = np.moveaxis(raw, -1, 1).reshape(4, 8, -1)
    assert np.all(top_eigenvalues(raw) > 10 * head.crf.effective_lam)

    model.compile(keras.optimizers.Adam(1e-4), keras.losses.SparseCategoricalCrossentropy(True))
    losses = model.fit(x, y, batch_size=2, epochs=3, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    # The strength is trained with the rest.
    assert head.crf.effective_strength["Ahat"] != pytest.approx(0.3, abs=1e-6)
