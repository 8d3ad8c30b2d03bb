"""Dense references and hypothesis strategies for testing G-CRF solves.

Public so that users can property-test their own use of the library against
``scipy.linalg.solve`` on the explicitly formed matrix; the project's tests use it too.

* :func:`dense_matrix`, :func:`potts_dense_matrix`, :func:`signed_dense_matrix`: the N×N
  (LP×LP) system matrices in float64 — only for small problems, the solvers never form them.
* :func:`general_systems`, :func:`potts_systems`: hypothesis strategies drawing random
  systems of a chosen shape, batch shape, dtype and condition number κ.
* :func:`reference_solve`: the float64 dense solution.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg

__all__ = [
    "GCRFSystem",
    "dense_matrix",
    "general_systems",
    "make_general_system",
    "make_potts_system",
    "potts_dense_matrix",
    "potts_systems",
    "reference_solve",
    "relative_residual",
    "signed_dense_matrix",
]


def _lam_column(lam: Any, batch_shape: tuple[int, ...]) -> np.ndarray:
    return np.broadcast_to(np.asarray(lam, dtype=np.float64), batch_shape)[..., None, None]


def dense_matrix(A: Any, lam: Any) -> np.ndarray:
    """``AᵀA + λI`` (Eq. 5) in float64, for A of shape (..., D, N) and λ scalar or (...,).

    Examples
    --------
    >>> import numpy as np
    >>> from lowrank_gcrf import testing
    >>> A = np.arange(6.0).reshape(2, 3)
    >>> testing.dense_matrix(A, 1.0).shape
    (3, 3)
    """
    A = np.asarray(A, dtype=np.float64)
    n = A.shape[-1]
    return np.swapaxes(A, -1, -2) @ A + _lam_column(lam, A.shape[:-2]) * np.eye(n)


def potts_dense_matrix(Ahat: Any, lam: Any, L: int) -> np.ndarray:
    """``λI + (J_L − I_L) ⊗ ÂᵀÂ`` (Eq. 12) in float64, label-major, shape (..., LP, LP).

    Examples
    --------
    >>> import numpy as np
    >>> from lowrank_gcrf import testing
    >>> testing.potts_dense_matrix(np.ones((1, 2)), 3.0, L=2)
    array([[3., 0., 1., 1.],
           [0., 3., 1., 1.],
           [1., 1., 3., 0.],
           [1., 1., 0., 3.]])
    """
    Ahat = np.asarray(Ahat, dtype=np.float64)
    P = Ahat.shape[-1]
    K = np.swapaxes(Ahat, -1, -2) @ Ahat
    coupling = np.ones((L, L)) - np.eye(L)
    # kron over the trailing two axes: block (k, j) is C[k, j]·K.
    blocks = coupling[:, None, :, None] * K[..., None, :, None, :]
    M = blocks.reshape(*K.shape[:-2], L * P, L * P)
    return M + _lam_column(lam, Ahat.shape[:-2]) * np.eye(L * P)


def signed_dense_matrix(A: Any, Gamma: Any, lam: Any) -> np.ndarray:
    """``λI + AᵀA − ΓᵀΓ`` in float64, for A (..., D, N) and Γ (..., E, N), either None.

    Examples
    --------
    >>> import numpy as np
    >>> from lowrank_gcrf import testing
    >>> testing.signed_dense_matrix(np.ones((1, 2)), np.array([[1.0, 0.0]]), 2.0)
    array([[2., 1.],
           [1., 3.]])
    """
    present = [np.asarray(a, dtype=np.float64) for a in (A, Gamma) if a is not None]
    batch_shape, n = present[0].shape[:-2], present[0].shape[-1]
    M = _lam_column(lam, batch_shape) * np.eye(n)
    for sign, a in ((1.0, A), (-1.0, Gamma)):
        if a is not None:
            a = np.asarray(a, dtype=np.float64)
            M = M + sign * (np.swapaxes(a, -1, -2) @ a)
    return M


def reference_solve(M: np.ndarray, b: Any) -> np.ndarray:
    """``M⁻¹ b`` by ``scipy.linalg.solve`` in float64, for b (..., n) and M (..., n, n).

    Examples
    --------
    >>> import numpy as np
    >>> from lowrank_gcrf import testing
    >>> testing.reference_solve(2.0 * np.eye(3), np.ones(3))
    array([0.5, 0.5, 0.5])
    """
    M = np.asarray(M, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    flat_M = M.reshape(-1, *M.shape[-2:])
    flat_b = b.reshape(-1, b.shape[-1])
    x = np.stack(
        [scipy.linalg.solve(m, v, assume_a="pos") for m, v in zip(flat_M, flat_b, strict=True)]
    )
    return x.reshape(b.shape)


def relative_residual(M: np.ndarray, x: Any, b: Any) -> np.ndarray:
    """``‖b − Mx‖ / ‖b‖`` per system, in float64.

    Examples
    --------
    >>> import numpy as np
    >>> from lowrank_gcrf import testing
    >>> float(testing.relative_residual(2.0 * np.eye(2), np.array([0.5, 0.5]), np.ones(2)))
    0.0
    """
    x = np.asarray(x, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    r = b - (M @ x[..., None])[..., 0]
    return np.linalg.norm(r, axis=-1) / np.linalg.norm(b, axis=-1)


@dataclass(frozen=True)
class GCRFSystem:
    """A drawn system: embeddings, right-hand side, λ and its condition number κ.

    For the general model ``embeddings`` is A (..., D, N) and ``b`` (..., N); for Potts,
    Â (..., D, P) and b (..., L, P). ``kappa`` is the 2-norm condition number of M.
    """

    embeddings: np.ndarray
    b: np.ndarray
    lam: Any
    kappa: float
    potts: bool

    @property
    def num_labels(self) -> int:
        """L for Potts systems (1 for general ones)."""
        return int(self.b.shape[-2]) if self.potts else 1

    def dense(self) -> np.ndarray:
        """The explicitly formed system matrix in float64, (..., n, n)."""
        if self.potts:
            return potts_dense_matrix(self.embeddings, self.lam, self.num_labels)
        return dense_matrix(self.embeddings, self.lam)

    def flat_b(self) -> np.ndarray:
        """b as (..., n) vectors in float64 (label-major for Potts)."""
        b = np.asarray(self.b, dtype=np.float64)
        return b.reshape(*b.shape[:-2], -1) if self.potts else b

    def reference(self) -> np.ndarray:
        """The float64 dense solution, shaped like b."""
        return reference_solve(self.dense(), self.flat_b()).reshape(self.b.shape)


def _unit_spectral_norm(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    U = rng.standard_normal(shape)
    return U / np.linalg.norm(U, ord=2, axis=(-2, -1), keepdims=True)


def _scales(rng: np.random.Generator, batch_shape: tuple[int, ...], per_batch: bool) -> Any:
    if per_batch:
        return rng.uniform(0.5, 2.0, size=batch_shape)
    return 1.0


def _finish_lam(lam: Any, batch_shape: tuple[int, ...], per_batch: bool) -> Any:
    if per_batch:
        return np.asarray(np.broadcast_to(lam, batch_shape), dtype=np.float64)
    return float(lam)


def make_general_system(
    seed: int,
    *,
    rank: int,
    n: int,
    kappa: float,
    batch_shape: tuple[int, ...] = (),
    dtype: Any = np.float64,
    per_batch_lam: bool = False,
) -> GCRFSystem:
    """A general system with ``κ(AᵀA + λI) = 1 + ‖A‖₂²/λ = kappa`` (exact when D < N; an
    upper bound when D ≥ N, where the smallest eigenvalue exceeds λ).

    Each A has random singular directions; with ``per_batch_lam`` the systems get different
    scales (and so different λ) but the same κ.

    Examples
    --------
    >>> import numpy as np
    >>> import lowrank_gcrf as lg
    >>> from lowrank_gcrf import testing
    >>> system = testing.make_general_system(0, rank=3, n=20, kappa=100.0)
    >>> round(float(np.linalg.cond(system.dense())))
    100
    >>> x = lg.solve(system.embeddings, system.b, system.lam)
    >>> bool(np.allclose(x, system.reference()))
    True
    """
    rng = np.random.default_rng(seed)
    scale = _scales(rng, batch_shape, per_batch_lam)
    sigma2 = np.asarray(scale, dtype=np.float64) ** 2
    A = _unit_spectral_norm(rng, (*batch_shape, rank, n)) * np.asarray(scale)[..., None, None]
    lam = _finish_lam(sigma2 / (kappa - 1.0), batch_shape, per_batch_lam)
    b = rng.standard_normal((*batch_shape, n))
    return GCRFSystem(A.astype(dtype), b.astype(dtype), lam, float(kappa), potts=False)


def make_potts_system(
    seed: int,
    *,
    rank: int,
    pixels: int,
    labels: int,
    kappa: float,
    batch_shape: tuple[int, ...] = (),
    dtype: Any = np.float64,
    per_batch_lam: bool = False,
) -> GCRFSystem:
    """A positive definite Potts system with condition number ``kappa``.

    With ``μ = ‖Â‖₂²`` the extreme eigenvalues of M are ``λ + (L−1)μ`` and ``λ − μ``, so
    ``λ = μ (κ + L − 1) / (κ − 1)`` gives κ exactly (for L ≥ 2).

    Examples
    --------
    >>> import numpy as np
    >>> import lowrank_gcrf as lg
    >>> from lowrank_gcrf import testing
    >>> system = testing.make_potts_system(0, rank=2, pixels=10, labels=3, kappa=50.0)
    >>> round(float(np.linalg.cond(system.dense())))
    50
    >>> x = lg.solve_potts(system.embeddings, system.b, system.lam)
    >>> bool(np.allclose(x, system.reference()))
    True
    """
    rng = np.random.default_rng(seed)
    scale = _scales(rng, batch_shape, per_batch_lam)
    mu = np.asarray(scale, dtype=np.float64) ** 2
    Ahat = (
        _unit_spectral_norm(rng, (*batch_shape, rank, pixels)) * np.asarray(scale)[..., None, None]
    )
    lam = _finish_lam(mu * (kappa + labels - 1.0) / (kappa - 1.0), batch_shape, per_batch_lam)
    b = rng.standard_normal((*batch_shape, labels, pixels))
    return GCRFSystem(Ahat.astype(dtype), b.astype(dtype), lam, float(kappa), potts=True)


def _strategies() -> Any:
    try:
        from hypothesis import strategies as st
    except ImportError as exc:  # hypothesis is a test dependency, not a runtime one
        raise ImportError("the strategies need hypothesis: pip install hypothesis") from exc
    return st


_BATCH_SHAPES: Sequence[tuple[int, ...]] = ((), (1,), (2,), (2, 3))


def general_systems(
    *,
    dtype: Any = np.float64,
    batch_shapes: Sequence[tuple[int, ...]] = _BATCH_SHAPES,
    max_rank: int = 12,
    max_n: int = 40,
    log10_kappa: tuple[float, float] = (np.log10(2.0), 6.0),
) -> Any:
    """Hypothesis strategy of general :class:`GCRFSystem` draws.

    Shapes D ∈ [1, max_rank], N ∈ [1, max_n] (so D ≥ N occurs), a batch shape from
    ``batch_shapes``, κ log-uniform in ``10**log10_kappa``, scalar or per-batch λ.

    Examples
    --------
    >>> import numpy as np
    >>> from hypothesis import given, settings
    >>> import lowrank_gcrf as lg
    >>> from lowrank_gcrf import testing
    >>> @settings(max_examples=10, deadline=None)
    ... @given(testing.general_systems(log10_kappa=(0.5, 3.0)))
    ... def test_solve(system):
    ...     x = lg.solve(system.embeddings, system.b, system.lam, rtol=1e-10)
    ...     assert np.allclose(x, system.reference(), rtol=1e-6, atol=1e-8)
    >>> test_solve()
    """
    st = _strategies()

    @st.composite
    def draw(draw_: Any) -> GCRFSystem:
        return make_general_system(
            draw_(st.integers(0, 2**32 - 1)),
            rank=draw_(st.integers(1, max_rank)),
            n=draw_(st.integers(1, max_n)),
            kappa=10.0 ** draw_(st.floats(*log10_kappa)),
            batch_shape=draw_(st.sampled_from(list(batch_shapes))),
            dtype=dtype,
            per_batch_lam=draw_(st.booleans()),
        )

    return draw()


def potts_systems(
    *,
    dtype: Any = np.float64,
    batch_shapes: Sequence[tuple[int, ...]] = _BATCH_SHAPES,
    max_rank: int = 8,
    max_pixels: int = 16,
    max_labels: int = 5,
    log10_kappa: tuple[float, float] = (np.log10(2.0), 6.0),
) -> Any:
    """Hypothesis strategy of positive definite Potts :class:`GCRFSystem` draws.

    D ∈ [1, max_rank], P ∈ [1, max_pixels] (D ≥ P occurs), L ∈ [2, max_labels], κ
    log-uniform in ``10**log10_kappa``, scalar or per-batch λ.

    Examples
    --------
    >>> import numpy as np
    >>> from hypothesis import given, settings
    >>> import lowrank_gcrf as lg
    >>> from lowrank_gcrf import testing
    >>> @settings(max_examples=10, deadline=None)
    ... @given(testing.potts_systems(log10_kappa=(0.5, 3.0)))
    ... def test_solve_potts(system):
    ...     x = lg.solve_potts(system.embeddings, system.b, system.lam, rtol=1e-10)
    ...     assert np.allclose(x, system.reference(), rtol=1e-6, atol=1e-8)
    >>> test_solve_potts()
    """
    st = _strategies()

    @st.composite
    def draw(draw_: Any) -> GCRFSystem:
        return make_potts_system(
            draw_(st.integers(0, 2**32 - 1)),
            rank=draw_(st.integers(1, max_rank)),
            pixels=draw_(st.integers(1, max_pixels)),
            labels=draw_(st.integers(2, max_labels)),
            kappa=10.0 ** draw_(st.floats(*log10_kappa)),
            batch_shape=draw_(st.sampled_from(list(batch_shapes))),
            dtype=dtype,
            per_batch_lam=draw_(st.booleans()),
        )

    return draw()
