"""The core solve as a TensorFlow custom-gradient op, on core-layout tensors.

The op holds no maths of its own: the core computes x and the vector-Jacobian products.

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

import numpy as np
import tensorflow as tf
from tensorflow.python.framework import ops
from tensorflow.python.ops import control_flow_util

from lowrank_gcrf.adapters.bridge import (
    CoreSolve,
    SolveAs,
    check_lam,
    solve_dtype_names,
    to_core,
)
from lowrank_gcrf.dtypes import overflow_message
from lowrank_gcrf.errors import GCRFError
from lowrank_gcrf.options import SolverOptions

# TensorFlow's CPU kernels assume 64-byte aligned buffers (EIGEN_MAX_ALIGN_BYTES).
_TF_ALIGNMENT = 64


class XLAUnsupportedError(GCRFError):
    """The G-CRF op was traced inside an XLA-compiled function (``jit_compile=True``)."""


# -- DLPack ------------------------------------------------------------------------------------


class _Export:
    """A tensor's DLPack export that ignores the consumer's stream: CuPy passes one, which
    TensorFlow refuses (the device was synchronised instead, see :func:`tensor_to_core`)."""

    def __init__(self, tensor: tf.Tensor):
        self.tensor = tensor

    def __dlpack__(self, **_: Any) -> Any:
        return tf.experimental.dlpack.to_dlpack(self.tensor)

    def __dlpack_device__(self) -> tuple[int, int]:
        return self.tensor.__dlpack_device__()


def tensor_to_core(tensor: tf.Tensor) -> Any:
    """A NumPy (CPU) or CuPy (CUDA) view of an eager tensor."""
    if "GPU" in tensor.device:
        # TensorFlow's GPU kernels run on its own streams, which it does not expose.
        with tf.device(tensor.device):
            tf.raw_ops.SyncDevice()
    return to_core(_Export(tensor))


def from_core(array: Any) -> tf.Tensor:
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
    model: SolveAs, options: SolverOptions, U: tf.Tensor, b: tf.Tensor, lam: tf.Tensor
) -> CoreSolve:
    return CoreSolve(model, tensor_to_core(U), tensor_to_core(b), tensor_to_core(lam), options)


def _eager_solve(
    model: SolveAs, options: SolverOptions, U: tf.Tensor, b: tf.Tensor, lam: tf.Tensor
) -> tuple[tf.Tensor, Callable]:
    core = _core_solve(model, options, U, b, lam)

    def grad(gx: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        g_u, g_b, g_lam = (from_core(g) for g in core.backward(tensor_to_core(gx)))
        return g_u, g_b, g_lam

    return from_core(core.x), grad


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
    model: SolveAs, options: SolverOptions, U: tf.Tensor, b: tf.Tensor, lam: tf.Tensor
) -> tuple[tf.Tensor, Callable]:
    pending = _PendingSolves()

    def forward(U_: tf.Tensor, b_: tf.Tensor, lam_: tf.Tensor) -> tuple[tf.Tensor, np.int64]:
        core = _core_solve(model, options, U_, b_, lam_)
        return from_core(core.x), pending.put(core)

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
                model, tensor_to_core(U_), tensor_to_core(x_), tensor_to_core(lam_), options
            )
        return [from_core(g) for g in core.backward(tensor_to_core(gx))]

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


def solve_tensors(
    model: SolveAs,
    embeddings: Any,
    b: Any,
    lam: Any,
    options: SolverOptions,
    dtypes: tuple[tf.DType, tf.DType] | None = None,
) -> tf.Tensor:
    """x of the solve, differentiable in ``embeddings``, ``b`` and a tensor ``lam``.

    ``dtypes`` is :func:`dtype_plan`'s answer where the caller has it already.
    """
    _reject_xla()
    # Before any cast (a complex λ would lose its imaginary part), and while tracing, so that
    # graph mode reports a bad float λ with its own type.
    check_lam(lam)
    embeddings, b = tf.convert_to_tensor(embeddings), tf.convert_to_tensor(b)
    compute, output = dtype_plan(embeddings, b) if dtypes is None else dtypes
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


def dtype_plan(embeddings: tf.Tensor, b: tf.Tensor) -> tuple[tf.DType, tf.DType]:
    """``(compute, output)`` TensorFlow dtypes of a solve (the core's policy, half precision
    computed in float32)."""
    return tuple(tf.as_dtype(n) for n in solve_dtype_names(embeddings.dtype, b.dtype))
