"""The networks: a small convolutional unary network plus a control branch or a G-CRF.

A unary network gives scores b, a parallel embedding network (the paper's "resnet-pw")
gives the embeddings, and the dense G-CRF layer outputs x = M⁻¹ b: general ``λI + AᵀA``,
Potts, attractive ``λI − ΓᵀΓ`` (label-dependent Γ) or signed ``λI + AᵀA − ΓᵀΓ``. The
embeddings are rescaled so that every system stays positive definite and well conditioned.
"""

from __future__ import annotations

import math

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

    Â is the (D, n) matrix of one image's embeddings, μ = ‖Â‖₂² the top eigenvalue of its
    D×D Gram ÂÂᵀ (:func:`bound_scale`). The spectral norm (not ‖Â‖_F ≥ ‖Â‖₂) is used because
    Potts pooling within one object is amplified by 1/(λ − μ_object): a Frobenius bound
    would make the objects of one scene share a single budget and weaken pooling in every
    one of them.
    """
    flat = raw.reshape(raw.shape[0], raw.shape[1], -1)
    top = torch.linalg.eigvalsh(flat @ flat.transpose(1, 2))[:, -1]
    return raw * bound_scale(top, lam, margin).reshape(-1, *[1] * (raw.ndim - 1))


def bound_scale(top: Tensor, lam: float, margin: float) -> Tensor:
    """Per image, the factor 1/√(1 + μ/(ρλ)) that maps μ = ‖Â‖₂² (``top``, (B,)) to
    ρλ·μ/(ρλ + μ) < ρλ: small embeddings pass unchanged and the layer never meets an
    indefinite system."""
    return torch.rsqrt(1.0 + top.clamp_min(0.0) / (margin * lam))


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
            if attractive_dim(variant):
                self.attractive = AttractiveHead(variant)
            self.crf = DenseGCRF(
                lam=config.lam,
                # the attractive model is the signed one without A
                model="signed" if variant.kind == "attractive" else variant.kind,
                attractive_dim=attractive_dim(variant),
                # embeddings() bounds ‖Â‖₂², ‖Γ‖₂² < ρλ itself: raw embeddings, without the
                # layer's clamp (the identity here, at the cost of a second Gram in float64)
                strength=None,
                max_strength=None,
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
        batch, _, height, width = raw.shape
        repulsive = repulsive_channels(self.variant)
        parts = []
        if repulsive:
            A = raw[:, :repulsive].reshape(batch, -1, NUM_CLASSES, height, width)
            kappa = config.signed_kappa if self.variant.kind == "signed" else config.general_kappa
            parts.append(general_embeddings(A, config.lam, kappa))
        if attractive_dim(self.variant):
            features = raw[:, repulsive:]
            top = torch.linalg.eigvalsh(self.attractive.gram(features))[:, -1]
            scale = bound_scale(top, config.lam, config.potts_margin)
            parts.append(self.attractive(features * scale[:, None, None, None]))
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
    """Parameters of the extra branch of a G-CRF variant (with its label vectors)."""
    shape = label_vectors_shape(variant)
    labels = math.prod(shape) if shape else 0
    return parameter_count(conv_trunk(config.width, embedding_channels(variant))) + labels


def embedding_channels(variant: Variant) -> int:
    """Output channels of a G-CRF variant's embedding branch: D (Potts), D·L (general),
    F (attractive) or D·L + F (signed), F the pixel features of Γ."""
    if variant.kind == "potts":
        return variant.dim
    return repulsive_channels(variant) + (pixel_features(variant) or 0)


def repulsive_channels(variant: Variant) -> int:
    """Branch channels of the repulsive embeddings A (D per label): general and signed."""
    return variant.dim * NUM_CLASSES if variant.kind in ("general", "signed") else 0


def pixel_features(variant: Variant) -> int | None:
    """F, the label-agnostic pixel features of the attractive embeddings: ⌊E/L⌋, at least 1."""
    dim = attractive_dim(variant)
    return None if dim is None else max(1, dim // NUM_CLASSES)


def label_vectors_shape(variant: Variant) -> tuple[int, int, int] | None:
    """(E, L, F), the shape of the attractive embeddings' label vectors U."""
    dim = attractive_dim(variant)
    return None if dim is None else (dim, NUM_CLASSES, pixel_features(variant))


class AttractiveHead(nn.Module):
    """Attractive embeddings factored as Γ_{:, l, p} = U_l f_p: pixel features f (F of them,
    from the branch) times learned label vectors U (E, L, F), centred over the labels.

    Then ΓᵀΓ = Σ_{l, m} (U_lᵀU_m) ⊗ f fᵀ: f says which pixels exchange evidence, U which
    labels. A convolution that had to output all E·L numbers of Γ_{:, :, p} at each pixel
    would have to discover this structure by itself (it did not: see docs/reproduction.md).
    Centring (Σ_l U_l = 0) makes Γ blind to the scores' label mean, which the softmax
    ignores: uncentred, a channel shared by two labels pools that mean into both of them
    (docs/reproduction.md measures what that costs an oracle tying TiedScenes' partner
    labels). U starts
    from orthonormal columns where E ≥ L·F, so that the centred U_lᵀU_m = ([l = m] − 1/L)
    I_F: the Potts model of dimension F on the label deviations, the label mean passing as
    b/λ. Where E < L·F it starts from orthonormal rows (random, from torch's seed).
    """

    def __init__(self, variant: Variant):
        super().__init__()
        shape = label_vectors_shape(variant)
        dim, width = shape[0], shape[1] * shape[2]
        q, _ = torch.linalg.qr(torch.randn(max(dim, width), min(dim, width)))
        vectors = q if dim >= width else q.T
        self.vectors = nn.Parameter(vectors.reshape(shape).contiguous())

    def centred(self) -> Tensor:
        """The label vectors minus their mean over labels."""
        return self.vectors - self.vectors.mean(dim=1, keepdim=True)

    def forward(self, features: Tensor) -> Tensor:
        """Γ (B, E, L, h, w) from pixel features (B, F, h, w)."""
        return torch.einsum("elf,bfhw->belhw", self.centred(), features)

    def gram(self, features: Tensor) -> Tensor:
        """ΓΓᵀ (B, E, E) = Σ_{j, k} (f_j · f_k) U_j U_kᵀ from the F×F Gram of the features,
        without forming Γ (U_j = U[:, :, j], E×L)."""
        flat = features.flatten(2)
        small = flat @ flat.transpose(1, 2)
        vectors = self.centred()
        return torch.einsum("elj,bjk,mlk->bem", vectors, small, vectors)


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
