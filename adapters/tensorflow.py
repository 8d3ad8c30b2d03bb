"""TensorFlow adapter: the dense G-CRF solve as a custom-gradient op and a Keras 3 layer.

The adapter holds no maths of its own: the core computes x and the vector-Jacobian products.

Data movement (DLPack):

* to the core, zero-copy: the core's NumPy arrays are views of TensorFlow's CPU buffers
  (CuPy arrays of its CUDA buffers). TensorFlow rejects the stream a consumer passes and
  does not expose its own, so a CUDA tensor is exported after a ``SyncDevice`` on its device;
* back to TensorFlow: CuPy results are shared without a copy (after synchronising CuPy's
  stream). NumPy results are shared only when their buffer is 64-byte aligned and
  C-contiguous — TensorFlow's CPU kernels abort the process on a less aligned buffer, and
  NumPy guarantees only 16 bytes — and are copied otherwise (about three times in four).
  That copy is of the output only, O(N) next to the solve's O(D·N).

Execution modes:

* eager: the core is called directly, core errors propagate with their own type and
  message, and the backward pass reuses the forward's factorization;
* inside ``tf.function`` (and so in ``model.fit``): the core runs eagerly through
  ``tf.py_function`` and the static shapes are restored. Once TensorFlow has built an op's
  gradient, its forward hands its factorization to the backward (keyed by a token the
  forward outputs); a backward that finds none (for instance after the gradient of an
  outer tape was built late) refactorizes. A core error raised there reaches the caller as
  ``tf.errors.InvalidArgumentError`` (TensorFlow's mapping of a ``ValueError`` raised in a
  ``py_function``) whose message contains the core's class name and message. Errors of
  the call itself (unknown keywords, dtypes, a float λ ≤ 0, the layer's static shapes) are
  raised while tracing, with their own type (autograph puts the traced call stack before
  the message);
* XLA (``jit_compile=True``) cannot compile Python code: the op raises
  :class:`XLAUnsupportedError` when it is traced there, and the Keras layer declares
  ``supports_jit = False``, so that Keras trains such a model without XLA by itself.

Limitations: no second-order gradients. A model holding the layer saves to ``.keras`` (the
layer is rebuilt from its config), but a SavedModel (``model.export``) does not carry the
``py_function``'s Python code: served from another process it fails with "Could not find
callback".

Precision: float32 and float64 are solved natively; float16/bfloat16 (for example under the
``mixed_float16`` policy) are solved in float32 and returned in their own dtype.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.framework import ops
from tensorflow.python.ops import control_flow_util

from lowrank_gcrf.adapters.bridge import (
    CoreSolve,
    SignedStack,
    check_lam,
    check_solver_kwargs,
    layer_settings,
    signed_stack,
    softplus_inverse,
    solve_dtype_names,
    to_core,
)
from lowrank_gcrf.adapters.heads import head_sizes
from lowrank_gcrf.adapters.layout import (
    EMBEDDING_CHANNELS,
    SPATIAL_NAMES,
    embeddings_layout,
    layer_shapes,
    layout,
    repulsive_channels,
    spatial_rank,
)
from lowrank_gcrf.dtypes import overflow_message
from lowrank_gcrf.errors import GCRFError
from lowrank_gcrf.options import SolverOptions

__all__ = [
    "DenseGCRF",
    "GCRFHead",
    "XLAUnsupportedError",
    "gcrf_solve",
    "pd_scaled",
    "potts_solve",
    "refine",
    "signed_solve",
]

# TensorFlow's CPU kernels assume 64-byte aligned buffers (EIGEN_MAX_ALIGN_BYTES).
_TF_ALIGNMENT = 64


class XLAUnsupportedError(GCRFError):
    """The G-CRF op was traced inside an XLA-compiled function (``jit_compile=True``)."""


# -- DLPack ------------------------------------------------------------------------------------


class _Export:
    """A tensor's DLPack export that ignores the consumer's stream: CuPy passes one, which
    TensorFlow refuses (the device was synchronised instead, see :func:`_to_core`)."""

    def __init__(self, tensor: tf.Tensor):
        self.tensor = tensor

    def __dlpack__(self, **_: Any) -> Any:
        return tf.experimental.dlpack.to_dlpack(self.tensor)

    def __dlpack_device__(self) -> tuple[int, int]:
        return self.tensor.__dlpack_device__()


def _to_core(tensor: tf.Tensor) -> Any:
    """A NumPy (CPU) or CuPy (CUDA) view of an eager tensor."""
    if "GPU" in tensor.device:
        # TensorFlow's GPU kernels run on its own streams, which it does not expose.
        with tf.device(tensor.device):
            tf.raw_ops.SyncDevice()
    return to_core(_Export(tensor))


def _from_core(array: Any) -> tf.Tensor:
    """A tensor of a core result, sharing its buffer where TensorFlow can use it as is."""
    if not isinstance(array, np.ndarray):
        _synchronize_cupy()
    elif array.ctypes.data % _TF_ALIGNMENT or not (
        array.flags.c_contiguous and array.flags.writeable  # NumPy exports no read-only array
    ):
        return tf.convert_to_tensor(array)
    return tf.experimental.dlpack.from_dlpack(array.__dlpack__())


def _synchronize_cupy() -> None:
    """Wait for the core's CuPy work: TensorFlow's streams do not wait for CuPy's."""
    import cupy

    cupy.cuda.get_current_stream().synchronize()


# -- the op ------------------------------------------------------------------------------------


def _reject_xla() -> None:
    if control_flow_util.GraphOrParentsInXlaContext(ops.get_default_graph()):
        raise XLAUnsupportedError(
            "the lowrank-gcrf solve runs NumPy/CuPy code (through tf.py_function), which XLA "
            "cannot compile: call it outside jit_compile=True functions — use "
            "tf.function(jit_compile=False), or model.compile(jit_compile=False)"
        )


def _core_solve(
    model: str, options: SolverOptions, U: tf.Tensor, b: tf.Tensor, lam: tf.Tensor
) -> CoreSolve:
    return CoreSolve(model, _to_core(U), _to_core(b), _to_core(lam), options)


def _eager_solve(
    model: str, options: SolverOptions, U: tf.Tensor, b: tf.Tensor, lam: tf.Tensor
) -> tuple[tf.Tensor, Callable]:
    core = _core_solve(model, options, U, b, lam)

    def grad(gx: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        g_u, g_b, g_lam = (_from_core(g) for g in core.backward(_to_core(gx)))
        return g_u, g_b, g_lam

    return _from_core(core.x), grad


class _PendingSolves:
    """The forward solves of one graph-mode op that wait for their backward pass.

    In a graph the forward and the backward are separate ``py_function`` calls, so the
    forward's :class:`CoreSolve` (with its factorization) is handed over here, keyed by a
    token that the forward outputs and the backward takes as an input. Nothing is kept
    until TensorFlow has built the op's gradient (so inference graphs keep nothing), and at
    most ``capacity`` solves are kept: a forward whose backward never runs cannot pin its
    memory for long, and a backward that finds nothing refactorizes.
    """

    capacity = 4
    _tokens = itertools.count(1)

    def __init__(self) -> None:
        self.wanted = False
        self._solves: OrderedDict[int, CoreSolve] = OrderedDict()
        self._lock = threading.Lock()  # replicas of MirroredStrategy run in threads

    def put(self, core: CoreSolve) -> np.int64:
        """Keep ``core`` for the backward pass; the token to find it with (0: not kept)."""
        if not self.wanted:
            return np.int64(0)
        token = next(self._tokens)
        with self._lock:
            self._solves[token] = core
            while len(self._solves) > self.capacity:
                self._solves.popitem(last=False)
        return np.int64(token)

    def pop(self, token: int) -> CoreSolve | None:
        with self._lock:
            return self._solves.pop(token, None)


def _graph_solve(
    model: str, options: SolverOptions, U: tf.Tensor, b: tf.Tensor, lam: tf.Tensor
) -> tuple[tf.Tensor, Callable]:
    pending = _PendingSolves()

    def forward(U_: tf.Tensor, b_: tf.Tensor, lam_: tf.Tensor) -> tuple[tf.Tensor, np.int64]:
        core = _core_solve(model, options, U_, b_, lam_)
        return _from_core(core.x), pending.put(core)

    # Gradients reach the inputs through grad() only: TensorFlow would otherwise also
    # differentiate the py_function itself (its own tape-based rule, wrong here) whenever it
    # takes gradients of the function's intermediates (nested tapes, tf.test.compute_gradient).
    x, token = (
        tf.stop_gradient(t) for t in tf.py_function(forward, [U, b, lam], [U.dtype, tf.int64])
    )
    x.set_shape(b.shape)

    def backward(U_: tf.Tensor, x_: tf.Tensor, gx: tf.Tensor, lam_: tf.Tensor, token_: tf.Tensor):
        core = pending.pop(int(token_))
        if core is None:
            core = CoreSolve.from_solution(
                model, _to_core(U_), _to_core(x_), _to_core(lam_), options
            )
        return [_from_core(g) for g in core.backward(_to_core(gx))]

    def grad(gx: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        # Called while TensorFlow builds the gradient graph, as a rule before the forward
        # first runs (else the first backward passes refactorize).
        pending.wanted = True
        g_u, g_b, g_lam = tf.py_function(backward, [U, x, gx, lam, token], [U.dtype] * 3)
        g_u.set_shape(U.shape)
        g_b.set_shape(b.shape)
        g_lam.set_shape(lam.shape)
        return g_u, g_b, g_lam

    return x, grad


def _solve(
    model: str | SignedStack, embeddings: Any, b: Any, lam: Any, options: SolverOptions
) -> tf.Tensor:
    _reject_xla()
    # Before any cast (a complex λ would lose its imaginary part), and while tracing, so that
    # graph mode reports a bad float λ with its own type.
    check_lam(lam)
    embeddings, b = tf.convert_to_tensor(embeddings), tf.convert_to_tensor(b)
    compute, output = (tf.as_dtype(n) for n in solve_dtype_names(embeddings.dtype, b.dtype))
    # dtype_hint: a Python float λ becomes a float64 tensor exactly when solving in float64.
    lam = tf.cast(tf.convert_to_tensor(lam, dtype_hint=compute), compute)

    @tf.custom_gradient
    def solve(U: tf.Tensor, b_: tf.Tensor, lam_: tf.Tensor) -> tuple[tf.Tensor, Callable]:
        run = _eager_solve if tf.executing_eagerly() else _graph_solve
        return run(model, options, U, b_, lam_)

    x = tf.cast(solve(tf.cast(embeddings, compute), tf.cast(b, compute), lam), output)
    return x if output == compute else _checked_fit(x)


def _checked_fit(x: tf.Tensor) -> tf.Tensor:
    """``x`` after its cast to half precision, with the core's error where it overflowed."""
    message = overflow_message(x.dtype.name, "x")
    if tf.executing_eagerly():
        if not bool(tf.reduce_all(tf.math.is_finite(x))):
            raise GCRFError(message)
        return x
    return tf.debugging.assert_all_finite(x, message)


def gcrf_solve(A: Any, b: Any, lam: Any, **solver_kwargs: Any) -> tf.Tensor:
    """Solve the general dense G-CRF ``(AᵀA + λI) x = b``, differentiably.

    Parameters
    ----------
    A : Tensor (..., D, N)
        Embeddings of the N = L·P variables, label-major (n = l·P + p).
    b : Tensor (..., N)
        Unary scores; leading batch dimensions equal A's.
    lam : float or Tensor
        λ > 0: a float, a 0-d tensor or a tensor of the batch shape (...,); a tensor (or
        variable) receives ``∂L/∂λ`` (summed over the batch for a 0-d λ).
    **solver_kwargs
        ``method`` ("auto", "cg", "direct"), ``rtol``, ``atol``, ``maxiter``, as for
        :func:`lowrank_gcrf.solve`; used by the forward and the backward solve.

    Returns
    -------
    Tensor (..., N)
        x, in the promoted dtype of A and b.

    Raises
    ------
    lowrank_gcrf.GCRFError
        The core's errors: with their own type eagerly, as ``tf.errors.InvalidArgumentError``
        with the core's message inside ``tf.function``; :class:`XLAUnsupportedError` under
        ``jit_compile=True``.

    Examples
    --------
    >>> import tensorflow as tf
    >>> from lowrank_gcrf.adapters.tensorflow import gcrf_solve
    >>> A = tf.random.normal((4, 30)) / 4
    >>> b = tf.random.normal((30,))
    >>> with tf.GradientTape() as tape:
    ...     tape.watch(A)
    ...     loss = tf.reduce_sum(gcrf_solve(A, b, 1.0))
    >>> tape.gradient(loss, A).shape
    TensorShape([4, 30])
    """
    return _solve("general", A, b, lam, check_solver_kwargs(solver_kwargs))


def potts_solve(Ahat: Any, b: Any, lam: Any, **solver_kwargs: Any) -> tf.Tensor:
    """Solve the Potts dense G-CRF ``(λI + (J − I) ⊗ ÂᵀÂ) x = b``, differentiably.

    Parameters
    ----------
    Ahat : Tensor (..., D, P)
        One embedding per pixel, shared by the L labels.
    b : Tensor (..., L, P)
        Unary scores; leading batch dimensions equal Ahat's.
    lam : float or Tensor
        λ > ‖Â‖₂² (else :class:`lowrank_gcrf.IndefiniteSystemError`): a float, a 0-d tensor
        or a tensor of the batch shape; a tensor (or variable) receives ``∂L/∂λ``.
    **solver_kwargs
        ``method``, ``rtol``, ``atol``, ``maxiter``, as for :func:`lowrank_gcrf.solve_potts`.

    Returns
    -------
    Tensor (..., L, P)
        x, in the promoted dtype of Ahat and b.

    Raises
    ------
    lowrank_gcrf.GCRFError
        As for :func:`gcrf_solve`.

    Examples
    --------
    >>> import tensorflow as tf
    >>> from lowrank_gcrf.adapters.tensorflow import potts_solve
    >>> Ahat = tf.random.normal((4, 20)) / 10
    >>> potts_solve(Ahat, tf.random.normal((3, 20)), 1.0).shape
    TensorShape([3, 20])
    """
    return _solve("potts", Ahat, b, lam, check_solver_kwargs(solver_kwargs))


def signed_solve(A: Any, Gamma: Any, b: Any, lam: Any, **solver_kwargs: Any) -> tf.Tensor:
    """Solve the signed dense G-CRF ``(λI + AᵀA − ΓᵀΓ) x = b``, differentiably.

    Parameters
    ----------
    A : Tensor (..., D, N) or None
        Repulsive embeddings of the N = L·P variables, label-major (n = l·P + p).
    Gamma : Tensor (..., E, N) or None
        Attractive embeddings; not both None. An absent factor gets no gradient.
    b : Tensor (..., N)
    lam : float or Tensor
        λ > 0 with M positive definite (``λ > ‖Γ‖₂²`` suffices; otherwise
        :class:`lowrank_gcrf.IndefiniteSystemError`).
    **solver_kwargs
        As for :func:`lowrank_gcrf.solve_signed`.

    Returns
    -------
    Tensor (..., N)
        x, in the promoted dtype of A, Gamma and b.

    Raises
    ------
    lowrank_gcrf.GCRFError
        As for :func:`gcrf_solve`.

    Examples
    --------
    >>> import tensorflow as tf
    >>> from lowrank_gcrf.adapters.tensorflow import signed_solve
    >>> A, Gamma = tf.random.normal((4, 30)) / 4, tf.random.normal((2, 30)) / 10
    >>> signed_solve(A, Gamma, tf.random.normal((30,)), 1.0).shape
    TensorShape([30])
    """
    A, Gamma = (None if t is None else tf.convert_to_tensor(t) for t in (A, Gamma))
    # Static shapes: D must be known while tracing (it splits the stacked gradient).
    stack = signed_stack(*(None if t is None else t.shape.as_list() for t in (A, Gamma)))
    parts = [t for t in (A, Gamma) if t is not None]
    if len(parts) == 2:
        _, common = solve_dtype_names(parts[0].dtype, parts[1].dtype)
        parts = [tf.cast(t, common) for t in parts]
    # One tensor carries both factors: the gradient of tf.concat splits between them.
    U = parts[0] if len(parts) == 1 else tf.concat(parts, axis=-2)
    return _solve(stack, U, b, lam, check_solver_kwargs(solver_kwargs))


# -- the Keras layer ---------------------------------------------------------------------------


def pd_scaled(Ahat: tf.Tensor, lam: Any, bound: float) -> tf.Tensor:
    """Â rescaled, differentiably, so that ``‖Â‖₂² ≤ bound·λ`` (the Potts condition with margin).

    As :func:`lowrank_gcrf.adapters.torch.pd_scaled`: the exact ``‖Â‖₂²`` from the D×D Gram
    (``eigvalsh`` in float64), factor ``sqrt(bound·λ / max(‖Â‖₂², bound·λ))``.

    Examples
    --------
    >>> import numpy as np
    >>> import tensorflow as tf
    >>> from lowrank_gcrf.adapters.tensorflow import pd_scaled
    >>> Ahat = pd_scaled(tf.random.normal((4, 20)), 1.0, 0.9)
    >>> bool(np.linalg.norm(Ahat.numpy(), 2) ** 2 <= 0.9 + 1e-5)
    True
    """
    wide = tf.cast(Ahat, tf.float64)  # a half-precision or huge float32 Gram would overflow
    gram = tf.matmul(wide, wide, transpose_b=True)
    mu = tf.linalg.eigvalsh(gram)[..., -1]
    target = bound * tf.cast(lam, tf.float64)
    factor = tf.sqrt(target / tf.maximum(mu, target))
    return Ahat * tf.cast(factor, Ahat.dtype)[..., None, None]


def _paired_axes(model: str, rank: int) -> list[tuple[int, int]]:
    """(unary axis, embeddings axis) pairs that must have one size: B, (L), the spatial axes."""
    channels = len(EMBEDDING_CHANNELS[model])
    pairs = [(0, 0)] + [(2 + i, 1 + channels + i) for i in range(rank)]
    return pairs + ([(1, 2)] if model != "potts" else [])


def _check_static_layout(unary_shape: Any, embeddings_shape: Any, model: str) -> list:
    """Check the layer's static (channels-first) shapes; the axis pairs left to check when the
    graph runs.

    A size unknown on one side takes the other side's, so that :func:`layer_shapes` checks
    all that is known while tracing.
    """
    unary_shape, embeddings_shape = tf.TensorShape(unary_shape), tf.TensorShape(embeddings_shape)
    if unary_shape.rank is None or embeddings_shape.rank is None:
        raise GCRFError(
            "DenseGCRF needs unary and embeddings of known rank (give tf.function an "
            "input_signature with their ranks)"
        )
    u, e = unary_shape.as_list(), embeddings_shape.as_list()
    rank = spatial_rank(len(u))
    if len(e) != 1 + len(EMBEDDING_CHANNELS[model]) + rank:
        layer_shapes(_fill(u), _fill(e), model)  # raises the error that names the layout
    pairs = _paired_axes(model, rank)
    unknown = [(i, j) for i, j in pairs if u[i] is None or e[j] is None]
    for i, j in unknown:
        u[i] = e[j] = e[j] if u[i] is None else u[i]
    layer_shapes(_fill(u), _fill(e), model)
    return unknown


def _fill(dims: list) -> tuple[int, ...]:
    # Any size stands for a dimension unknown on both sides.
    return tuple(1 if d is None else d for d in dims)


def _dims(t: tf.Tensor) -> list:
    """The shape of ``t``: static sizes where known, scalar tensors elsewhere."""
    if t.shape.is_fully_defined():
        return t.shape.as_list()
    dynamic = tf.shape(t)
    return [dynamic[i] if d is None else d for i, d in enumerate(t.shape)]


def _core_layout(
    unary: tf.Tensor, embeddings: tf.Tensor, model: str
) -> tuple[tf.Tensor, tf.Tensor]:
    """(b, A): the layer's channels-first inputs as the core's right-hand sides and embeddings.

    Label-major over row-major pixels, so both are reshapes without a copy.
    """
    unknown = _check_static_layout(unary.shape, embeddings.shape, model)
    checks = []
    if unknown:
        u_axes, e_axes = zip(*unknown, strict=True)
        rank = spatial_rank(unary.shape.rank)
        checks.append(
            tf.debugging.assert_equal(
                tf.gather(tf.shape(unary), u_axes),
                tf.gather(tf.shape(embeddings), e_axes),
                message="DenseGCRF: embeddings do not match unary (B, L, *spatial): expected "
                + embeddings_layout(model, rank),
            )
        )
    u, e = _dims(unary), _dims(embeddings)
    with tf.control_dependencies(checks):
        b = tf.reshape(unary, [u[0], u[1], -1] if model == "potts" else [u[0], -1])
        return b, tf.reshape(embeddings, [e[0], e[1], -1])


def _to_channels_first(t: tf.Tensor, channels: int) -> tf.Tensor:
    """(B, *spatial, *channels) → (B, *channels, *spatial)."""
    rank = t.shape.rank
    spatial = list(range(1, rank - channels))
    return tf.transpose(t, [0, *range(rank - channels, rank), *spatial])


def _first_order(shape: tf.TensorShape, channels: int) -> list:
    """A static shape (B, *spatial, *channels) in the order (B, *channels, *spatial)."""
    dims = shape.as_list()
    return [dims[0], *dims[len(dims) - channels :], *dims[1 : len(dims) - channels]]


def _to_channels_last(t: tf.Tensor) -> tf.Tensor:
    """(B, L, *spatial) → (B, *spatial, L)."""
    return tf.transpose(t, [0, *range(2, t.shape.rank), 1])


@keras.saving.register_keras_serializable(package="lowrank_gcrf")
class DenseGCRF(keras.layers.Layer):
    """The dense low-rank G-CRF as a Keras 3 layer: unary scores and embeddings in, MAP
    scores out.

    Parameters
    ----------
    lam, model, potts, learn_lam, pd_bound, method, rtol, atol, maxiter, on_failure
    attractive_dim
        As for :class:`lowrank_gcrf.adapters.torch.DenseGCRF` (the same signature and
        defaults): λ, the model name (``potts=True`` is an alias of ``model="potts"``), a
        learnt λ, the positive-definiteness bound of the Potts and signed layers, the solver
        and its tolerances, the failure policy, and the signed model's number E of
        attractive (trailing) embedding channels.
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
    convolutional models). The layer cannot be XLA-compiled (``supports_jit = False``); λ
    stays float32 under a mixed-precision policy.

    Examples
    --------
    >>> import tensorflow as tf
    >>> from lowrank_gcrf.adapters.tensorflow import DenseGCRF
    >>> crf = DenseGCRF(lam=1.0, model="potts", data_format="channels_last")
    >>> unary = tf.random.normal((2, 8, 8, 3))          # (B, H, W, L)
    >>> embeddings = tf.random.normal((2, 8, 8, 4))     # (B, H, W, D)
    >>> crf(unary, embeddings).shape
    TensorShape([2, 8, 8, 3])
    """

    def __init__(
        self,
        lam: float = 1.0,
        model: str | None = None,
        *,
        potts: bool | None = None,
        learn_lam: bool = False,
        pd_bound: float | None = 0.9,
        method: str = "auto",
        rtol: float | None = None,
        atol: float = 0.0,
        maxiter: int | None = None,
        on_failure: str = "warn",
        data_format: str | None = None,
        attractive_dim: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.settings = layer_settings(
            lam,
            model,
            potts=potts,
            learn_lam=learn_lam,
            pd_bound=pd_bound,
            method=method,
            rtol=rtol,
            atol=atol,
            maxiter=maxiter,
            on_failure=on_failure,
            attractive_dim=attractive_dim,
        )
        self.data_format = data_format or keras.config.image_data_format()
        if self.data_format not in ("channels_last", "channels_first"):
            raise GCRFError(
                f"data_format must be 'channels_last' or 'channels_first', got {self.data_format!r}"
            )
        # Keras then compiles models holding the layer without XLA (auto or with a warning).
        self.supports_jit = False
        self.raw_lam = None
        if self.settings.learn_lam:
            self.raw_lam = self.add_weight(
                name="raw_lam",
                shape=(),
                initializer=keras.initializers.Constant(softplus_inverse(self.settings.lam)),
                dtype="float32",
                # the solve runs in float32 anyway: a float16 λ would only lose digits
                autocast=False,
            )

    @property
    def model(self) -> str:
        """The model name."""
        return self.settings.model

    @property
    def potts(self) -> bool:
        """Whether the model is Potts (the ``potts=`` alias, read back)."""
        return self.settings.model == "potts"

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
            _check_static_layout(unary_shape, embeddings_shape, self.model)
            return
        channels = len(EMBEDDING_CHANNELS[self.model])
        try:
            _check_static_layout(
                _first_order(unary_shape, 1), _first_order(embeddings_shape, channels), self.model
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
        channels = len(EMBEDDING_CHANNELS[self.model])
        return _to_channels_first(unary, 1), _to_channels_first(embeddings, channels)

    def call(self, unary: tf.Tensor, embeddings: tf.Tensor) -> tf.Tensor:
        """MAP scores of the G-CRF, shaped like ``unary``."""
        unary = tf.convert_to_tensor(unary)
        embeddings = tf.convert_to_tensor(embeddings)
        first_unary, first_embeddings = self._channels_first(unary, embeddings)
        b, A = _core_layout(first_unary, first_embeddings, self.model)
        lam = self.lam
        model: str | SignedStack = self.model
        bound = self.settings.pd_bound
        if model == "potts" and bound is not None:
            A = pd_scaled(A, lam, bound)
        elif model == "signed":
            d = repulsive_channels(A.shape[1], self.settings.attractive_dim)
            model = SignedStack(d)
            if bound is not None:
                A = tf.concat([A[:, :d], pd_scaled(A[:, d:], lam, bound)], axis=1)
        compute, _ = solve_dtype_names(A.dtype, b.dtype)
        x = _solve(model, A, b, lam, self.settings.options(compute))
        x = tf.reshape(x, _dims(first_unary))
        return x if self.data_format == "channels_first" else _to_channels_last(x)

    def compute_output_shape(self, unary_shape: Any, embeddings_shape: Any) -> tuple:
        self._check_layout(unary_shape, embeddings_shape)
        return tuple(unary_shape)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(self.settings.config(), data_format=self.data_format)
        return config


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
    model : {"potts", "general"}, default "potts"
        Potts: one embedding per pixel, shared by the labels (D channels); general: one per
        pixel and label (D·L channels, reshaped to (B, *spatial, D, L) channels last).
    lam : float, default 1.0
        Initial λ.
    learn_lam : bool, default True
        λ is a weight of the head; with Potts the bound on the embeddings follows it.
    pd_bound, method, rtol, atol, maxiter, on_failure
        As for :class:`DenseGCRF`: the Potts head rescales the embeddings so that
        ``‖Â‖₂² ≤ pd_bound·λ`` and trains on raw convolution outputs.
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
        learn_lam: bool = True,
        pd_bound: float | None = 0.9,
        method: str = "auto",
        rtol: float | None = None,
        atol: float = 0.0,
        maxiter: int | None = None,
        on_failure: str = "warn",
        data_format: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.sizes = head_sizes(num_labels, embed_dim, model)
        self.crf = DenseGCRF(
            lam,
            model,
            learn_lam=learn_lam,
            pd_bound=pd_bound,
            method=method,
            rtol=rtol,
            atol=atol,
            maxiter=maxiter,
            on_failure=on_failure,
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
        """The embedding branch's output, (B, D, L) channels for the general model."""
        embeddings = self.embed(features)
        if self.sizes.model == "potts":
            return embeddings
        d = _dims(embeddings)
        pair = [self.sizes.embed_dim, self.sizes.num_labels]
        if self.data_format == "channels_last":
            return tf.reshape(embeddings, [*d[:-1], *pair])
        return tf.reshape(embeddings, [d[0], *pair, *d[2:]])

    def call(self, features: tf.Tensor) -> tf.Tensor:
        """MAP scores of the G-CRF on ``features``."""
        features = tf.convert_to_tensor(features)
        return self.crf(self.unary(features), self._embeddings(features))

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


# -- refine: class probabilities refined with the image (lowrank_gcrf.refine) -------------------


def refine(
    probs: Any,
    image: Any,
    *,
    logits: bool = False,
    spatial_dims: int = 2,
    method: str = "direct",
    **parameters: Any,
) -> tf.Tensor:
    """:func:`lowrank_gcrf.refine` on tensors, differentiable with respect to ``probs``.

    The embeddings Â come from the image through the core, without gradient (the image is
    data): directly in eager mode, through ``tf.py_function`` in a graph (the static shape
    is restored). The solve is :func:`potts_solve`, so ``∂L/∂probs`` flows through the
    exact Potts solve and the softmax.

    Parameters
    ----------
    probs : Tensor (..., L, *spatial)
        Class probabilities, or scores with ``logits=True``; a static rank is needed.
    image : Tensor (..., C, *spatial)
        uint8, or floating on the 0–255 scale; the batch and spatial shape of ``probs``.
    logits, spatial_dims, method
        As for :func:`lowrank_gcrf.refine`.
    **parameters
        Its kernel, approximation and strength keywords (``sxy``, ``srgb``, ``sxy_smooth``,
        ``w_appearance``, ``w_smooth``, ``strength``, ``rank``, ``landmarks``, ``seed``,
        ``lam``, ``approximation``, ``normalization``).

    Returns
    -------
    Tensor like ``probs``
        Refined probabilities, ``softmax`` of the Potts MAP scores over the label axis.

    Examples
    --------
    >>> import tensorflow as tf
    >>> from lowrank_gcrf.adapters.tensorflow import refine
    >>> probs = tf.nn.softmax(tf.random.normal((4, 32, 32)), axis=0)            # (L, H, W)
    >>> image = tf.random.uniform((3, 32, 32), maxval=256, dtype=tf.int32)
    >>> refine(probs, tf.cast(image, tf.uint8)).shape
    TensorShape([4, 32, 32])
    """
    from lowrank_gcrf.refine import (
        PROB_FLOOR,
        SOLVE_RTOL,
        RefineParameters,
        check_refine_inputs,
        refine_embeddings,
    )

    params = RefineParameters(**parameters)
    probs, image = tf.convert_to_tensor(probs), tf.convert_to_tensor(image)
    compute = tf.float64 if probs.dtype == tf.float64 else tf.float32

    def embeddings(p: tf.Tensor, i: tf.Tensor) -> Any:
        core_probs, core_image = _to_core(p), _to_core(i)
        shape = check_refine_inputs(
            core_probs, core_image, spatial_dims=spatial_dims, logits=logits
        )
        return _from_core(
            refine_embeddings(core_image, params, spatial_dims=spatial_dims, dtype=shape.compute)
        )

    if tf.executing_eagerly():
        Ahat = embeddings(probs, image)
    else:
        Ahat = tf.stop_gradient(tf.py_function(embeddings, [probs, image], compute))
    rank = probs.shape.rank
    n = tf.reduce_prod(tf.shape(probs)[: rank - spatial_dims - 1])
    pixels = tf.reduce_prod(tf.shape(probs)[rank - spatial_dims :])
    Ahat = tf.reshape(Ahat, tf.stack([n, params.rank, pixels]))
    scores = tf.cast(probs, compute)
    if not logits:
        scores = tf.math.log(tf.maximum(scores, tf.constant(PROB_FLOOR, compute)))
    b = tf.reshape(scores, tf.stack([n, tf.shape(probs)[rank - spatial_dims - 1], pixels]))
    x = potts_solve(Ahat, b, params.lam, method=method, rtol=SOLVE_RTOL)
    return tf.cast(tf.reshape(tf.nn.softmax(x, axis=1), tf.shape(probs)), probs.dtype)
