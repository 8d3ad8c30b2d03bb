"""A ready segmentation head for Keras, :class:`GCRFHead`: unary and embedding branches
(1×1 convolutions) on backbone features, then
:class:`~lowrank_gcrf.adapters.tensorflow.DenseGCRF`."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from lowrank_gcrf.adapters.head_plan import head_sizes
from lowrank_gcrf.adapters.layer_plan import (
    DEFAULT_MAX_STRENGTH,
    DEFAULT_STRENGTH,
    UNSET,
    setting_arguments,
)
from lowrank_gcrf.adapters.layer_shapes import SPATIAL_NAMES, layout
from lowrank_gcrf.adapters.tensorflow.layers import DenseGCRF
from lowrank_gcrf.adapters.tensorflow.layout_ops import shape_of
from lowrank_gcrf.errors import GCRFError


@keras.saving.register_keras_serializable(package="lowrank_gcrf")
class GCRFHead(keras.layers.Layer):
    """A segmentation head in one line: unary and embedding branches (1×1 convolutions) on
    backbone features, then :class:`DenseGCRF`.

    Parameters
    ----------
    num_labels : int
        Labels L.
    embed_dim : int, default 16
        Embedding dimension D (the rank of the pairwise term).
    model : {"potts", "general", "signed"}, default "potts"
        Potts: one embedding per pixel, shared by the labels (D channels); general: one per
        pixel and label (D·L channels, reshaped to (B, *spatial, D, L) channels last);
        signed: repulsive and attractive embeddings per pixel and label ((D + E)·L).
    lam, learn_lam, strength, learn_strength, max_strength, attractive_dim, pd_bound
    method, rtol, atol, maxiter, on_failure, traceable
        As for :class:`lowrank_gcrf.adapters.torch.GCRFHead` (the same defaults): by
        default a learnt strength ρ (0.3 initially) sets the pairwise term's size and λ = 1
        is fixed.
    data_format : {"channels_last", "channels_first"}, optional
        Default: ``keras.config.image_data_format()``. TensorFlow's CPU convolutions exist
        in channels-last only: channels first needs a GPU.
    **kwargs
        Keras layer arguments (``name``, ``dtype``, ...).

    Attributes
    ----------
    unary, embed : keras.layers.Layer
        The unary (L channels) and embedding branches: ``Conv1D``, ``Conv2D`` or ``Conv3D``
        after the features' rank, created when the head is built.
    crf : DenseGCRF

    Notes
    -----
    Features (B, *spatial, C) in, MAP scores (B, *spatial, L) out (channels first:
    (B, C, *spatial) and (B, L, *spatial)), with 1 to 3 spatial dimensions.

    Examples
    --------
    >>> import tensorflow as tf
    >>> from lowrank_gcrf.adapters.tensorflow import GCRFHead
    >>> head = GCRFHead(num_labels=3, embed_dim=4, data_format="channels_last")
    >>> head(tf.random.normal((2, 8, 8, 16))).shape    # features (B, H, W, C)
    TensorShape([2, 8, 8, 3])
    """

    def __init__(
        self,
        num_labels: int,
        *,
        embed_dim: int = 16,
        model: str = "potts",
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
        data_format: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.sizes = head_sizes(num_labels, embed_dim, model, attractive_dim)
        attractive_dim = self.sizes.attractive_dim
        self.crf = DenseGCRF(
            **setting_arguments(locals()),
            data_format=data_format,
            dtype=self.dtype_policy,
            name="crf",
        )
        self.data_format = self.crf.data_format
        self.supports_jit = False
        self.unary: keras.layers.Layer | None = None
        self.embed: keras.layers.Layer | None = None

    def build(self, input_shape: Any) -> None:
        rank = len(input_shape) - 2
        if rank not in SPATIAL_NAMES:
            expected = layout(("C",), 2, self.data_format == "channels_last")
            raise GCRFError(
                f"GCRFHead expects features of shape {expected} or, in general, 1 to 3 "
                f"spatial dimensions ({self.data_format}), got shape {tuple(input_shape)}"
            )
        conv = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)[rank - 1]
        branches = {"unary": self.sizes.num_labels, "embed": self.sizes.embedding_channels}
        for name, channels in branches.items():
            branch = conv(
                channels, 1, data_format=self.data_format, dtype=self.dtype_policy, name=name
            )
            branch.build(input_shape)
            setattr(self, name, branch)

    def _embeddings(self, features: tf.Tensor) -> tf.Tensor:
        """The embedding branch's output, with (D [+ E], L) channels where the embeddings are
        per pixel and label."""
        embeddings = self.embed(features)
        if not self.sizes.per_label:
            return embeddings
        d = shape_of(embeddings)
        pair = [self.sizes.channels, self.sizes.num_labels]
        if self.data_format == "channels_last":
            return tf.reshape(embeddings, [*d[:-1], *pair])
        return tf.reshape(embeddings, [d[0], *pair, *d[2:]])

    def call(self, features: tf.Tensor, training: Any = None) -> tf.Tensor:
        """MAP scores of the G-CRF on ``features``."""
        features = tf.convert_to_tensor(features)
        return self.crf(self.unary(features), self._embeddings(features), training=training)

    def compute_output_shape(self, input_shape: Any) -> tuple:
        shape = list(input_shape)
        shape[-1 if self.data_format == "channels_last" else 1] = self.sizes.num_labels
        return tuple(shape)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            self.crf.settings.config(),
            num_labels=self.sizes.num_labels,
            embed_dim=self.sizes.embed_dim,
            data_format=self.data_format,
        )
        return config
