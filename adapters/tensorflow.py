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
    check_scalar_lam,
    check_solver_kwargs,
    make_operator,
    softplus_inverse,
    to_core,
)
from lowrank_gcrf.adapters.layout import layer_shapes
from lowrank_gcrf.errors import GCRFError, GCRFTypeError

__all__ = ["DenseGCRF", "XLAUnsupportedError", "gcrf_solve", "potts_solve"]

_HALF_PRECISION = (tf.float16, tf.bfloat16)

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


def _dtypes(embeddings: tf.Tensor, b: tf.Tensor) -> tuple[tf.DType, tf.DType]:
    """(compute, output) dtypes, as in the core: half precision is solved in float32 and
    returned as is; mixed dtypes promote (float16 with bfloat16 to float32)."""
    for name, t in (("embeddings", embeddings), ("b", b)):
        if not t.dtype.is_floating:
            raise GCRFTypeError(
                f"{name} has dtype {t.dtype.name}; lowrank-gcrf needs floating tensors "
                "(float16, bfloat16, float32 or float64): cast it, e.g. tf.cast(x, tf.float32)"
            )
    if embeddings.dtype == b.dtype:
        output = embeddings.dtype
    else:
        widest = max((embeddings.dtype, b.dtype), key=lambda d: d.size)
        output = tf.float32 if widest in _HALF_PRECISION else widest
    return (tf.float32 if output in _HALF_PRECISION else output), output


def _lam_grad(g_lam: tf.Tensor, lam: tf.Tensor) -> tf.Tensor:
    # A 0-d λ is shared by every system of the batch.
    return tf.reduce_sum(g_lam) if lam.shape.rank == 0 else g_lam


def _core_solve(potts: bool, kwargs: dict, U: tf.Tensor, b: tf.Tensor, lam: tf.Tensor) -> CoreSolve:
    return CoreSolve(potts, _to_core(U), _to_core(b), _to_core(lam), kwargs)


def _eager_solve(
    potts: bool, kwargs: dict, U: tf.Tensor, b: tf.Tensor, lam: tf.Tensor
) -> tuple[tf.Tensor, Callable]:
    core = _core_solve(potts, kwargs, U, b, lam)

    def grad(gx: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        g_u, g_b, g_lam = (_from_core(g) for g in core.backward(_to_core(gx)))
        return g_u, g_b, _lam_grad(g_lam, lam)

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
    potts: bool, kwargs: dict, U: tf.Tensor, b: tf.Tensor, lam: tf.Tensor
) -> tuple[tf.Tensor, Callable]:
    pending = _PendingSolves()

    def forward(U_: tf.Tensor, b_: tf.Tensor, lam_: tf.Tensor) -> tuple[tf.Tensor, np.int64]:
        core = _core_solve(potts, kwargs, U_, b_, lam_)
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
        if core is not None:
            grads = core.backward(_to_core(gx))
        else:
            x_core = _to_core(x_)
            operator = make_operator(potts, _to_core(U_), _to_core(lam_), x_core)
            grads = operator.vjp(x_core, _to_core(gx), **kwargs)[:3]
        return [_from_core(g) for g in grads]

    def grad(gx: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        # Called while TensorFlow builds the gradient graph, as a rule before the forward
        # first runs (else the first backward passes refactorize).
        pending.wanted = True
        g_u, g_b, g_lam = tf.py_function(backward, [U, x, gx, lam, token], [U.dtype] * 3)
        g_u.set_shape(U.shape)
        g_b.set_shape(b.shape)
        g_lam.set_shape(b.shape[: -2 if potts else -1])
        return g_u, g_b, _lam_grad(g_lam, lam)

    return x, grad


def _solve(potts: bool, embeddings: Any, b: Any, lam: Any, solver_kwargs: dict) -> tf.Tensor:
    kwargs = check_solver_kwargs(solver_kwargs)
    _reject_xla()
    if isinstance(lam, (int, float)):
        check_scalar_lam(lam)  # so that graph mode reports a bad float λ while tracing, typed
    embeddings, b = tf.convert_to_tensor(embeddings), tf.convert_to_tensor(b)
    compute, output = _dtypes(embeddings, b)
    # dtype_hint: a Python float λ becomes a float64 tensor exactly when solving in float64.
    lam = tf.cast(tf.convert_to_tensor(lam, dtype_hint=compute), compute)

    @tf.custom_gradient
    def solve(U: tf.Tensor, b_: tf.Tensor, lam_: tf.Tensor) -> tuple[tf.Tensor, Callable]:
        run = _eager_solve if tf.executing_eagerly() else _graph_solve
        return run(potts, kwargs, U, b_, lam_)

    return tf.cast(solve(tf.cast(embeddings, compute), tf.cast(b, compute), lam), output)


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
    """
    return _solve(False, A, b, lam, solver_kwargs)


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
    """
    return _solve(True, Ahat, b, lam, solver_kwargs)


# -- the Keras layer ---------------------------------------------------------------------------


def _paired_axes(potts: bool) -> tuple[tuple[int, int], ...]:
    """(unary axis, embeddings axis) pairs that must have one size: B, H, W (and L)."""
    return ((0, 0), (2, 2), (3, 3)) if potts else ((0, 0), (1, 2), (2, 3), (3, 4))


def _check_static_layout(
    unary_shape: Any, embeddings_shape: Any, potts: bool
) -> list[tuple[int, int]]:
    """Check the layer's static shapes; the axis pairs left to check when the graph runs.

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
    if (len(u), len(e)) != (4, 4 if potts else 5):
        layer_shapes(u, e, potts)  # raises the error that names the expected layout
    unknown = [(i, j) for i, j in _paired_axes(potts) if u[i] is None or e[j] is None]
    for i, j in unknown:
        u[i] = e[j] = e[j] if u[i] is None else u[i]
    layer_shapes(_fill(u), _fill(e), potts)
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
    unary: tf.Tensor, embeddings: tf.Tensor, potts: bool
) -> tuple[tf.Tensor, tf.Tensor]:
    """(b, A): the layer's inputs as the core's right-hand sides and embeddings.

    Label-major over row-major pixels, so both are reshapes without a copy.
    """
    unknown = _check_static_layout(unary.shape, embeddings.shape, potts)
    checks = []
    if unknown:
        u_axes, e_axes = zip(*unknown, strict=True)
        checks.append(
            tf.debugging.assert_equal(
                tf.gather(tf.shape(unary), u_axes),
                tf.gather(tf.shape(embeddings), e_axes),
                message="DenseGCRF: embeddings do not match unary (B, L, H, W): expected "
                + ("(B, D, H, W) for potts=True" if potts else "(B, D, L, H, W) for potts=False"),
            )
        )
    u, e = _dims(unary), _dims(embeddings)
    with tf.control_dependencies(checks):
        b = tf.reshape(unary, [u[0], u[1], -1] if potts else [u[0], -1])
        return b, tf.reshape(embeddings, [e[0], e[1], -1])


@keras.saving.register_keras_serializable(package="lowrank_gcrf")
class DenseGCRF(keras.layers.Layer):
    """The dense low-rank G-CRF as a Keras 3 layer: unary scores and embeddings in, MAP
    scores out.

    Parameters
    ----------
    lam : float, default 1.0
        λ > 0; the Potts model needs λ > ‖Â‖₂² (normalise the embeddings, e.g. unit vectors
        scaled by ``c / sqrt(H·W)`` with c² < λ).
    potts : bool, default False
        Potts model (one embedding per pixel) or general (one per pixel and label).
    method : {"auto", "cg", "direct"}, default "auto"
        Solver for the forward and backward passes.
    learn_lam : bool, default False
        Make λ a weight, kept positive as ``softplus(raw_lam)`` and initialised to ``lam``.
    rtol, atol, maxiter
        Solver tolerances, as for :func:`lowrank_gcrf.solve`.
    **kwargs
        Keras layer arguments (``name``, ``dtype``, ...).

    Notes
    -----
    Channels first, as the PyTorch module: ``layer(unary, embeddings)`` with unary
    (B, L, H, W) and embeddings (B, D, H, W) (Potts) or (B, D, L, H, W) (general); returns
    (B, L, H, W). B, H and W may be unknown while tracing (fully convolutional models). The
    layer cannot be XLA-compiled (``supports_jit = False``); λ stays float32 under a
    mixed-precision policy.
    """

    def __init__(
        self,
        lam: float = 1.0,
        potts: bool = False,
        method: str = "auto",
        learn_lam: bool = False,
        rtol: float = 1e-5,
        atol: float = 0.0,
        maxiter: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        check_scalar_lam(lam)
        self.lam_init = float(lam)
        self.potts = bool(potts)
        self.learn_lam = bool(learn_lam)
        self.solver_kwargs = check_solver_kwargs(
            {"method": method, "rtol": rtol, "atol": atol, "maxiter": maxiter}
        )
        # Keras then compiles models holding the layer without XLA (auto or with a warning).
        self.supports_jit = False
        self.raw_lam = None
        if self.learn_lam:
            self.raw_lam = self.add_weight(
                name="raw_lam",
                shape=(),
                initializer=keras.initializers.Constant(softplus_inverse(self.lam_init)),
                dtype="float32",
                # the solve runs in float32 anyway: a float16 λ would only lose digits
                autocast=False,
            )

    @property
    def lam(self) -> Any:
        """λ: ``softplus(raw_lam)`` when learnt, else the fixed float."""
        if self.raw_lam is not None:
            return tf.nn.softplus(self.raw_lam)
        return self.lam_init

    def call(self, unary: tf.Tensor, embeddings: tf.Tensor) -> tf.Tensor:
        """MAP scores (B, L, H, W) of the G-CRF with the given unaries and embeddings."""
        b, A = _core_layout(unary, embeddings, self.potts)
        x = _solve(self.potts, A, b, self.lam, self.solver_kwargs)
        return tf.reshape(x, _dims(unary))

    def compute_output_shape(self, unary_shape: Any, embeddings_shape: Any) -> tuple:
        _check_static_layout(unary_shape, embeddings_shape, self.potts)
        return tuple(unary_shape)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            lam=self.lam_init, potts=self.potts, learn_lam=self.learn_lam, **self.solver_kwargs
        )
        return config
