"""The shape contract of a ``DenseGCRF`` call, shared by the PyTorch and Keras layers.

Channels first, 1 to 3 spatial dimensions: unary ``(B, L, *spatial)``, embeddings
``(B, *channels, *spatial)`` with the model's channel axes
(:data:`~lowrank_gcrf.adapters.layer_plan.LAYER_MODELS`; signed: repulsive A in the first D
channels, attractive Γ in the last E = ``attractive_dim``). The core's node order is
label-major over row-major pixels (``docs/maths.md#notation``), so both reshape to the core's
layout without a copy (:class:`LayerShapes`). The Keras layer's
``data_format="channels_last"`` moves the channel axes to the end, in the same order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lowrank_gcrf.adapters.layer_plan import LAYER_MODELS
from lowrank_gcrf.errors import GCRFError

#: Names of the spatial axes in messages, by their number.
SPATIAL_NAMES = {1: ("W",), 2: ("H", "W"), 3: ("Z", "H", "W")}


def layout(channels: tuple[str, ...], spatial_rank: int, channels_last: bool = False) -> str:
    """A layout as text, e.g. ``(B, D, H, W)``."""
    spatial = SPATIAL_NAMES.get(spatial_rank, ("*spatial",))
    axes = (*spatial, *channels) if channels_last else (*channels, *spatial)
    return f"(B, {', '.join(axes)})"


def embeddings_layout(model: str, spatial_rank: int, channels_last: bool = False) -> str:
    """The expected embeddings layout for ``model``, with the alias the layers accept."""
    text = layout(LAYER_MODELS[model].channels, spatial_rank, channels_last)
    return f"{text} for potts={model == 'potts'} (model={model!r})"


@dataclass(frozen=True)
class LayerShapes:
    """Sizes of one ``DenseGCRF`` call and the core-layout shapes they imply."""

    batch: int
    labels: int
    spatial: tuple[int, ...]
    dim: int
    model: str

    @property
    def pixels(self) -> int:
        """P, the product of the spatial sizes."""
        return math.prod(self.spatial)

    @property
    def core_embeddings(self) -> tuple[int, int, int]:
        """(B, D, L·P) with one embedding per pixel and label, else (B, D, P)."""
        per_label = LAYER_MODELS[self.model].per_label
        return (self.batch, self.dim, self.pixels * (self.labels if per_label else 1))

    @property
    def core_unary(self) -> tuple[int, ...]:
        """(B, L·P) with one embedding per pixel and label, else (B, L, P)."""
        if LAYER_MODELS[self.model].per_label:
            return (self.batch, self.labels * self.pixels)
        return (self.batch, self.labels, self.pixels)

    @property
    def output(self) -> tuple[int, ...]:
        """(B, L, *spatial)."""
        return (self.batch, self.labels, *self.spatial)


def spatial_rank(unary_rank: int) -> int:
    """The number of spatial axes of a unary of rank ``unary_rank``; an error outside 1–3."""
    if not 3 <= unary_rank <= 5:
        raise GCRFError(
            f"unary must have shape (B, L, H, W) or, in general, (B, L, *spatial) with 1 to 3 "
            f"spatial dimensions (channels first), got {unary_rank} dimensions"
        )
    return unary_rank - 2


def paired_axes(model: str, rank: int) -> list[tuple[int, int]]:
    """(unary axis, embeddings axis) pairs that must have one size: B, the spatial axes and,
    with one embedding per pixel and label, L."""
    spec = LAYER_MODELS[model]
    pairs = [(0, 0)] + [(2 + i, 1 + len(spec.channels) + i) for i in range(rank)]
    return pairs + ([(1, 2)] if spec.per_label else [])


def layer_shapes(
    unary_shape: tuple[int, ...], embeddings_shape: tuple[int, ...], model: str
) -> LayerShapes:
    """Check the (channels-first) shapes of a ``DenseGCRF`` call; errors name the layout."""
    unary_shape, embeddings_shape = tuple(unary_shape), tuple(embeddings_shape)
    rank = spatial_rank(len(unary_shape))
    batch, labels, *spatial = unary_shape
    expected = embeddings_layout(model, rank)
    if len(embeddings_shape) != 1 + len(LAYER_MODELS[model].channels) + rank:
        raise GCRFError(
            f"embeddings must have shape {expected} to go with unary of shape "
            f"{unary_shape} {layout(('L',), rank)}, got {embeddings_shape}"
        )
    pairs = sorted(paired_axes(model, rank))
    names = ("B", "L", *SPATIAL_NAMES[rank])
    if any(unary_shape[i] != embeddings_shape[j] for i, j in pairs):
        sizes = ", ".join(f"{names[i]}={unary_shape[i]}" for i, _ in pairs)
        raise GCRFError(
            f"embeddings of shape {embeddings_shape} do not match unary of shape "
            f"{unary_shape}: expected {expected} with {sizes}"
        )
    return LayerShapes(batch, labels, tuple(spatial), int(embeddings_shape[1]), model)
