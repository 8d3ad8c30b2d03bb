"""Shape contract of the ``DenseGCRF`` layers, shared by the PyTorch and Keras versions.

Channels-first images: unary ``(B, L, H, W)``; embeddings ``(B, D, H, W)`` (Potts, one per
pixel) or ``(B, D, L, H, W)`` (general, one per pixel and label). The core's node order is
label-major over row-major pixels (DESIGN §1), so both reshape to the core's layout without
a copy: unary → ``(B, L·P)`` (general) or ``(B, L, P)`` (Potts), embeddings →
``(B, D, L·P)`` or ``(B, D, P)``, with P = H·W.
"""

from __future__ import annotations

from dataclasses import dataclass

from lowrank_gcrf.errors import GCRFError


@dataclass(frozen=True)
class LayerShapes:
    """Sizes of one ``DenseGCRF`` call and the core-layout shapes they imply."""

    batch: int
    labels: int
    height: int
    width: int
    dim: int
    potts: bool

    @property
    def pixels(self) -> int:
        """P = H·W."""
        return self.height * self.width

    @property
    def core_embeddings(self) -> tuple[int, int, int]:
        """(B, D, P) for Potts, (B, D, L·P) for the general model."""
        n = self.pixels if self.potts else self.labels * self.pixels
        return (self.batch, self.dim, n)

    @property
    def core_unary(self) -> tuple[int, ...]:
        """(B, L, P) for Potts, (B, L·P) for the general model."""
        if self.potts:
            return (self.batch, self.labels, self.pixels)
        return (self.batch, self.labels * self.pixels)

    @property
    def output(self) -> tuple[int, int, int, int]:
        """(B, L, H, W)."""
        return (self.batch, self.labels, self.height, self.width)


def layer_shapes(
    unary_shape: tuple[int, ...], embeddings_shape: tuple[int, ...], potts: bool
) -> LayerShapes:
    """Check the shapes of a ``DenseGCRF`` call; errors name the expected layout."""
    unary_shape, embeddings_shape = tuple(unary_shape), tuple(embeddings_shape)
    expected = "(B, D, H, W) for potts=True" if potts else "(B, D, L, H, W) for potts=False"
    if len(unary_shape) != 4:
        raise GCRFError(f"unary must have shape (B, L, H, W) (channels first), got {unary_shape}")
    batch, labels, height, width = unary_shape
    if len(embeddings_shape) != (4 if potts else 5):
        raise GCRFError(f"embeddings must have shape {expected}, got {embeddings_shape}")
    want = (batch, height, width) if potts else (batch, labels, height, width)
    got = (embeddings_shape[0], *embeddings_shape[2:])
    if got != want:
        raise GCRFError(
            f"embeddings of shape {embeddings_shape} do not match unary of shape "
            f"{unary_shape}: expected {expected} with B={batch}, "
            + ("" if potts else f"L={labels}, ")
            + f"H={height}, W={width}"
        )
    return LayerShapes(batch, labels, height, width, int(embeddings_shape[1]), potts)
