"""A ready segmentation head for PyTorch, :class:`GCRFHead`: unary and embedding branches
(1×1 convolutions) on backbone features, then :class:`~lowrank_gcrf.adapters.torch.DenseGCRF`."""

from __future__ import annotations

from torch import Tensor, nn

from lowrank_gcrf.adapters.layer_plan import (
    head_sizes,
    layout,
    positive_size,
    setting_arguments,
)
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
    model : {"potts", "general"}, default "potts"
        Potts: one embedding per pixel, shared by the labels (D channels); general: one per
        pixel and label (D·L channels, reshaped to (B, D, L, *spatial)).
    spatial_dims : {1, 2, 3}, default 2
        Spatial dimensions of the features: the branches are ``Conv1d``, ``Conv2d`` or
        ``Conv3d``.
    lam : float, default 1.0
        Initial λ.
    learn_lam : bool, default True
        λ is a parameter of the head (``crf.raw_lam``); with Potts the bound on the
        embeddings follows it.
    pd_bound, method, rtol, atol, maxiter, on_failure
        As for :class:`DenseGCRF`: the Potts head rescales the embeddings so that
        ``‖Â‖₂² ≤ pd_bound·λ`` and trains on raw convolution outputs.

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
    >>> scores.shape, head.crf.raw_lam.grad is not None
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
        learn_lam: bool = True,
        pd_bound: float | None = 0.9,
        method: str = "auto",
        rtol: float | None = None,
        atol: float = 0.0,
        maxiter: int | None = None,
        on_failure: str = "warn",
    ):
        super().__init__()
        self.sizes = head_sizes(num_labels, embed_dim, model)
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
                batch, self.sizes.embed_dim, self.sizes.num_labels, *spatial
            )
        return self.crf(self.unary(features), embeddings)
