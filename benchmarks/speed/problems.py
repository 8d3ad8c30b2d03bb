"""Benchmark systems with a controlled condition number κ.

A random Gaussian embedding has a nearly flat singular spectrum (Marchenko–Pastur: for
D ≪ n all σᵢ² lie within a factor (1 + √(D/n))²/(1 − √(D/n))² of each other), so CG would
converge in a handful of iterations whatever λ, and κ would control nothing. The benchmark
embeddings therefore have random singular *directions* but a prescribed spectrum: σᵢ²
log-spaced over ``[σ_max²/κ, σ_max²]`` with ``σ_max = 1``. Then

* general (``M = AᵀA + λI``): ``λ = σ_max²/(κ − 1)`` gives ``κ(M) = 1 + σ_max²/λ = κ`` and
  the eigenvalues ``λ + σᵢ²`` spread over the whole interval ``[2λ, κλ]``;
* Potts (``M = λI + (J − I) ⊗ ÂᵀÂ``, eigenvalues ``λ + (L−1)μᵢ`` and ``λ − μᵢ``, PD iff
  ``λ > μ_max``): ``λ = μ_max(1 + δ)`` with ``δ = L/(κ − 1)``, i.e.
  ``λ = μ_max(κ + L − 1)/(κ − 1)``, gives ``κ(M) = (λ + (L−1)μ_max)/(λ − μ_max) = κ``.

Right-hand sides and backward cotangents are standard normal. Everything is built in float64
and cast, so the float32 and float64 cases solve the same systems.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from lowrank_gcrf.models import check_model


@dataclass(frozen=True)
class Problem:
    """One benchmark case: a batch of systems sharing shape, spectrum, λ and κ.

    Attributes
    ----------
    model : {"general", "potts"}
    embeddings : ndarray (B, D, n)
        A (n = N = L·P, label-major) or Â (n = P).
    b, gx : ndarray
        Right-hand sides and backward cotangents ``∂L/∂x``: (B, N) general, (B, L, P) Potts.
    lam : float
        λ, the same for every system of the batch.
    kappa : float
        The 2-norm condition number of M (exact by construction).
    pixels, labels : int
        P and L.
    """

    model: str
    embeddings: np.ndarray
    b: np.ndarray
    gx: np.ndarray
    lam: float
    kappa: float
    pixels: int
    labels: int

    @property
    def rank(self) -> int:
        """D, the embedding dimension."""
        return int(self.embeddings.shape[-2])

    @property
    def batch(self) -> int:
        """B, the number of systems."""
        return int(self.embeddings.shape[0])

    @property
    def unknowns(self) -> int:
        """N = L·P unknowns per system."""
        return self.pixels * self.labels

    @property
    def dtype(self) -> np.dtype:
        """The floating dtype of every array."""
        return self.embeddings.dtype

    @property
    def input_bytes(self) -> int:
        """Bytes of the forward+backward inputs: embeddings, b and the cotangent gx."""
        return self.embeddings.nbytes + self.b.nbytes + self.gx.nbytes

    def astype(self, dtype: np.dtype) -> Problem:
        """The same systems in another dtype."""
        return Problem(
            self.model,
            self.embeddings.astype(dtype),
            self.b.astype(dtype),
            self.gx.astype(dtype),
            self.lam,
            self.kappa,
            self.pixels,
            self.labels,
        )

    def head(self, batch: int) -> Problem:
        """The first ``batch`` systems."""
        return Problem(
            self.model,
            self.embeddings[:batch],
            self.b[:batch],
            self.gx[:batch],
            self.lam,
            self.kappa,
            self.pixels,
            self.labels,
        )

    def matvec(self, x: np.ndarray) -> np.ndarray:
        """``M x`` per system in float64, x shaped like b (the residual reference)."""
        U = self.embeddings.astype(np.float64)
        x = np.asarray(x, dtype=np.float64)
        if self.model == "general":
            return self.lam * x + np.einsum("bdn,bd->bn", U, np.einsum("bdn,bn->bd", U, x))
        Q = (x @ np.swapaxes(U, -1, -2)) @ U
        return self.lam * x + Q.sum(axis=-2, keepdims=True) - Q

    def relative_residual(self, x: np.ndarray) -> float:
        """The largest true relative residual ``‖b − Mx‖/‖b‖`` over the batch, in float64."""
        b = self.b.astype(np.float64)
        r = b - self.matvec(x)
        axes = tuple(range(1, b.ndim))
        return float(np.max(np.sqrt((r * r).sum(axis=axes) / (b * b).sum(axis=axes))))


def lam_for_kappa(model: str, kappa: float, labels: int, top: float = 1.0) -> float:
    """λ giving condition number ``kappa`` for a top singular value² (or μ_max) ``top``."""
    if model == "general":
        return top / (kappa - 1.0)
    return top * (kappa + labels - 1.0) / (kappa - 1.0)


@functools.lru_cache(maxsize=1)
def _directions(rank: int, n: int, batch: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Random orthonormal singular vectors (rank × r, n × r), r = min(rank, n), per system.

    Cached: the QR factorizations dominate the construction, and the cases of one shape at
    different κ share them.
    """
    rng = np.random.default_rng(seed)
    r = min(rank, n)
    return [
        (
            np.linalg.qr(rng.standard_normal((rank, r)))[0],
            np.linalg.qr(rng.standard_normal((n, r)))[0],
        )
        for _ in range(batch)
    ]


def make_problem(
    model: str,
    *,
    pixels: int,
    labels: int,
    rank: int,
    kappa: float,
    batch: int = 1,
    dtype: np.dtype = np.float32,
    seed: int = 0,
) -> Problem:
    """Build a :class:`Problem` (see the module docstring for the construction).

    Parameters
    ----------
    model : {"general", "potts"}
    pixels, labels, rank : int
        P, L and D.
    kappa : float
        Target condition number of M, > 1.
    batch : int
        Number of systems, each with its own random directions, b and gx.
    dtype : numpy dtype
    seed : int
    """
    check_model(model)
    n = pixels * labels if model == "general" else pixels
    sigma = np.sqrt(np.geomspace(1.0, 1.0 / kappa, min(rank, n)))
    embeddings = np.stack(
        [(left * sigma) @ right.T for left, right in _directions(rank, n, batch, seed)]
    )
    rng = np.random.default_rng([seed, 1])
    shape = (batch, pixels * labels) if model == "general" else (batch, labels, pixels)
    b = rng.standard_normal(shape)
    gx = rng.standard_normal(shape)
    lam = lam_for_kappa(model, kappa, labels)
    problem = Problem(model, embeddings, b, gx, lam, float(kappa), pixels, labels)
    return problem.astype(np.dtype(dtype))
