"""The torchvision networks, with their own head or with the CRF on stride-8 features.

Both are built with ``weights=None`` (random initialisation: nothing is downloaded).

* LR-ASPP MobileNetV3-Large: its head combines a stride-8 backbone layer ("low", 40
  channels) with the gated stride-16 features ("high"); the CRF's features are both at
  stride 8, the gated branch upsampled: 168 channels.
* DeepLabV3 MobileNetV3-Large: its backbone ends at stride 16 (the last stage dilated) and
  its head is ASPP, a 3×3 convolution and the classifier. The CRF's features are the ASPP
  branch's (before the classifier) upsampled to stride 8 and concatenated with the stride-8
  backbone layer (the input of a DeepLabV3+ decoder): 296 channels.

The ``as-is`` variant is the torchvision model itself; every other variant is the trunk
above and, as head, a 1×1 convolution (the control, the null) or ``GCRFHead`` with every
default but the model. A seed fixes the trunk (the same in every variant) and the unary
convolution (the same in the control and in every head, whose ``unary`` branch is loaded
from it); the null draws that convolution from another seed.
"""

from __future__ import annotations

from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..reproduce.training import seed_everything
from .config import HEAD_MODELS
from .torchvision_import import import_torchvision


def _segmentation() -> ModuleType:
    import_torchvision()
    from torchvision.models import segmentation

    return segmentation


class LRASPPTrunk(nn.Module):
    """LR-ASPP's features at stride 8: the "low" layer and the upsampled gated "high"."""

    def __init__(self, model: nn.Module):
        super().__init__()
        head = model.classifier
        self.backbone, self.cbr, self.scale = model.backbone, head.cbr, head.scale
        self.channels = head.low_classifier.in_channels + head.high_classifier.in_channels

    def forward(self, images: Tensor) -> Tensor:
        features = self.backbone(images)
        low, high = features["low"], features["high"]
        gated = self.cbr(high) * self.scale(high)
        up = F.interpolate(gated, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([low, up], dim=1)


class DeepLabTrunk(nn.Module):
    """DeepLabV3's ASPP branch upsampled to stride 8, concatenated with the stride-8 layer."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.backbone = model.backbone
        # ASPP, the 3×3 convolution, its BatchNorm and ReLU: the classifier without its last
        # 1×1 convolution
        self.context = nn.Sequential(*list(model.classifier.children())[:-1])
        low = model.aux_classifier[0].in_channels
        self.channels = low + model.classifier[-1].in_channels

    def forward(self, images: Tensor) -> Tensor:
        features = self.backbone(images)
        low = features["aux"]
        context = self.context(features["out"])
        up = F.interpolate(context, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([low, up], dim=1)


class AsIs(nn.Module):
    """The torchvision model with its own head: its main output only."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images)["out"]


def upsample(scores: Tensor, size: tuple[int, int]) -> Tensor:
    """Scores (B, L, h, w) bilinearly to (B, L, *size), as :class:`HeadNet` outputs them."""
    return F.interpolate(scores, size=size, mode="bilinear", align_corners=False)


class HeadNet(nn.Module):
    """A trunk, a head on its stride-8 features, and bilinear upsampling to the input size."""

    def __init__(self, trunk: nn.Module, head: nn.Module):
        super().__init__()
        self.trunk, self.head = trunk, head

    def low_res(self, images: Tensor) -> Tensor:
        """The head's scores at stride 8, before the upsampling."""
        return self.head(self.trunk(images))

    def forward(self, images: Tensor) -> Tensor:
        return upsample(self.low_res(images), images.shape[-2:])


def torchvision_model(network: str, num_labels: int) -> nn.Module:
    """A fresh ``weights=None`` torchvision model (``"lraspp"`` or ``"deeplabv3"``)."""
    segmentation = _segmentation()
    if network == "lraspp":
        return segmentation.lraspp_mobilenet_v3_large(
            weights=None, weights_backbone=None, num_classes=num_labels
        )
    # aux_loss=True makes the backbone return its stride-8 layer too; the auxiliary
    # classifier itself is never called
    return segmentation.deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=num_labels, aux_loss=True
    )


def build(network: str, variant: str, seed: int, num_labels: int) -> tuple[nn.Module, nn.Module]:
    """The network of one variant and its head (the module whose state is logged).

    Raises
    ------
    ValueError
        ``GCRFHead`` does not support the variant's model in this version of the library.
    """
    from lowrank_gcrf.adapters.torch import GCRFHead

    seed_everything(network, seed, "trunk")
    model = torchvision_model(network, num_labels)
    if variant == "as-is":
        return AsIs(model), model.classifier
    trunk = LRASPPTrunk(model) if network == "lraspp" else DeepLabTrunk(model)
    seed_everything(network, seed, "null" if variant == "null" else "unary")
    unary = nn.Conv2d(trunk.channels, num_labels, 1)
    if variant not in HEAD_MODELS:
        return HeadNet(trunk, unary), unary
    seed_everything(network, seed, "embeddings")
    head = GCRFHead(trunk.channels, num_labels, model=variant)
    head.unary.load_state_dict(unary.state_dict())
    return HeadNet(trunk, head), head
