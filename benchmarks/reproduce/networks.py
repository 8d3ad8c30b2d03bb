"""The networks: a small convolutional unary network plus a control branch or a G-CRF.

A unary network gives scores b, a parallel embedding network (the paper's "resnet-pw")
gives the embeddings, and the dense G-CRF layer outputs x = M⁻¹ b: general ``λI + AᵀA``,
Potts, attractive ``λI − ΓᵀΓ`` (label-dependent Γ) or signed ``λI + AᵀA − ΓᵀΓ``. The
embeddings are rescaled so that every system stays positive definite and well conditioned.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lowrank_gcrf.adapters.torch import DenseGCRF

from .config import EMBEDDING_INIT, GCRF_KINDS, STRIDE, Config, Variant, variants
from .scenes import NUM_CLASSES


def conv_trunk(width: int, out_channels: int) -> nn.Sequential:
    """The small fully convolutional network shared by every branch, at output stride 2.

    Space-to-depth (2×2 pixels → 12 channels), two 3×3 convolutions and two 1×1: a
    receptive field of 10×10 input pixels, smaller than every digit (12–16 px), so one
    pixel's scores cannot see a whole digit. Batch normalisation speeds training up enough
    for the CPU budget.
    """
    layers: list[nn.Module] = [nn.PixelUnshuffle(STRIDE)]
    channels = 3 * STRIDE * STRIDE
    for kernel in (3, 3, 1):
        layers += [
            nn.Conv2d(channels, width, kernel, padding=kernel // 2),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        ]
        channels = width
    layers.append(nn.Conv2d(width, out_channels, 1))
    return nn.Sequential(*layers)


def shrink_last_layer(trunk: nn.Sequential, factor: float) -> None:
    """Scale the last layer's initial weights and zero its bias.

    Small initial embeddings make the G-CRF start as the identity (x = b/λ): every G-CRF
    variant starts from its unary network's predictions instead of the strong pooling along
    the embeddings' common mean direction that a default initialisation gives.
    """
    last = trunk[-1]
    with torch.no_grad():
        last.weight.mul_(factor)
        last.bias.zero_()


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def spectral_bounded(raw: Tensor, lam: float, margin: float) -> Tensor:
    """Rescale embeddings (B, D, ...) so that ‖Â‖₂² < ``margin``·λ, differentiably.

    Â is the (D, n) matrix of one image's embeddings: Potts (B, D, H, W) or attractive
    (B, E, L, H, W), whose Γ must satisfy the same bound.

    With μ = ‖Â‖₂² (top eigenvalue of the D×D Gram ÂÂᵀ), Â ← Â / √(1 + μ/(ρλ)) maps μ to
    ρλ·μ/(ρλ + μ) < ρλ: small embeddings pass unchanged and the layer never meets an
    indefinite system. The spectral norm (not ‖Â‖_F ≥ ‖Â‖₂) is used because Potts pooling
    within one object is amplified by 1/(λ − μ_object): a Frobenius bound would make the
    objects of one scene share a single budget and weaken pooling in every one of them.
    """
    flat = raw.reshape(raw.shape[0], raw.shape[1], -1)
    top = torch.linalg.eigvalsh(flat @ flat.transpose(1, 2))[:, -1]
    scale = torch.rsqrt(1.0 + top.clamp_min(0.0) / (margin * lam))
    return raw * scale.reshape(-1, *[1] * (raw.ndim - 1))


def general_embeddings(raw: Tensor, lam: float, kappa: float) -> Tensor:
    """Rescale general embeddings (B, D, L, H, W) so that 1 + ‖A‖₂²/λ < ``kappa``.

    ‖A‖_F² bounds ‖A‖₂² and costs one reduction; A ← A / √(1 + ‖A‖_F²/((κ−1)λ)) keeps the
    float32 solves accurate (the exact solve loses about log10 κ digits, docs/maths.md).
    """
    squared = raw.square().sum(dim=(1, 2, 3, 4))
    scale = torch.rsqrt(1.0 + squared / ((kappa - 1.0) * lam))
    return raw * scale[:, None, None, None, None]


class SegmentationNet(nn.Module):
    """Unary network plus, depending on the variant, a control branch or a G-CRF.

    Everything runs at output stride 2 (32×32 nodes for 64×64 scenes) and the scores are
    upsampled bilinearly to full resolution, as DeepLab does at stride 8. Stride 2 keeps the
    thin strokes (2–4 px) resolvable, while the general G-CRF has N = 11·1024 variables —
    small enough for exact solves in a CPU training loop.

    Parameters
    ----------
    variant : Variant
    config : Config
    control_width : int
        Width of the control branch (chosen by :func:`control_width`).
    """

    def __init__(self, variant: Variant, config: Config, control_width: int = 0):
        super().__init__()
        self.variant = variant
        self.config = config
        self.unary = conv_trunk(config.width, NUM_CLASSES)
        self.branch: nn.Module | None = None
        self.crf: DenseGCRF | None = None
        if variant.kind == "control":
            self.branch = conv_trunk(control_width, NUM_CLASSES)
        elif variant.kind in GCRF_KINDS:
            self.branch = conv_trunk(config.width, embedding_channels(variant))
            shrink_last_layer(self.branch, EMBEDDING_INIT)
            self.crf = DenseGCRF(
                lam=config.lam,
                # the attractive model is the signed one without A
                model="signed" if variant.kind == "attractive" else variant.kind,
                attractive_dim=attractive_dim(variant),
                method="auto",
                rtol=config.solver_rtol,
            )

    def embeddings(self, features: Tensor) -> Tensor:
        """Rescaled embeddings: (B, D, h, w) Potts, (B, C, L, h, w) otherwise (C = D general,
        E attractive, D + E signed, the repulsive channels first)."""
        raw = self.branch(features)
        config = self.config
        if self.variant.kind == "potts":
            return spectral_bounded(raw, config.lam, config.potts_margin)
        batch, channels, height, width = raw.shape
        raw = raw.reshape(batch, channels // NUM_CLASSES, NUM_CLASSES, height, width)
        attractive = attractive_dim(self.variant) or 0
        repulsive = raw.shape[1] - attractive
        parts = []
        if repulsive:
            parts.append(general_embeddings(raw[:, :repulsive], config.lam, config.general_kappa))
        if attractive:
            parts.append(spectral_bounded(raw[:, repulsive:], config.lam, config.potts_margin))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def low_res(self, images: Tensor) -> dict[str, Tensor]:
        """Unary scores, embeddings (G-CRF) and final scores at stride 2."""
        features = images - 0.5
        parts = {"unary": self.unary(features)}
        if self.variant.kind == "control":
            parts["scores"] = parts["unary"] + self.branch(features)
        elif self.crf is not None:
            parts["embeddings"] = self.embeddings(features)
            parts["scores"] = self.crf(parts["unary"], parts["embeddings"])
        else:
            parts["scores"] = parts["unary"]
        return parts

    def forward(self, images: Tensor) -> Tensor:
        """Full-resolution class scores (B, L, H, W) of images (B, 3, H, W)."""
        return upsample(self.low_res(images)["scores"])


def upsample(scores: Tensor) -> Tensor:
    return F.interpolate(scores, scale_factor=STRIDE, mode="bilinear", align_corners=False)


def branch_parameters(variant: Variant, config: Config) -> int:
    """Parameters of the extra branch of a G-CRF variant."""
    return parameter_count(conv_trunk(config.width, embedding_channels(variant)))


def embedding_channels(variant: Variant) -> int:
    """Output channels of a G-CRF variant's embedding branch: D (Potts), D·L (general),
    E·L (attractive) or 2D·L (signed, D = E)."""
    if variant.kind == "potts":
        return variant.dim
    return (2 if variant.kind == "signed" else 1) * variant.dim * NUM_CLASSES


def attractive_dim(variant: Variant) -> int | None:
    """E, the attractive channels of the layer (None for the general and Potts models)."""
    return variant.dim if variant.kind in ("attractive", "signed") else None


def control_width(config: Config) -> int:
    """Narrowest control branch with at least the parameters of the largest G-CRF branch."""
    target = max(branch_parameters(v, config) for v in variants(config) if v.kind in GCRF_KINDS)
    width = 1
    while parameter_count(conv_trunk(width, NUM_CLASSES)) < target:
        width += 1
    return width
