"""The dense G-CRF solves as differentiable TensorFlow functions, named as the core's
(:func:`solve`, :func:`solve_potts`, :func:`solve_signed`), and the layers' scalings of the
embeddings: :func:`strength_scaled` (a learnt strength, the default) and the
positive-definiteness clamp :func:`pd_scaled`.

Precision: float32 and float64 are solved natively; float16/bfloat16 (for example under the
``mixed_float16`` policy) are solved in float32 and returned in their own dtype. Execution
modes, errors and limitations: :mod:`lowrank_gcrf.adapters.tensorflow.op`.
"""

from __future__ import annotations

from typing import Any, NoReturn

import numpy as np
import tensorflow as tf

from lowrank_gcrf.adapters.bridge import check_rescaling, check_solver_kwargs, signed_stack
from lowrank_gcrf.adapters.layer_plan import GRAM_SQUARINGS, Block
from lowrank_gcrf.adapters.tensorflow.op import solve_tensors, tensor_to_core


def solve(A: Any, b: Any, lam: Any, **solver_kwargs: Any) -> tf.Tensor:
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
    >>> from lowrank_gcrf.adapters.tensorflow import solve
    >>> A = tf.random.normal((4, 30)) / 4
    >>> b = tf.random.normal((30,))
    >>> with tf.GradientTape() as tape:
    ...     tape.watch(A)
    ...     loss = tf.reduce_sum(solve(A, b, 1.0))
    >>> tape.gradient(loss, A).shape
    TensorShape([4, 30])
    """
    return solve_tensors("general", A, b, lam, check_solver_kwargs(solver_kwargs))


def solve_potts(Ahat: Any, b: Any, lam: Any, **solver_kwargs: Any) -> tf.Tensor:
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
        As for :func:`solve`.

    Examples
    --------
    >>> import tensorflow as tf
    >>> from lowrank_gcrf.adapters.tensorflow import solve_potts
    >>> Ahat = tf.random.normal((4, 20)) / 10
    >>> solve_potts(Ahat, tf.random.normal((3, 20)), 1.0).shape
    TensorShape([3, 20])
    """
    return solve_tensors("potts", Ahat, b, lam, check_solver_kwargs(solver_kwargs))


def solve_signed(A: Any, Gamma: Any, b: Any, lam: Any, **solver_kwargs: Any) -> tf.Tensor:
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
        As for :func:`solve`.

    Examples
    --------
    >>> import tensorflow as tf
    >>> from lowrank_gcrf.adapters.tensorflow import solve_signed
    >>> A, Gamma = tf.random.normal((4, 30)) / 4, tf.random.normal((2, 30)) / 10
    >>> solve_signed(A, Gamma, tf.random.normal((30,)), 1.0).shape
    TensorShape([30])
    """
    A, Gamma = (None if t is None else tf.convert_to_tensor(t) for t in (A, Gamma))
    # Static shapes: D must be known while tracing (it splits the stacked gradient).
    stack, common = signed_stack(
        *(None if t is None else (t.shape.as_list(), t.dtype) for t in (A, Gamma))
    )
    parts = [tf.cast(t, common) for t in (A, Gamma) if t is not None]
    # One tensor carries both factors: the gradient of tf.concat splits between them.
    U = parts[0] if len(parts) == 1 else tf.concat(parts, axis=-2)
    return solve_tensors(stack, U, b, lam, check_solver_kwargs(solver_kwargs))


def pd_scaled(Ahat: tf.Tensor, lam: Any, bound: float, *, name: str = "Ahat") -> tf.Tensor:
    """Â rescaled, differentiably, so that ``‖Â‖₂² ≤ bound·λ`` (the Potts condition with margin).

    As :func:`lowrank_gcrf.adapters.torch.pd_scaled`: the exact ``‖Â‖₂²`` from the D×D Gram
    (``eigvalsh`` in float64), factor ``sqrt(bound·λ / max(‖Â‖₂², bound·λ))``; embeddings
    with NaN or Inf, a Gram beyond float64 or a λ that is not finite and > 0 raise the core's
    error (inside ``tf.function`` as ``tf.errors.InvalidArgumentError`` with its message).

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
    # dtype_hint: a Python float λ must reach float64 without a float32 rounding on the way.
    lam = tf.cast(tf.convert_to_tensor(lam, dtype_hint=tf.float64), tf.float64)
    gram = tf.matmul(wide, wide, transpose_b=True)
    usable = (
        tf.reduce_all(tf.math.is_finite(gram))
        & tf.reduce_all(tf.math.is_finite(lam))
        & tf.reduce_all(lam > 0)
    )

    def check(wide_: tf.Tensor, lam_: tf.Tensor) -> NoReturn:
        check_rescaling(tensor_to_core(wide_), tensor_to_core(lam_), name)

    if tf.executing_eagerly():
        if not bool(usable):
            check(wide, lam)
    else:
        checked = tf.cond(
            usable,
            lambda: tf.constant(True),
            lambda: tf.py_function(check, [wide, lam], tf.bool),
        )
        with tf.control_dependencies([checked]):
            gram = tf.identity(gram)
    mu = tf.linalg.eigvalsh(gram)[..., -1]
    target = bound * lam
    factor = tf.sqrt(target / tf.maximum(mu, target))
    return Ahat * tf.cast(factor, Ahat.dtype)[..., None, None]


def pd_rescaled(A: tf.Tensor, block: Block | None, lam: Any, bound: float) -> tf.Tensor:
    """``A`` (B, C, n) with the channels of ``block`` rescaled by :func:`pd_scaled` (a layer's
    plan, :class:`~lowrank_gcrf.adapters.layer_plan.SolvePlan`); ``A`` itself for None."""
    if block is None:
        return A
    scaled = pd_scaled(A[:, block.start : block.stop], lam, bound, name=block.name)
    return tf.concat([A[:, : block.start], scaled, A[:, block.stop :]], axis=1)


def spectral_bound(A: tf.Tensor) -> tf.Tensor:
    """An upper bound of ``‖A‖₂²`` for A (..., D, n), in matrix products only: as
    :func:`lowrank_gcrf.adapters.torch.functional.spectral_bound`, ``(tr G^m)^(1/m)`` from
    repeated squarings of the normalised Gram, in float32 or wider."""
    wide = A if A.dtype == tf.float64 else tf.cast(A, tf.float32)
    tiny = wide.dtype.as_numpy_dtype(np.finfo(wide.dtype.as_numpy_dtype).tiny)
    gram = tf.matmul(wide, wide, transpose_b=True)
    # Traces as sums of the diagonal through a mask: TFLite has no builtin matrix trace.
    eye = tf.eye(tf.shape(gram)[-1], dtype=wide.dtype)
    bound = tf.maximum(tf.reduce_sum(gram * eye, axis=[-2, -1]), tiny)
    power = gram / bound[..., None, None]
    for j in range(1, GRAM_SQUARINGS + 1):
        power = tf.matmul(power, power)
        trace = tf.maximum(tf.reduce_sum(power * eye, axis=[-2, -1]), tiny)
        power = power / trace[..., None, None]
        bound = bound * tf.pow(trace, 1.0 / 2**j)
    return tf.maximum(bound, tiny)


def _unit_peak(part: tf.Tensor) -> tf.Tensor:
    """``part`` (B, k, n) divided by its largest magnitude per batch element, as in
    :func:`lowrank_gcrf.adapters.torch.functional.strength_scaled` (the scaling that follows
    is invariant to this factor: its gradient is stopped)."""
    tiny = np.finfo(part.dtype.as_numpy_dtype).tiny
    peak = tf.maximum(tf.reduce_max(tf.abs(tf.stop_gradient(part)), axis=[-2, -1]), tiny)
    return part / peak[:, None, None]


def strength_scaled(
    A: tf.Tensor, blocks: tuple[Block, ...], strengths: tf.Tensor, lam: Any
) -> tf.Tensor:
    """``A`` (B, C, n) with each block of channels scaled to ``‖block‖₂² ≤ ρ·λ``, its strength
    ρ from ``strengths`` (one per block), as
    :func:`lowrank_gcrf.adapters.torch.strength_scaled`.

    Examples
    --------
    >>> import numpy as np
    >>> import tensorflow as tf
    >>> from lowrank_gcrf.adapters.layer_plan import Block
    >>> from lowrank_gcrf.adapters.tensorflow import strength_scaled
    >>> A = strength_scaled(1e3 * tf.random.normal((1, 4, 50)), (Block("Ahat", 0, 4),),
    ...                     tf.constant([0.3]), 1.0)
    >>> bool(np.linalg.norm(A.numpy()[0], 2) ** 2 <= 0.3 * (1 + 1e-5))
    True
    """
    parts = []
    for index, block in enumerate(blocks):
        part = A[:, block.start : block.stop]
        if block.stop > block.start:
            part = _unit_peak(part)
            bound = spectral_bound(part)
            rho = tf.cast(strengths[index], bound.dtype) * tf.cast(lam, bound.dtype)
            part = part * tf.cast(tf.sqrt(rho / bound), part.dtype)[:, None, None]
        parts.append(part)
    return parts[0] if len(parts) == 1 else tf.concat(parts, axis=1)
