"""The sizes a ``GCRFHead`` decides, shared by the PyTorch and Keras heads: its branches
are 1×1 convolutions giving the unary scores and the embeddings of a
:data:`~lowrank_gcrf.adapters.layer_plan.LAYER_MODELS` model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lowrank_gcrf.adapters.layer_plan import LAYER_MODELS, is_positive_int
from lowrank_gcrf.errors import GCRFError


def positive_size(value: Any, name: str) -> int:
    """``value`` as an int, or a GCRFError unless it is a positive integer."""
    if not is_positive_int(value):
        raise GCRFError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class HeadSizes:
    """The validated sizes of a ``GCRFHead``: L unary channels and the embedding branch's
    channels — D per pixel (Potts), D·L per pixel and label (general) or (D + E)·L (signed:
    E attractive channels after the D repulsive ones), reshaped to ``(B, D [+ E], L,
    *spatial)``, channel ``d·L + l`` holding ``A[d, l]``."""

    num_labels: int
    embed_dim: int
    model: str
    attractive_dim: int | None = None

    @property
    def per_label(self) -> bool:
        """Whether the embedding branch's channels split into (D [+ E], L)."""
        return LAYER_MODELS[self.model].per_label

    @property
    def channels(self) -> int:
        """Embedding channels per label: D, or D + E with attractive embeddings."""
        return self.embed_dim + (self.attractive_dim or 0)

    @property
    def embedding_channels(self) -> int:
        """Output channels of the embedding branch."""
        return self.channels * (self.num_labels if self.per_label else 1)


def head_sizes(
    num_labels: Any, embed_dim: Any, model: Any, attractive_dim: Any = None
) -> HeadSizes:
    """Check a head's label count, embedding dimension, model and (signed model only; default
    E = D) attractive embedding dimension."""
    names = [name for name, spec in LAYER_MODELS.items() if spec.in_heads]
    if model not in names:
        raise GCRFError(
            f"a GCRFHead's model must be one of {', '.join(map(repr, names))}, "
            f"got {model!r}; build other models from DenseGCRF"
        )
    embed_dim = positive_size(embed_dim, "embed_dim")
    if LAYER_MODELS[model].attractive_split:
        attractive_dim = embed_dim if attractive_dim is None else attractive_dim
        attractive_dim = positive_size(attractive_dim, "attractive_dim")
    elif attractive_dim is not None:
        raise GCRFError(
            f"attractive_dim goes with model='signed' only, got model={model!r}, "
            f"attractive_dim={attractive_dim!r}"
        )
    return HeadSizes(positive_size(num_labels, "num_labels"), embed_dim, model, attractive_dim)
