"""Training: the data as tensors, the losses and the paper's three-phase schedule.

Training follows the paper's three phases: (1) the unary network alone; (2) the added branch
alone, the unary network frozen; (3) everything jointly at a quarter of the learning rate,
polynomial decay throughout. Phase 2 of the Potts branch uses the paper's pairwise
objective (:func:`affinity_loss`); the general model's embeddings, one per label, have no
such label-agnostic target that a small receptive field could meet, so its phase 2 (like
the control's) trains through the layer on the segmentation loss. Phase 1 is shared by the
variants of one seed; every variant then gets the same phase-2 and phase-3 steps on the
same batches (the unary-only model keeps training its unary network).
"""

from __future__ import annotations

import contextlib
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits
from torch import Tensor, nn
from tqdm import tqdm

from .config import STRIDE, Config, Variant, variants
from .networks import SegmentationNet, attractive_dim, control_width, repulsive_channels
from .scenes import NUM_CLASSES, SceneConfig, make_scenes


@dataclass(frozen=True)
class Data:
    """One dataset as tensors."""

    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor


def load_data(kind: str, config: Config) -> Data:
    train = make_scenes(kind, config.train_scenes, "train", config.scene_seed, SceneConfig())
    test = make_scenes(kind, config.test_scenes, "test", config.scene_seed, SceneConfig())
    return Data(
        *(torch.from_numpy(a) for a in (train.images, train.labels, test.images, test.labels))
    )


def batches(data: Data, config: Config, steps: int, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
    """``steps`` random training batches; equal seeds give equal batches (fair variants)."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        index = torch.randint(len(data.train_images), (config.batch,), generator=generator)
        yield data.train_images[index], data.train_labels[index]


def segmentation_loss(model: SegmentationNet, images: Tensor, labels: Tensor) -> Tensor:
    """Class-weighted cross-entropy of the full-resolution scores."""
    weight = torch.ones(NUM_CLASSES)
    weight[0] = model.config.background_weight
    return F.cross_entropy(model(images), labels, weight=weight)


def affinity_loss(model: SegmentationNet, images: Tensor, labels: Tensor) -> Tensor:
    """The paper's phase-2 pairwise objective, in closed form, for label-agnostic pixel
    embeddings: the Potts embeddings Â, and the pixel features f of the attractive
    embeddings Γ_{:, l, p} = U_l f_p (:class:`~benchmarks.reproduce.networks.AttractiveHead`).

    The raw embeddings E (C, P) are fitted to a target affinity T = Σ_g 1_g 1_gᵀ over
    disjoint groups g of pixels, in ‖EᵀE − T‖²_F / ‖T‖²_F. Expanding the square avoids the
    P×P matrices: ‖EEᵀ‖²_F − 2 Σ_g ‖E 1_g‖² + Σ_g n_g².

    * Potts: one group per digit class. Pixels that share a ground-truth digit label should
      have similar embeddings (the Potts term then penalises giving them different labels),
      all other pairs orthogonal ones, background pixels none.
    * Attractive and signed: one group, every digit pixel. f says which pixels exchange
      evidence; which labels they exchange (U_lᵀU_m) is left to the joint phase, so that
      the model can learn ties between different labels — partner classes in TiedScenes —
      that a per-class target would forbid.
    """
    raw = model.branch(images - 0.5)[:, repulsive_channels(model.variant) :]
    batch = raw.shape[0]
    onehot = F.one_hot(low_res_labels(labels).reshape(batch, -1), NUM_CLASSES)
    digits = onehot[..., 1:].to(raw.dtype)  # (B, P, L − 1): the pixels of each digit class
    groups = digits if model.variant.kind == "potts" else digits.sum(-1, keepdim=True)
    flat = raw.flatten(2)
    gram = flat @ flat.transpose(1, 2)
    pooled = flat @ groups  # (B, C, groups): Σ_{p ∈ g} e_p
    sizes = groups.sum(dim=1)
    error = gram.square().sum((1, 2)) - 2 * pooled.square().sum((1, 2)) + sizes.square().sum(1)
    return (error / sizes.square().sum(1).clamp_min(1.0)).mean()


def low_res_labels(labels: Tensor) -> Tensor:
    """Labels at the G-CRF's stride: the largest label in each cell (strokes are thin)."""
    return F.max_pool2d(labels[:, None].float(), STRIDE)[:, 0].long()


def train_phase(
    model: SegmentationNet,
    trained: list[nn.Module],
    data: Data,
    phase: int,
    seed: int,
    progress: tqdm,
    loss_fn=segmentation_loss,
) -> None:
    """One training phase: Adam on the ``trained`` submodules, the rest frozen.

    Frozen submodules stay in eval mode so that their batch-norm statistics are frozen too.
    """
    config = model.config
    steps = config.steps[phase - 1]
    lr = config.lr * (config.joint_lr_factor if phase == 3 else 1.0)
    parameters = [p for module in trained for p in module.parameters()]
    optimiser = torch.optim.Adam(parameters, lr=lr)
    model.eval()
    for module in trained:
        module.train()
    for step, (images, labels) in enumerate(batches(data, config, steps, seed * 10 + phase)):
        for group in optimiser.param_groups:
            group["lr"] = lr * (1.0 - step / steps) ** 0.9
        loss = loss_fn(model, images, labels)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        progress.update()
    model.eval()


def seed_everything(*keys: object) -> None:
    """Seed torch from a stable hash of ``keys`` (independent of Python's hash salt)."""
    torch.manual_seed(zlib.crc32(repr(keys).encode()))


def train_unary(
    kind: str, seed: int, data: Data, config: Config, progress: tqdm
) -> SegmentationNet:
    """Phase 1 of one seed: the unary network that every variant of the seed starts from."""
    seed_everything(kind, seed, "unary")
    base = SegmentationNet(Variant("unary"), config)
    train_phase(base, [base.unary], data, 1, seed, progress)
    return base


def train_variant(
    kind: str,
    seed: int,
    variant: Variant,
    unary: dict[str, Tensor],
    data: Data,
    config: Config,
    progress: tqdm,
) -> SegmentationNet:
    """Phases 2 and 3 of one variant, from the phase-1 unary network's weights ``unary``.

    The variant's own seed fixes its initialisation, so that it can be trained alone, in any
    order and process (the same model up to floating-point rounding: docs/reproduction.md).
    """
    seed_everything(kind, seed, variant.name)
    model = SegmentationNet(variant, config, control_width(config))
    model.unary.load_state_dict(unary)
    added = [model.unary] if model.branch is None else [model.branch]
    if attractive_dim(variant):
        added.append(model.attractive)
    has_target = variant.kind == "potts" or attractive_dim(variant)
    pairwise = affinity_loss if has_target else segmentation_loss
    train_phase(model, added, data, 2, seed, progress, pairwise)
    train_phase(model, [model], data, 3, seed, progress)
    return model


def train_seed(
    kind: str, seed: int, data: Data, config: Config, progress: tqdm
) -> tuple[SegmentationNet, dict[str, SegmentationNet]]:
    """Train every variant for one seed in this process; phase 1 is shared.

    Returns the phase-1 network and the trained variants by name.
    """
    base = train_unary(kind, seed, data, config, progress)
    unary = base.unary.state_dict()
    models = {
        variant.name: train_variant(kind, seed, variant, unary, data, config, progress)
        for variant in variants(config)
    }
    return base, models


@contextlib.contextmanager
def torch_settings(threads: int = 2) -> Iterator[None]:
    """``threads`` torch threads and deterministic kernels, so that a seed fixes the
    results; the caller's settings are restored afterwards (the smoke test runs inside
    pytest). Training jobs use one thread each (:mod:`benchmarks.reproduce.jobs`).

    NumPy's BLAS (used by the G-CRF core on CPU) is pinned to one thread: its pool
    busy-waits after each call and, on two cores, starves torch's own threads — measured
    2.4× slower Potts-64 training steps (82 → 35 ms) with both pools at two threads.
    """
    previous = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(previous)
        torch.use_deterministic_algorithms(deterministic)
