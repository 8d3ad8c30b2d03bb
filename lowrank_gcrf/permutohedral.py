"""The permutohedral lattice: a Gaussian filter over an image's pixel features in O(d²·P).

Adams, Baek and Davis (2010) filter values ``v`` over points with features ``f`` (P, d),
already divided by their bandwidths, by ``Σⱼ k(fᵢ, fⱼ) vⱼ`` with ``k(f, g) ∝ exp(−|f − g|²/2)``
approximately: each point is *splatted* onto the d + 1 vertices of the lattice simplex that
encloses it (barycentric weights), the lattice values are *blurred* by ``[½ 1 ½]`` along each
of its d + 1 directions, and *sliced* back with the same weights. With W (P × M) the
barycentric weights and B the blur (M × M),

    filter(v) = W B Wᵀ v,

a sparse factorisation of the dense kernel: M lattice points (about a tenth of P for a
photograph's appearance features), d + 1 weights per point. This is Krähenbühl and Koltun's
implementation (``permutohedral.cpp`` of the dense CRF, as in pydensecrf), with the same
elevation, rounding, blur and conventions; the filter includes the point itself. Its overall
scale is a constant of the lattice: the symmetric normalisation that the dense CRF and
:mod:`lowrank_gcrf.refine_passes` use divides it out, so it is not applied here.

Everything is vectorised over the points, in the coordinate-major layout (d + 1, P):

* the enclosing simplex by pydensecrf's rank counting, and its barycentric weights as the
  point's residuals sorted by a sorting network;
* the distinct vertices and their neighbours by integer codes, without forming their keys
  (:mod:`lowrank_gcrf.lattice_vertices`).

NumPy and SciPy only (scipy.sparse holds W and the blur).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .errors import GCRFError
from .lattice_vertices import lattice_vertices

#: The elevated coordinates are float32 and rounded to integers: beyond 2²⁴ float32 no
#: longer holds every integer, and the lattice point a feature falls in is lost.
ELEVATED_LIMIT = 2.0**24


@dataclass(frozen=True)
class PermutohedralLattice:
    """The lattice of P points' features: ``filter(v) = W B Wᵀ v``.

    Attributes
    ----------
    weights : scipy.sparse.csr_array (P, M), float32
        W: row p holds point p's d + 1 barycentric weights (nonnegative, summing to 1) on
        the vertices of its simplex. The splat is its transpose (a CSC view, no copy).
    blur : tuple of scipy.sparse.csr_array (M, M), float32
        The d + 1 blurs ``I + (N₁ + N₂)/2`` along the lattice's directions, N₁ and N₂ the
        two neighbours along it (a neighbour absent from the lattice contributes 0).
    """

    weights: sp.csr_array
    blur: tuple[sp.csr_array, ...]

    @property
    def num_points(self) -> int:
        """P, the number of points (pixels)."""
        return int(self.weights.shape[0])

    @property
    def num_vertices(self) -> int:
        """M, the number of lattice points touched by the points' simplices."""
        return int(self.weights.shape[1])

    def self_weights(self) -> np.ndarray:
        """Each point's own weight in :meth:`filter`, ``(W B Wᵀ)ₚₚ`` (P,) float32, as on a
        lattice with every point present.

        The vertices of remainders a and b of one simplex differ by ``−Σ_{j∈J} u_j`` with
        |J| = |a − b| and u_j the blur's d + 1 steps (which sum to 0), so that the blur's
        product ``Π_j (I + (S_j + S_j⁻¹)/2)`` joins them with weight
        ``β(k) = 2^{−k} + 2^{−(d+1−k)}`` for k = |a − b| ≥ 1 and ``β(0) = 1 + 2^{−d}``, and
        ``(W B Wᵀ)ₚₚ = Σ_{a,b} w_a w_b β(|a − b|)``. A blur step into a lattice point absent
        from this lattice contributes nothing in :meth:`filter`: there it is smaller.
        """
        d1 = len(self.blur)
        k = np.abs(np.arange(d1)[:, None] - np.arange(d1)[None, :])
        beta = np.where(k == 0, 1.0 + 2.0 ** (1 - d1), 2.0 ** (-k) + 2.0 ** (k - d1))
        w = self.weights.data.reshape(-1, d1)
        return np.sum((w @ beta.astype(np.float32)) * w, axis=1)

    def filter(self, values: np.ndarray) -> np.ndarray:
        """``W B Wᵀ v``, about proportional to ``Σⱼ exp(−|fᵢ − fⱼ|²/2) vⱼ`` (the point
        itself included).

        Parameters
        ----------
        values : array (L, P)
            L values per point; computed in float32.

        Returns
        -------
        ndarray (L, P), float32
        """
        x = self.weights.T @ np.asarray(values, dtype=np.float32).T
        for step in self.blur:
            x = step @ x
        return np.ascontiguousarray((self.weights @ x).T)


def permutohedral_lattice(features: np.ndarray) -> PermutohedralLattice:
    """The permutohedral lattice of ``features``.

    Parameters
    ----------
    features : array (P, d)
        Each point's features, already divided by their bandwidths (the Gaussian's σ is 1);
        held in float32.

    Returns
    -------
    PermutohedralLattice
        W and the blur; no points give an empty lattice.

    Raises
    ------
    GCRFError
        Features that are not finite, or beyond :func:`feature_limit` (a bandwidth many
        orders of magnitude below the features' range).
    """
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or features.shape[1] < 1:
        raise GCRFError(f"features must be (P, d) with d ≥ 1, got shape {features.shape}")
    if not np.isfinite(features).all():
        raise GCRFError("the lattice's features must be finite")
    p, d = features.shape
    if p == 0:
        empty = sp.csr_array((0, 0), dtype=np.float32)
        return PermutohedralLattice(empty, tuple(empty for _ in range(d + 1)))
    rem0, rank, barycentric = _enclosing_simplex(features)
    inverse, neighbours, m = lattice_vertices(rem0, rank)
    indptr = np.arange(0, p * (d + 1) + 1, d + 1, dtype=_index_dtype(p * (d + 1)))
    weights = sp.csr_array(
        (np.ascontiguousarray(barycentric.T).ravel(), inverse, indptr),
        shape=(p, m),
    )
    return PermutohedralLattice(weights, tuple(_blur(n1, n2) for n1, n2 in neighbours))


def feature_limit(d: int) -> float:
    """The largest feature norm |f| the lattice holds in d dimensions: its elevated
    coordinates stay below :data:`ELEVATED_LIMIT`."""
    return ELEVATED_LIMIT / float(np.linalg.norm(_elevation(d).astype(np.float64), axis=1).max())


def _elevation(d: int) -> np.ndarray:
    """pydensecrf's (d + 1, d) elevation onto the plane Σ = 0 of R^{d+1}, its scale factors
    ``√(2/3)(d + 1)/√((i + 1)(i + 2))`` included (lattice spacing of the Gaussian's σ = 1)."""
    scale = np.sqrt(2.0 / 3.0) * (d + 1) / np.sqrt((np.arange(d) + 1.0) * (np.arange(d) + 2.0))
    e = np.zeros((d + 1, d))
    for j in range(d + 1):
        e[j, j:] = 1.0
        if j > 0:
            e[j, j - 1] = -j
    return (e * scale[None, :]).astype(np.float32)


def _sorted_rows(a: np.ndarray) -> np.ndarray:
    """Each column of a small (n, P) array sorted ascending, by an odd-even transposition
    network of whole-row compare-exchanges (faster than a scatter by rank)."""
    rows = [r.copy() for r in a]
    n = len(rows)
    for step in range(n):
        for i in range(step % 2, n - 1, 2):
            low = np.minimum(rows[i], rows[i + 1])
            np.maximum(rows[i], rows[i + 1], out=rows[i + 1])
            rows[i] = low
    return np.stack(rows)


def _enclosing_simplex(features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each point's nearest remainder-0 lattice point ``rem0`` (d + 1, P) int32, the rank of
    its coordinates' residuals (d + 1, P) int32, and its barycentric weights (d + 1, P)
    float32 (weight r on the simplex's vertex of remainder r): pydensecrf's ``init``."""
    p, d = features.shape
    d1 = d + 1
    elevated = _elevation(d) @ features.T
    if float(np.max(np.abs(elevated))) >= ELEVATED_LIMIT:
        raise GCRFError(
            "the features reach beyond float32's integers on the lattice: a bandwidth is "
            "many orders of magnitude below the range of its features, or the features lie "
            "far from the origin"
        )
    # The nearest multiple of d + 1, a tie going down (pydensecrf rounds up only when closer).
    down = np.floor(elevated * np.float32(1.0 / d1)) * d1
    rem0 = down.astype(np.int32)
    rem0 += ((down + d1) - elevated < elevated - down) * np.int32(d1)
    total = rem0.sum(axis=0) // d1
    residual = elevated - rem0
    # rank[i] = #{j: residual_j > residual_i} + #{j < i: residual_j = residual_i}, counted in
    # int8 (ranks ≤ d) to halve the memory traffic.
    counts = np.zeros((d1, p), dtype=np.int8)
    less = np.empty(p, dtype=bool)
    for i in range(d):
        for j in range(i + 1, d1):
            np.less(residual[i], residual[j], out=less)
            counts[i] += less.view(np.int8)
            counts[j] += 1
            counts[j] -= less.view(np.int8)
    rank = counts.astype(np.int32) + total
    # Points whose rounding left the plane Σ = 0 are wrapped back onto it.
    shift = (rank < 0).astype(np.int32) - (rank > d)
    shift *= d1
    rank += shift
    rem0 += shift
    # The weight of vertex r is the difference of consecutive residuals in ascending order.
    ascending = _sorted_rows((elevated - rem0) * np.float32(1.0 / d1))
    barycentric = np.empty((d1, p), dtype=np.float32)
    np.subtract(ascending[1:], ascending[:-1], out=barycentric[1:])
    np.subtract(ascending[0], ascending[d], out=barycentric[0])
    barycentric[0] += 1.0
    return rem0, rank, barycentric


def _blur(first: np.ndarray, second: np.ndarray) -> sp.csr_array:
    """``I + (N₁ + N₂)/2`` (M × M) in CSR, three entries a row (self, n₁, n₂), an absent
    neighbour stored as an explicit 0 on the diagonal (no conversion from COO)."""
    m = len(first)
    rows = np.arange(m, dtype=np.int32)
    columns = np.empty((m, 3), dtype=np.int32)
    values = np.empty((m, 3), dtype=np.float32)
    columns[:, 0], values[:, 0] = rows, 1.0
    for k, n in ((1, first), (2, second)):
        present = n >= 0
        columns[:, k] = np.where(present, n, rows)
        values[:, k] = np.where(present, np.float32(0.5), np.float32(0.0))
    indptr = np.arange(0, 3 * m + 1, 3, dtype=_index_dtype(3 * m))
    return sp.csr_array((values.ravel(), columns.ravel(), indptr), shape=(m, m))


def _index_dtype(entries: int) -> type:
    """int32 where the sparse matrix's entries allow: indices and pointers of one dtype, so
    that SciPy does not copy the indices to a common one."""
    return np.int32 if entries < 2**31 else np.int64
