"""The dense G-CRF as a Keras 3 layer, :class:`DenseGCRF`: unary scores and embeddings in,
MAP scores out, for every model of the per-model table
(:data:`~lowrank_gcrf.adapters.layer_plan.LAYER_MODELS`)."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from lowrank_gcrf.adapters.bridge import softplus_inverse
from lowrank_gcrf.adapters.layer_plan import (
    DEFAULT_MAX_STRENGTH,
    DEFAULT_STRENGTH,
    UNSET,
    layer_settings,
    runs_traceable_solve,
    setting_arguments,
    solve_plan,
    strength_logit,
    strength_report,
)
from lowrank_gcrf.adapters.layer_shapes import embeddings_layout, layout
from lowrank_gcrf.adapters.tensorflow.functional import pd_rescaled, strength_scaled
from lowrank_gcrf.adapters.tensorflow.layout_ops import (
    check_static_layout,
    core_layout,
    first_order,
    shape_of,
    to_channels_first,
    to_channels_last,
)
from lowrank_gcrf.adapters.tensorflow.op import dtype_plan, solve_tensors
from lowrank_gcrf.adapters.tensorflow.traceable_solve import traceable_solve
from lowrank_gcrf.errors import GCRFError


@keras.saving.register_keras_serializable(package="lowrank_gcrf")
class DenseGCRF(keras.layers.Layer):
    """The dense low-rank G-CRF as a Keras 3 layer: unary scores and embeddings in, MAP
    scores out.

    Parameters
    ----------
    lam, model, potts, learn_lam, strength, learn_strength, max_strength, pd_bound, method
    rtol, atol, maxiter, on_failure, attractive_dim
        As for :class:`lowrank_gcrf.adapters.torch.DenseGCRF` (the same signature and
        defaults): λ, the model name (``potts=True`` is an alias of ``model="potts"``), a
        learnt λ, the learnt strength of the pairwise term (``‖block‖₂² ≤ ρ·λ``,
        ``ρ = max_strength·sigmoid(raw_strength)``, 0.3 initially), the deprecated
        ``pd_bound``, the solver and its tolerances, the failure policy, and the signed
        model's number E of attractive (trailing) embedding channels.
    traceable : {"auto", True, False}, default "auto"
        Which solve runs: the core's exact, checked solve, or the solve in TensorFlow
        operations only, certified by the strength's ceiling, that SavedModel, TFLite and XLA
        can trace (:mod:`lowrank_gcrf.adapters.tensorflow.traceable_solve`,
        ``docs/guide/deploying.md``). "auto": the traceable solve in graph mode when not
        training (``model.predict``, ``model.export``, ``jit_compile=True``), else the
        core's; True: always the traceable one (it needs a learnt strength); False: always
        the core's.
    data_format : {"channels_last", "channels_first"}, optional
        Default: ``keras.config.image_data_format()``. Channels last: unary
        (B, *spatial, L), embeddings (B, *spatial, D) (Potts), (B, *spatial, D, L)
        (general) or (B, *spatial, D + E, L) (signed), output (B, *spatial, L); channels
        first as the PyTorch module.
    **kwargs
        Keras layer arguments (``name``, ``dtype``, ...).

    Notes
    -----
    1 to 3 spatial dimensions. B and the spatial sizes may be unknown while tracing (fully
    convolutional models). Training runs the core's solve, which XLA cannot compile: Keras
    compiles a training step without XLA (``jit_compile="auto"``). λ and the strengths stay
    float32 under a mixed-precision policy.

    Examples
    --------
    >>> import tensorflow as tf
    >>> from lowrank_gcrf.adapters.tensorflow import DenseGCRF
    >>> crf = DenseGCRF(model="potts", data_format="channels_last")
    >>> unary = tf.random.normal((2, 8, 8, 3))          # (B, H, W, L)
    >>> embeddings = tf.random.normal((2, 8, 8, 4))     # (B, H, W, D)
    >>> crf(unary, embeddings).shape
    TensorShape([2, 8, 8, 3])
    >>> crf.effective_strength, crf.effective_lam
    ({'Ahat': 0.3}, 1.0)
    """

    def __init__(
        self,
        lam: float = 1.0,
        model: str | None = None,
        *,
        potts: bool | None = None,
        learn_lam: bool = False,
        strength: float | None = DEFAULT_STRENGTH,
        learn_strength: bool = True,
        max_strength: float | None = DEFAULT_MAX_STRENGTH,
        pd_bound: float | None = UNSET,
        method: str = "auto",
        rtol: float | None = None,
        atol: float = 0.0,
        maxiter: int | None = None,
        on_failure: str = "warn",
        traceable: bool | str = "auto",
        data_format: str | None = None,
        attractive_dim: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.settings = layer_settings(**setting_arguments(locals()))
        self.data_format = data_format or keras.config.image_data_format()
        if self.data_format not in ("channels_last", "channels_first"):
            raise GCRFError(
                f"data_format must be 'channels_last' or 'channels_first', got {self.data_format!r}"
            )
        # Keras then compiles training steps without XLA (the core's solve is a py_function);
        # traced inference runs the traceable solve, which XLA compiles.
        self.supports_jit = False
        self.raw_lam = self.raw_strength = None
        if self.settings.learn_lam:
            self.raw_lam = self.add_weight(
                name="raw_lam",
                shape=(),
                initializer=keras.initializers.Constant(softplus_inverse(self.settings.lam)),
                dtype="float32",
                # the solve runs in float32 anyway: a float16 λ would only lose digits
                autocast=False,
            )
        if self.settings.strength is not None:
            self.raw_strength = self.add_weight(
                name="raw_strength",
                shape=(len(self.settings.spec.blocks),),
                initializer=keras.initializers.Constant(strength_logit(self.settings)),
                dtype="float32",
                trainable=self.settings.learn_strength,
                autocast=False,
            )

    @property
    def model(self) -> str:
        """The model name."""
        return self.settings.model

    @property
    def potts(self) -> bool:
        """Whether the model is Potts (the ``potts=`` alias, read back)."""
        return self.settings.potts

    @property
    def learn_lam(self) -> bool:
        """Whether λ is a trained weight."""
        return self.settings.learn_lam

    @property
    def lam(self) -> Any:
        """λ: ``softplus(raw_lam)`` when learnt, else the fixed float."""
        if self.raw_lam is not None:
            return tf.nn.softplus(self.raw_lam)
        return self.settings.lam

    @property
    def strengths(self) -> Any:
        """ρ per embedding block, ``max_strength·sigmoid(raw_strength)``; None without."""
        if self.raw_strength is None:
            return None
        return self.settings.max_strength * tf.sigmoid(self.raw_strength)

    @property
    def effective_lam(self) -> float:
        """λ as a plain float, for logging."""
        return float(self.lam)

    @property
    def effective_strength(self) -> dict[str, float]:
        """ρ of each embedding block as plain floats, by block name, for logging (empty with
        ``strength=None``)."""
        if self.raw_strength is None:
            return {}
        return strength_report(self.settings, self.strengths.numpy().tolist())

    def _check_layout(self, unary_shape: Any, embeddings_shape: Any) -> None:
        """Check the static shapes; errors name the layout of the layer's data_format."""
        unary_shape, embeddings_shape = (
            tf.TensorShape(unary_shape),
            tf.TensorShape(embeddings_shape),
        )
        if self.data_format == "channels_first" or None in (
            unary_shape.rank,
            embeddings_shape.rank,
        ):
            check_static_layout(unary_shape, embeddings_shape, self.model)
            return
        channels = len(self.settings.spec.channels)
        try:
            check_static_layout(
                first_order(unary_shape, 1), first_order(embeddings_shape, channels), self.model
            )
        except GCRFError:
            rank = unary_shape.rank - 2
            raise GCRFError(
                f"with data_format='channels_last', unary must have shape "
                f"{layout(('L',), rank, True)} and embeddings "
                f"{embeddings_layout(self.model, rank, True)}, with 1 to 3 spatial dimensions "
                f"and the same B and spatial sizes; got unary {tuple(unary_shape.as_list())} "
                f"and embeddings {tuple(embeddings_shape.as_list())}"
            ) from None

    def _channels_first(self, unary: tf.Tensor, embeddings: tf.Tensor) -> tuple:
        if self.data_format == "channels_first":
            return unary, embeddings  # checked in the core layout
        self._check_layout(unary.shape, embeddings.shape)
        channels = len(self.settings.spec.channels)
        return to_channels_first(unary, 1), to_channels_first(embeddings, channels)

    def call(self, unary: tf.Tensor, embeddings: tf.Tensor, training: Any = None) -> tf.Tensor:
        """MAP scores of the G-CRF, shaped like ``unary``."""
        unary = tf.convert_to_tensor(unary)
        embeddings = tf.convert_to_tensor(embeddings)
        first_unary, first_embeddings = self._channels_first(unary, embeddings)
        b, A = core_layout(first_unary, first_embeddings, self.model)
        dtypes = dtype_plan(A, b)
        plan = solve_plan(self.settings, A.shape[1], dtypes[0].name)
        lam = self.lam
        if plan.blocks:
            A = strength_scaled(A, plan.blocks, self.strengths, lam)
        else:
            A = pd_rescaled(A, plan.clamped, lam, self.settings.max_strength)
        traced = not tf.executing_eagerly() and not training
        if runs_traceable_solve(self.settings, plan, traced=traced):
            compute, output = dtypes
            x = traceable_solve(
                plan.solve_as,
                tf.cast(A, compute),
                tf.cast(b, compute),
                tf.cast(lam, compute),
                plan.strength_bounds,
            )
            x = tf.cast(x, output)
        else:
            x = solve_tensors(plan.solve_as, A, b, lam, plan.options, dtypes)
        x = tf.reshape(x, shape_of(first_unary))
        return x if self.data_format == "channels_first" else to_channels_last(x)

    def compute_output_shape(self, unary_shape: Any, embeddings_shape: Any) -> tuple:
        self._check_layout(unary_shape, embeddings_shape)
        return tuple(unary_shape)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(self.settings.config(), data_format=self.data_format)
        return config
