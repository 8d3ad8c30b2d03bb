"""Shape contract of the ``DenseGCRF`` layers, shared by the PyTorch and Keras versions.

Channels first, with 1 to 3 spatial dimensions: unary ``(B, L, *spatial)``; embeddings
``(B, D, *spatial)`` (Potts, one per pixel) or ``(B, D, L, *spatial)`` (general, one per
pixel and label), or ``(B, D + E, L, *spatial)`` (signed: the repulsive embeddings A in the
first D channels, the attractive Γ in the last E = ``attractive_dim``). The core's node
order is label-major over row-major pixels (``docs/maths.md#notation``), so both reshape to
the core's layout without a copy: unary → ``(B, L·P)`` (general, signed) or ``(B, L, P)``
(Potts), embeddings → ``(B, D, L·P)`` (``(B, D + E, L·P)``) or ``(B, D, P)``, with P the
product of the spatial sizes.

The Keras layer's ``data_format="channels_last"`` moves the channel axes to the end, in the
same order: unary ``(B, *spatial, L)``, embeddings ``(B, *spatial, D)`` or
``(B, *spatial, D, L)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lowrank_gcrf.errors import GCRFError

#: Names of the spatial axes in messages, by their number.
SPATIAL_NAMES = {1: ("W",), 2: ("H", "W"), 3: ("Z", "H", "W")}

#: The channel axes of the embeddings, after the batch axis.
EMBEDDING_CHANNELS = {"potts": ("D",), "general": ("D", "L"), "signed": ("D+E", "L")}


def layout(channels: tuple[str, ...], spatial_rank: int, channels_last: bool = False) -> str:
    """A layout as text, e.g. ``(B, D, H, W)``."""
    spatial = SPATIAL_NAMES.get(spatial_rank, ("*spatial",))
    axes = (*spatial, *channels) if channels_last else (*channels, *spatial)
    return f"(B, {', '.join(axes)})"


def embeddings_layout(model: str, spatial_rank: int, channels_last: bool = False) -> str:
    """The expected embeddings layout for ``model``, with the alias the layers accept."""
    text = layout(EMBEDDING_CHANNELS[model], spatial_rank, channels_last)
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
        """(B, D, P) for Potts, (B, D, L·P) for the general model."""
        n = self.pixels if self.model == "potts" else self.labels * self.pixels
        return (self.batch, self.dim, n)

    @property
    def core_unary(self) -> tuple[int, ...]:
        """(B, L, P) for Potts, (B, L·P) for the general model."""
        if self.model == "potts":
            return (self.batch, self.labels, self.pixels)
        return (self.batch, self.labels * self.pixels)

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


def layer_shapes(
    unary_shape: tuple[int, ...], embeddings_shape: tuple[int, ...], model: str
) -> LayerShapes:
    """Check the (channels-first) shapes of a ``DenseGCRF`` call; errors name the layout."""
    unary_shape, embeddings_shape = tuple(unary_shape), tuple(embeddings_shape)
    rank = spatial_rank(len(unary_shape))
    batch, labels, *spatial = unary_shape
    expected = embeddings_layout(model, rank)
    channels = len(EMBEDDING_CHANNELS[model])
    if len(embeddings_shape) != 1 + channels + rank:
        raise GCRFError(
            f"embeddings must have shape {expected} to go with unary of shape "
            f"{unary_shape} {layout(('L',), rank)}, got {embeddings_shape}"
        )
    want = (batch, *spatial) if model == "potts" else (batch, labels, *spatial)
    got = (embeddings_shape[0], *embeddings_shape[2:])
    if got != want:
        sizes = ", ".join(
            f"{name}={size}"
            for name, size in zip(
                ("B", *(("L",) if model != "potts" else ()), *SPATIAL_NAMES[rank]),
                want,
                strict=True,
            )
        )
        raise GCRFError(
            f"embeddings of shape {embeddings_shape} do not match unary of shape "
            f"{unary_shape}: expected {expected} with {sizes}"
        )
    return LayerShapes(batch, labels, tuple(spatial), int(embeddings_shape[1]), model)


def repulsive_channels(channels: int, attractive_dim: int) -> int:
    """D, the repulsive channels of signed embeddings with ``channels`` = D + E channels."""
    if attractive_dim > channels:
        raise GCRFError(
            f"attractive_dim={attractive_dim} exceeds the {channels} embedding channels (D + E) "
            "of the signed model: the last attractive_dim channels are the attractive embeddings"
        )
    return channels - attractive_dim
