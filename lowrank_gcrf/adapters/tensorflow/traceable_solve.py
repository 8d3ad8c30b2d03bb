"""The G-CRF solve in TensorFlow operations only, for deployment: what a SavedModel served
without lowrank_gcrf, a TFLite model of builtin operations and XLA (``jit_compile=True``) can
run.

The core's solve runs in NumPy through ``tf.py_function``, which none of them can carry.
This one is the Woodbury identity of ``docs/maths.md#exact-low-rank-solves`` in matrix
products, element-wise operations, reductions, slices and concatenations — all TFLite
builtins in float32 — with every capacitance inverse from a fixed number of Newton–Schulz
iterations, derived from the caller's bound on the embeddings
(:mod:`lowrank_gcrf.adapters.traceable_plan`) so that the truncation error is certified below
the compute dtype's machine epsilon. The loops are Python loops over that small count.

The same maths as :mod:`lowrank_gcrf.adapters.torch.traceable_solve`; the docstrings there
derive it.
"""

from __future__ import annotations

import numbers
from typing import Any

import tensorflow as tf

from lowrank_gcrf.adapters.bridge import SignedStack, SolveAs
from lowrank_gcrf.adapters.tensorflow.op import dtype_plan
from lowrank_gcrf.adapters.traceable_plan import Inversion, traceable_plan


def newton_schulz(C: tf.Tensor, inversion: Inversion) -> tf.Tensor:
    """``X ≈ C⁻¹`` for symmetric C (..., n, n) with spectrum in ``[lo, hi]``:
    ``X₀ = 2/(lo + hi)·I``, ``X ← X(2I − CX)``, ``inversion.steps`` times."""
    eye = _eye_like(C)
    X = inversion.start * eye
    for _ in range(inversion.steps):
        X = X @ (2 * eye - C @ X)
    return X


def _eye_like(C: tf.Tensor) -> tf.Tensor:
    """The identity of C's static trailing size and dtype (a constant in the graph)."""
    return tf.eye(int(C.shape[-1]), dtype=C.dtype)


def _times_transpose(v: tf.Tensor, U: tf.Tensor) -> tf.Tensor:
    """``v Uᵀ``: the transpose is a flag of the product (TFLite's BATCH_MATMUL adj_y)."""
    return tf.linalg.matmul(v, U, transpose_b=True)


def _shifted_solve(
    U: tf.Tensor, gram: tf.Tensor, v: tf.Tensor, lam: Any, alpha: float, inversion: Inversion
) -> tf.Tensor:
    """``(λI + αUᵀU)⁻¹ v`` for rows v (..., k, n) by Woodbury, with the scaled capacitance
    ``C = I + α·gram``, ``gram = UUᵀ/λ``."""
    X = newton_schulz(_eye_like(gram) + alpha * gram, inversion)
    return (v - alpha * (_times_transpose(v, U) @ X) @ U / lam) / lam


def _signed_solve(
    U: tf.Tensor,
    gram: tf.Tensor,
    v: tf.Tensor,
    lam: Any,
    repulsive: int,
    plan: dict[str, Inversion],
) -> tf.Tensor:
    """``(λI + UᵀSU)⁻¹ v`` for U = [A; Γ] by the block LDLᵀ of ``K = S + UUᵀ/λ``: the
    positive definite ``C_A = I + AAᵀ/λ`` and Schur complement
    ``H = I − ΓΓᵀ/λ + Gᵀ C_A⁻¹ G`` (``G = AΓᵀ/λ``), each inverted by Newton–Schulz."""
    d = repulsive
    uw = _times_transpose(v, U)
    u, w = uw[..., :d], uw[..., d:]
    schur = _eye_like(gram[..., d:, d:]) - gram[..., d:, d:]
    if d:
        X_a = newton_schulz(_eye_like(gram[..., :d, :d]) + gram[..., :d, :d], plan["repulsive"])
        coupling = gram[..., :d, d:]
        schur = schur + tf.linalg.matmul(coupling, X_a @ coupling, transpose_a=True)
    X_h = newton_schulz(schur, plan["schur"])
    if d:
        q = (u @ X_a @ coupling - w) @ X_h
        p = (u - _times_transpose(q, coupling)) @ X_a
        pq = tf.concat([p, q], axis=-1)
    else:
        pq = -w @ X_h
    return (v - (pq @ U) / lam) / lam


def traceable_solve(
    solve_as: SolveAs,
    A: tf.Tensor,
    b: tf.Tensor,
    lam: Any,
    strength_bounds: tuple[float, ...],
) -> tf.Tensor:
    """x = M⁻¹ b in TensorFlow operations only, certified by the embeddings' strength bounds.

    Parameters
    ----------
    solve_as : str or SignedStack
        ``"general"``: A (..., D, N), b (..., N), ``M = λI + AᵀA`` (Eq. 5); ``"potts"``:
        Â (..., D, P), b (..., L, P), ``M = λI + (J_L − I_L) ⊗ ÂᵀÂ`` (Eq. 12);
        ``SignedStack(D)``: ``[A; Γ]`` (..., D + E, N), b (..., N),
        ``M = λI + AᵀA − ΓᵀΓ``. As the layers pass them to the core; D, E and L must be
        static.
    A, b : tf.Tensor
        Computed in the core's dtype policy (float64 stays float64, half precision is
        computed in float32) and returned in b's.
    lam : float or tf.Tensor
        λ > 0, a number or a tensor of shape () or of the batch shape.
    strength_bounds : tuple of float
        ``‖block‖₂² ≤ ρ·λ`` per embedding block, guaranteed by the caller: ``(ρ,)`` for
        general and Potts (Potts: ρ < 1), ``(ρ_A, ρ_Γ)`` for signed (ρ_Γ < 1).

    Returns
    -------
    tf.Tensor
        x, shaped like b, with a truncation error certified below ε relative
        (:func:`~lowrank_gcrf.adapters.traceable_plan.traceable_plan`).
    """
    A, b = tf.convert_to_tensor(A), tf.convert_to_tensor(b)
    compute, output = dtype_plan(A, b)
    A, b = tf.cast(A, compute), tf.cast(b, compute)
    if not isinstance(lam, numbers.Real):
        lam = tf.cast(lam, compute)[..., tf.newaxis, tf.newaxis]
    labels = int(b.shape[-2]) if solve_as == "potts" else 1
    plan = traceable_plan(
        solve_as,
        strength_bounds,
        rows=int(A.shape[-2]),
        labels=labels,
        compute_dtype=compute.name,
    ).inversions
    gram = _times_transpose(A, A) / lam
    if solve_as == "potts":
        class_sum = tf.reduce_sum(b, axis=-2, keepdims=True)
        x = _shifted_solve(A, gram, class_sum, lam, float(labels - 1), plan["sum"]) / labels
        if labels > 1:
            deviation = b - class_sum / labels
            x = x + _shifted_solve(A, gram, deviation, lam, -1.0, plan["deviation"])
        return tf.cast(x, output)
    rows = tf.expand_dims(b, -2)
    if isinstance(solve_as, SignedStack) and solve_as.repulsive_rank < A.shape[-2]:
        x = _signed_solve(A, gram, rows, lam, solve_as.repulsive_rank, plan)
    else:
        x = _shifted_solve(A, gram, rows, lam, 1.0, plan["general"])
    return tf.cast(tf.squeeze(x, -2), output)
