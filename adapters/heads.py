"""Sizes of the ready ``GCRFHead`` layers, shared by the PyTorch and Keras versions.

A head maps backbone features to the G-CRF's two inputs by 1×1 convolutions: L unary
channels, and D embedding channels per pixel (Potts) or D·L (general, one embedding per
pixel and label, reshaped to ``(B, D, L, *spatial)``; channel ``d·L + l`` holds
``A[d, l]``).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

from lowrank_gcrf.adapters.layout import SPATIAL_NAMES
from lowrank_gcrf.errors import GCRFError

#: The models a head builds: their embeddings come from one branch without a split.
HEAD_MODELS = ("potts", "general")


def positive_size(value: Any, name: str) -> int:
    """``value`` as an int, or a GCRFError unless it is a positive integer."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise GCRFError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class HeadSizes:
    """The validated sizes of a ``GCRFHead``."""

    num_labels: int
    embed_dim: int
    model: str

    @property
    def embedding_channels(self) -> int:
        """Output channels of the embedding branch: D (Potts) or D·L (general)."""
        return self.embed_dim * (self.num_labels if self.model == "general" else 1)


def head_sizes(num_labels: Any, embed_dim: Any, model: Any) -> HeadSizes:
    """Check a head's label count, embedding dimension and model (``"potts"`` or
    ``"general"``)."""
    if model not in HEAD_MODELS:
        raise GCRFError(
            f"a GCRFHead's model must be one of {', '.join(map(repr, HEAD_MODELS))}, "
            f"got {model!r}; build other models from DenseGCRF"
        )
    return HeadSizes(
        positive_size(num_labels, "num_labels"), positive_size(embed_dim, "embed_dim"), model
    )


def check_spatial_dims(spatial_dims: Any) -> int:
    """The number of spatial dimensions of a head's input, 1 to 3."""
    if isinstance(spatial_dims, bool) or spatial_dims not in SPATIAL_NAMES:
        raise GCRFError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims!r}")
    return int(spatial_dims)
