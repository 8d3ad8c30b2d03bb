"""A ready segmentation head for PyTorch, :class:`GCRFHead`: unary and embedding branches
(1×1 convolutions) on backbone features, then :class:`~lowrank_gcrf.adapters.torch.DenseGCRF`."""

from __future__ import annotations

from torch import Tensor, nn

from lowrank_gcrf.adapters.head_plan import head_sizes, positive_size
from lowrank_gcrf.adapters.layer_plan import (
    DEFAULT_MAX_STRENGTH,
    DEFAULT_STRENGTH,
    UNSET,
    setting_arguments,
)
from lowrank_gcrf.adapters.layer_shapes import layout
from lowrank_gcrf.adapters.torch.modules import DenseGCRF
from lowrank_gcrf.errors import GCRFError
from lowrank_gcrf.refine_inputs import checked_spatial_dims


class GCRFHead(nn.Module):
    """A segmentation head in one line: unary and embedding branches (1×1 convolutions) on
    backbone features, then :class:`DenseGCRF`.

    Parameters
    ----------
    in_channels : int
        Channels C of the features.
    num_labels : int
        Labels L.
    embed_dim : int, default 16
        Embedding dimension D (the rank of the pairwise term).
    model : {"potts", "general", "signed"}, default "potts"
        Potts: one embedding per pixel, shared by the labels (D channels); general: one per
        pixel and label (D·L channels, reshaped to (B, D, L, *spatial)); signed: repulsive
        and attractive embeddings per pixel and label ((D + E)·L channels).
    spatial_dims : {1, 2, 3}, default 2
        Spatial dimensions of the features: the branches are ``Conv1d``, ``Conv2d`` or
        ``Conv3d``.
    lam : float, default 1.0
        λ. With a learnt strength it only scales the scores (a temperature).
    learn_lam : bool, default False
        λ is a parameter of the head (``crf.raw_lam``).
    strength, learn_strength, max_strength
        As for :class:`DenseGCRF`: by default the embeddings give the affinities' shape and a
        learnt strength ρ (0.3 initially, at most 0.9) their size, ``‖Â‖₂² ≤ ρ·λ``, so a
        fresh head stays close to its unary branch whatever the convolution's scale.
    attractive_dim : int, optional
        Signed model only: E, the attractive embeddings per pixel and label (default D).
    pd_bound, method, rtol, atol, maxiter, on_failure, traceable
        As for :class:`DenseGCRF`.

    Attributes
    ----------
    unary, embed : nn.Module
        The unary (L channels) and embedding branches.
    crf : DenseGCRF

    Notes
    -----
    Features (B, C, *spatial) in, MAP scores (B, L, *spatial) out.

    Examples
    --------
    >>> import torch
    >>> from lowrank_gcrf.adapters.torch import GCRFHead
    >>> head = GCRFHead(16, num_labels=3, embed_dim=4)
    >>> scores = head(torch.randn(2, 16, 8, 8))        # features (B, C, H, W)
    >>> scores.sum().backward()
    >>> scores.shape, head.crf.raw_strength.grad is not None
    (torch.Size([2, 3, 8, 8]), True)
    """

    def __init__(
        self,
        in_channels: int,
        num_labels: int,
        *,
        embed_dim: int = 16,
        model: str = "potts",
        spatial_dims: int = 2,
        lam: float = 1.0,
        learn_lam: bool = False,
        strength: float | None = DEFAULT_STRENGTH,
        learn_strength: bool = True,
        max_strength: float | None = DEFAULT_MAX_STRENGTH,
        attractive_dim: int | None = None,
        pd_bound: float | None = UNSET,
        method: str = "auto",
        rtol: float | None = None,
        atol: float = 0.0,
        maxiter: int | None = None,
        on_failure: str = "warn",
        traceable: bool | str = "auto",
    ):
        super().__init__()
        self.sizes = head_sizes(num_labels, embed_dim, model, attractive_dim)
        attractive_dim = self.sizes.attractive_dim
        self.in_channels = positive_size(in_channels, "in_channels")
        self.spatial_dims = checked_spatial_dims(spatial_dims)
        conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[self.spatial_dims - 1]
        self.unary = conv(self.in_channels, self.sizes.num_labels, 1)
        self.embed = conv(self.in_channels, self.sizes.embedding_channels, 1)
        self.crf = DenseGCRF(**setting_arguments(locals()))

    def forward(self, features: Tensor) -> Tensor:
        """MAP scores (B, L, *spatial) of the G-CRF on ``features`` (B, C, *spatial)."""
        expected = layout(("C",), self.spatial_dims)
        if features.ndim != 2 + self.spatial_dims or features.shape[1] != self.in_channels:
            raise GCRFError(
                f"GCRFHead expects features of shape {expected} with C={self.in_channels}, "
                f"got {tuple(features.shape)}"
            )
        embeddings = self.embed(features)
        if self.sizes.per_label:
            batch, _, *spatial = embeddings.shape
            embeddings = embeddings.reshape(
                batch, self.sizes.channels, self.sizes.num_labels, *spatial
            )
        return self.crf(self.unary(features), embeddings)
