"""One Gaussian kernel over an image's pixel features, approximated by m landmarks or features.

:func:`kernel_block` approximates ``k(f, g) = exp(−|f − g|²/2)`` over the rows of a feature
matrix F (P, f) by a :class:`KernelBlock`, the kernel values to m centres, and a transform T
(m × m) such that ``Φ = T K`` has ``ΦᵀΦ ≈ k``:

* Nyström on m landmarks, placed by k-means (:func:`kmeans_landmarks`) or drawn uniformly
  among the pixels, with ``T = Λ^{-1/2} Uᵀ`` from ``K_mm = UΛUᵀ`` (:func:`nystrom_transform`);
* random Fourier features ``√(2/m) cos(Ωf + β)``, ``Ω ~ N(0, I)`` (Rahimi & Recht), T = I.

The dense CRF's two kernels and their weights are :mod:`lowrank_gcrf.image_kernels`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import array_api_compat
import numpy as np

#: Lloyd iterations of the k-means landmark placement.
KMEANS_ITERATIONS = 8
#: k-means runs on a random subsample of this many pixels per landmark (at least 4096).
KMEANS_PIXELS_PER_LANDMARK = 16
#: Nyström drops eigen-directions of the landmark kernel below this fraction of the largest:
#: their inverse square roots would amplify rounding errors of float32 features.
NYSTROM_RTOL = 1e-6
#: The Gaussian's exponent is clamped below at this value: exp(−60) ≈ 8.8e-27 is a normal
#: float32 (subnormals start below exp(−87.3)), and arithmetic on subnormal values is many
#: times slower on x86 CPUs. Kernel values this small are far below float32's rounding of
#: the sums they enter (each pixel's degree is at least its own kernel value, 1).
KERNEL_EXPONENT_FLOOR = -60.0


def _squared_distances(xp: Any, X: Any, Y: Any) -> Any:
    """``|xᵢ − yⱼ|²`` for rows of X (n, f) and Y (m, f), clamped at 0 against rounding."""
    d = xp.sum(X * X, axis=1)[:, None] + xp.sum(Y * Y, axis=1)[None, :] - 2.0 * (X @ Y.T)
    return xp.maximum(d, 0.0)


def _random_rows(xp: Any, F: Any, size: int, rng: np.random.Generator) -> Any:
    rows = rng.permutation(F.shape[0])[:size]
    return xp.asarray(rows, device=array_api_compat.device(F))


def kmeans_landmarks(xp: Any, F: Any, m: int, rng: np.random.Generator) -> Any:
    """``m`` landmarks by Lloyd's k-means on a random subsample of the rows of F (P, f).

    Starts from m random pixels; a cluster that empties keeps its previous centre. Cluster
    sums are one-hot matrix products, so the same code runs on every array library.
    """
    size = min(F.shape[0], max(4096, KMEANS_PIXELS_PER_LANDMARK * m))
    X = xp.take(F, _random_rows(xp, F, size, rng), axis=0)
    centres = X[:m, :]
    labels = xp.arange(m, device=array_api_compat.device(F))
    for _ in range(KMEANS_ITERATIONS):
        nearest = xp.argmin(_squared_distances(xp, X, centres), axis=1)
        onehot = xp.astype(nearest[:, None] == labels[None, :], X.dtype)
        counts = xp.sum(onehot, axis=0)
        sums = onehot.T @ X
        centres = xp.where(counts[:, None] > 0, sums / xp.maximum(counts, 1.0)[:, None], centres)
    return centres


def gaussian_kernel(xp: Any, X: Any, Y: Any) -> Any:
    """``exp(max(−|xᵢ − yⱼ|²/2, −60))`` for rows of X (n, f) and Y (m, f), shape (n, m).

    One matrix product of the augmented rows ``(x, −|x|²/2, 1)·(y, 1, −|y|²/2)`` gives the
    exponent, so that the n × m array is written once before the exponential (rounding may
    lift an exponent a few ulps above 0: harmless). The exponent is clamped at
    :data:`KERNEL_EXPONENT_FLOOR` so that no value is subnormal.
    """
    device = array_api_compat.device(X)
    ones_x = xp.ones((X.shape[0], 1), dtype=X.dtype, device=device)
    ones_y = xp.ones((Y.shape[0], 1), dtype=Y.dtype, device=device)
    half_x = -0.5 * xp.sum(X * X, axis=1, keepdims=True)
    half_y = -0.5 * xp.sum(Y * Y, axis=1, keepdims=True)
    left = xp.concat([X, half_x, ones_x], axis=1)
    right = xp.concat([Y, ones_y, half_y], axis=1)
    return xp.exp(xp.maximum(left @ right.T, KERNEL_EXPONENT_FLOOR))


def nystrom_transform(xp: Any, landmarks: Any) -> Any:
    """``T = Λ^{-1/2} Uᵀ`` (m × m) with ``K_mm = UΛUᵀ``, so that ``Φ = T K_mP`` has
    ``ΦᵀΦ = K_Pm K_mm⁺ K_mP`` (Nyström: exact on the landmarks' span).

    Computed in float64 (m × m is small); eigen-directions below :data:`NYSTROM_RTOL` of
    the largest get a zero row.
    """
    K_mm = xp.astype(gaussian_kernel(xp, landmarks, landmarks), xp.float64)
    w, U = xp.linalg.eigh(K_mm)
    keep = w > NYSTROM_RTOL * w[-1]
    scale = xp.where(keep, 1.0 / xp.sqrt(xp.where(keep, w, 1.0)), 0.0)
    return (U * scale[None, :]).T


@dataclass(frozen=True)
class KernelBlock:
    """One kernel's approximation: pixel features and their m landmarks or random features.

    Attributes
    ----------
    features : array (P, f)
        Scaled pixel features (:func:`pixel_features`).
    centres : array (m, f)
        Nyström landmarks, or the frequencies Ω of random Fourier features.
    phases : array (m, 1) or None
        Random Fourier phases β; ``None`` for Nyström.
    """

    features: Any
    centres: Any
    phases: Any = None

    def values(self, xp: Any, F: Any) -> Any:
        """Kernel values to the landmarks (or the random features) of the rows of F, (m, n)."""
        if self.phases is None:
            return gaussian_kernel(xp, self.centres, F)
        m = self.centres.shape[0]
        return math.sqrt(2.0 / m) * xp.cos(self.centres @ F.T + self.phases)


def kernel_block(
    xp: Any, F: Any, m: int, *, approximation: str, seed: int
) -> tuple[KernelBlock, Any]:
    """A block approximating ``exp(−|fᵢ − fⱼ|²/2)`` over the rows of F (P, f) and its
    transform T: m landmarks (Nyström, at most P) or m random Fourier features."""
    rng = np.random.default_rng(seed)
    device = array_api_compat.device(F)
    if approximation == "rff":
        omega = xp.asarray(rng.standard_normal((m, F.shape[1])), dtype=F.dtype, device=device)
        phases = rng.uniform(0.0, 2.0 * math.pi, size=(m, 1))
        phases = xp.asarray(phases, dtype=F.dtype, device=device)
        return KernelBlock(F, omega, phases), xp.eye(m, dtype=xp.float64, device=device)
    m = min(m, F.shape[0])
    if approximation == "nystrom-kmeans":
        landmarks = kmeans_landmarks(xp, F, m, rng)
    else:
        landmarks = xp.take(F, _random_rows(xp, F, m, rng), axis=0)
    return KernelBlock(F, landmarks), nystrom_transform(xp, landmarks)
