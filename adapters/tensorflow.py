"""TensorFlow adapter: the dense G-CRF solve as a custom-gradient op and a Keras 3 layer.

Tensors reach the core through DLPack without a copy (TensorFlow's eager tensors implement
``__dlpack__``): on CPU the core's NumPy arrays are views of TensorFlow's buffers. Results
come back through ``tf.experimental.dlpack.from_dlpack`` without a copy when TensorFlow can
take the buffer (CUDA memory, or host memory aligned to 64 bytes); a NumPy result that is
only 16-byte aligned is copied, since TensorFlow's CPU kernels abort on misaligned memory.
The adapter holds no maths of its own: the core computes x and the vector-Jacobian products.

Execution modes:

* eager: the core is called directly, core errors propagate with their own type and
  message, and the backward pass reuses the forward's factorization;
* inside ``tf.function`` (including ``model.fit``): the core runs eagerly through
  ``tf.py_function`` and the static shapes are restored; the backward rebuilds the operator
  from the saved inputs (one more factorization for ``method="direct"``), because graph
  mode cannot hold a Python object between the two passes. TensorFlow reports core errors
  raised there as ``tf.errors`` with the core's message in the text;
* XLA (``jit_compile=True``) cannot compile Python code: the op raises
  :class:`XLAUnsupportedError` at tracing time, and the Keras layer declares
  ``supports_jit = False`` so that Keras falls back to plain graph mode by itself.

Precision: float32 and float64 are solved natively; float16/bfloat16 (for example under the
``mixed_float16`` policy) are solved in float32 and returned in their own dtype.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from tensorflow.python.framework import ops
from tensorflow.python.ops import control_flow_util

from lowrank_gcrf.adapters.bridge import CoreSolve, check_solver_kwargs, make_operator, to_core
from lowrank_gcrf.adapters.layout import layer_shapes
from lowrank_gcrf.errors import GCRFError, GCRFTypeError
from lowrank_gcrf.validation import as_lam

__all__ = ["DenseGCRF", "XLAUnsupportedError", "gcrf_solve", "potts_solve"]

_HALF_PRECISION = (tf.float16, tf.bfloat16)


class XLAUnsupportedError(GCRFError):
    """The G-CRF op was traced inside an XLA-compiled function (``jit_compile=True``)."""


# TensorFlow's CPU kernels assume 64-byte aligned buffers (EIGEN_MAX_ALIGN_BYTES) and abort
# the process on a misaligned one; NumPy only guarantees 16 bytes.
_TF_ALIGNMENT = 64


def _from_core(array: Any) -> tf.Tensor:
    """A tensor of a core result: shared by DLPack when TensorFlow can use the buffer as is
    (CUDA memory, or aligned host memory), copied otherwise."""
    if isinstance(array, np.ndarray) and (
        array.ctypes.data % _TF_ALIGNMENT or not array.flags.c_contiguous
    ):
        return tf.convert_to_tensor(array)
    return tf.experimental.dlpack.from_dlpack(array.__dlpack__())


def _reject_xla() -> None:
    if control_flow_util.GraphOrParentsInXlaContext(ops.get_default_graph()):
        raise XLAUnsupportedError(
            "the lowrank-gcrf solve runs NumPy/CuPy code (through tf.py_function), which XLA "
            "cannot compile: call it outside jit_compile=True functions — use "
            "tf.function(jit_compile=False), or model.compile(jit_compile=False)"
        )


def _dtypes(embeddings: tf.Tensor, b: tf.Tensor) -> tuple[tf.DType, tf.DType]:
    """(compute, output) dtypes: half precision is solved in float32, returned as is."""
    for name, t in (("embeddings", embeddings), ("b", b)):
        if not t.dtype.is_floating:
            raise GCRFTypeError(
                f"{name} has dtype {t.dtype.name}; lowrank-gcrf needs floating tensors "
                "(float16, bfloat16, float32 or float64)"
            )
    if embeddings.dtype == b.dtype:
        output = embeddings.dtype
    else:
        sizes = sorted((embeddings.dtype, b.dtype), key=lambda d: d.size)
        output = tf.float32 if sizes[1] in _HALF_PRECISION else sizes[1]
    return (tf.float32 if output in _HALF_PRECISION else output), output


def _lam_grad(g_lam: tf.Tensor, lam: tf.Tensor) -> tf.Tensor:
    # A 0-d λ is shared by every system of the batch.
    return tf.reduce_sum(g_lam) if lam.shape.rank == 0 else g_lam


def _eager_solve(potts: bool, kwargs: dict, U: tf.Tensor, b: tf.Tensor, lam: tf.Tensor):
    core = CoreSolve(potts, to_core(U), to_core(b), to_core(lam), kwargs)

    def grad(gx: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        g_u, g_b, g_lam = (_from_core(g) for g in core.backward(to_core(gx)))
        return g_u, g_b, _lam_grad(g_lam, lam)

    return _from_core(core.x), grad


def _graph_solve(potts: bool, kwargs: dict, U: tf.Tensor, b: tf.Tensor, lam: tf.Tensor):
    def forward(U_: tf.Tensor, b_: tf.Tensor, lam_: tf.Tensor) -> tf.Tensor:
        return _from_core(CoreSolve(potts, to_core(U_), to_core(b_), to_core(lam_), kwargs).x)

    x = tf.py_function(forward, [U, b, lam], U.dtype)
    x.set_shape(b.shape)

    def backward(U_: tf.Tensor, x_: tf.Tensor, gx: tf.Tensor, lam_: tf.Tensor):
        x_core = to_core(x_)
        operator = make_operator(potts, to_core(U_), to_core(lam_), x_core)
        return [_from_core(g) for g in operator.vjp(x_core, to_core(gx), **kwargs)[:3]]

    def grad(gx: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        g_u, g_b, g_lam = tf.py_function(backward, [U, x, gx, lam], [U.dtype] * 3)
        g_u.set_shape(U.shape)
        g_b.set_shape(b.shape)
        g_lam.set_shape(b.shape[: -2 if potts else -1])
        return g_u, g_b, _lam_grad(g_lam, lam)

    return x, grad


def _solve(potts: bool, embeddings: Any, b: Any, lam: Any, solver_kwargs: dict) -> tf.Tensor:
    kwargs = check_solver_kwargs(solver_kwargs)
    _reject_xla()
    embeddings, b = tf.convert_to_tensor(embeddings), tf.convert_to_tensor(b)
    compute, output = _dtypes(embeddings, b)
    lam = tf.cast(tf.convert_to_tensor(lam), compute)

    @tf.custom_gradient
    def solve(U: tf.Tensor, b_: tf.Tensor, lam_: tf.Tensor):
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
        The core's errors (eagerly with their own type); :class:`XLAUnsupportedError`
        under ``jit_compile=True``.
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
        λ > ‖Â‖₂² (else :class:`lowrank_gcrf.IndefiniteSystemError`).
    **solver_kwargs
        ``method``, ``rtol``, ``atol``, ``maxiter``, as for :func:`lowrank_gcrf.solve_potts`.

    Returns
    -------
    Tensor (..., L, P)
        x, in the promoted dtype of Ahat and b.
    """
    return _solve(True, Ahat, b, lam, solver_kwargs)


def _softplus_inverse(value: float) -> float:
    """r with softplus(r) = value > 0, computed without overflow for large values."""
    return value + math.log(-math.expm1(-value))


def _static(shape: Any) -> tuple[int, ...]:
    """A static shape with unknown dimensions (the batch, in graph mode) as -1."""
    return tuple(-1 if d is None else int(d) for d in shape)


@keras.saving.register_keras_serializable(package="lowrank_gcrf")
class DenseGCRF(keras.layers.Layer):
    """The dense low-rank G-CRF as a Keras 3 layer: unary scores and embeddings in, MAP
    scores out.

    Parameters
    ----------
    lam : float, default 1.0
        λ > 0; the Potts model needs λ > ‖Â‖₂² (normalise the embeddings).
    potts : bool, default False
        Potts model (one embedding per pixel) or general (one per pixel and label).
    method : {"auto", "cg", "direct"}, default "auto"
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
    (B, L, H, W). The layer cannot be XLA-compiled (``supports_jit = False``).
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
        as_lam(_numpy_namespace(), lam, (), _numpy_namespace().float64, "cpu")
        self.lam_init = float(lam)
        self.potts = bool(potts)
        self.learn_lam = bool(learn_lam)
        self.solver_kwargs = check_solver_kwargs(
            {"method": method, "rtol": rtol, "atol": atol, "maxiter": maxiter}
        )
        self.supports_jit = False
        self.raw_lam = None
        if self.learn_lam:
            self.raw_lam = self.add_weight(
                name="raw_lam",
                shape=(),
                initializer=keras.initializers.Constant(_softplus_inverse(self.lam_init)),
                dtype="float32",
            )

    @property
    def lam(self) -> Any:
        """λ: ``softplus(raw_lam)`` when learnt, else the fixed float."""
        if self.raw_lam is not None:
            return tf.nn.softplus(self.raw_lam)
        return self.lam_init

    def call(self, unary: Any, embeddings: Any) -> tf.Tensor:
        shapes = layer_shapes(_static(unary.shape), _static(embeddings.shape), self.potts)
        x = _solve(
            self.potts,
            tf.reshape(embeddings, shapes.core_embeddings),
            tf.reshape(unary, shapes.core_unary),
            self.lam,
            self.solver_kwargs,
        )
        return tf.reshape(x, tf.shape(unary))

    def compute_output_shape(self, unary_shape: Any, embeddings_shape: Any) -> tuple:
        layer_shapes(_static(unary_shape), _static(embeddings_shape), self.potts)
        return tuple(unary_shape)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            lam=self.lam_init, potts=self.potts, learn_lam=self.learn_lam, **self.solver_kwargs
        )
        return config


def _numpy_namespace() -> Any:
    from array_api_compat import numpy as numpy_namespace

    return numpy_namespace
