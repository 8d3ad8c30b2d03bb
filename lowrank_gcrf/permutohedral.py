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
* integer codes for the vertices without forming their keys: every coordinate of the key of
  the simplex's vertex r is ≡ r (mod d + 1), so the key is r and a mixed-radix code of its
  quotients by d + 1 (:func:`_vertex_codes`);
* the distinct vertices by a dense table over the code space where it is at most
  :data:`TABLE_RATIO` times the number of codes (no sort), else by a sort; by sorting the
  keys themselves where the codes would overflow int64 (features spread over far more
  lattice cells than an image has pixels).

NumPy and SciPy only (scipy.sparse holds W and the blur).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .errors import GCRFError

#: The dense lookup table over the vertex code space is used up to this many entries per
#: code (bytes of marks plus a lazily touched int32 table); beyond it, a sort finds the
#: distinct vertices (an image of noise: about three times slower).
TABLE_RATIO = 64
#: The table's largest size whatever the number of codes (128 MiB of marks); a photograph's
#: code space is 3–22 times its codes, 2·10⁷ entries at 1024 × 1024.
TABLE_MAX_ENTRIES = 2**27
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
    coded = _vertex_codes(rem0, rank)
    if coded is None:
        inverse, neighbours, m = _by_keys(rem0, rank)
    else:
        codes, strides, residue_stride = coded
        codes = np.ascontiguousarray(codes.T)  # (P, d + 1): a point's vertices adjacent
        vertices, inverse, lookup = _distinct(codes, residue_stride * (d + 1))
        neighbours = _neighbours(vertices, lookup, strides, residue_stride, d)
        m = len(vertices)
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


def _vertex_codes(
    rem0: np.ndarray, rank: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int] | None:
    """Integer codes (d + 1, P) int64 of each point's d + 1 simplex vertices, their quotient
    strides (d,), and the code offset between residues; None where the code space exceeds
    int64 (:func:`_by_keys` then finds the vertices).

    Vertex r's key has coordinates ``(d + 1)·qᵢ + r`` with ``qᵢ = rem0ᵢ/(d + 1) − [rankᵢ >
    d − r]`` (the last coordinate is implied by Σ = 0); its code is ``r·R + Σᵢ (qᵢ − loᵢ)·sᵢ``,
    mixed radix over the first d quotients, each range padded by 2 so that the blur's
    neighbours (q ± 1) have codes too.
    """
    d1, p = rem0.shape
    d = d1 - 1
    q = rem0[:d] // d1
    low = q.min(axis=1).astype(np.int64) - 2
    span = q.max(axis=1).astype(np.int64) - low + 2
    # The code space's size in Python integers first: int64 products could wrap around.
    if math.prod(int(n) for n in span) * d1 >= 2**62:
        return None
    strides = np.ones(d, dtype=np.int64)
    for i in range(d - 2, -1, -1):
        strides[i] = strides[i + 1] * span[i + 1]
    residue_stride = int(strides[0] * span[0])
    codes = np.empty((d1, p), dtype=np.int64)
    codes[0] = -int(low @ strides)
    for i in range(d):
        codes[0] += q[i] * strides[i]
    # by_rank[k] = the stride of the coordinate of rank k (0 for the implied one): vertex r
    # subtracts the strides of the coordinates whose rank exceeds d − r.
    by_rank = np.zeros((d1, p), dtype=np.int64)
    by_rank.ravel()[(rank[:d].astype(np.int64) * p + np.arange(p)).ravel()] = np.repeat(strides, p)
    for r in range(1, d1):
        np.subtract(codes[r - 1], by_rank[d - r + 1], out=codes[r])
    for r in range(1, d1):
        codes[r] += r * residue_stride
    return codes, strides, residue_stride


class _TableLookup:
    """Lattice index of codes through a dense table over the code space (−1 where absent)."""

    def __init__(self, mark: np.ndarray, table: np.ndarray) -> None:
        self.mark, self.table = mark, table

    def __call__(self, codes: np.ndarray) -> np.ndarray:
        inside = (codes >= 0) & (codes < self.mark.size)
        safe = np.where(inside, codes, 0)
        return np.where(inside & self.mark[safe], self.table[safe], -1).astype(np.int32)


class _SortedLookup:
    """Lattice index of codes among the sorted distinct codes (−1 where absent)."""

    def __init__(self, vertices: np.ndarray) -> None:
        self.vertices = vertices

    def __call__(self, codes: np.ndarray) -> np.ndarray:
        at = np.minimum(np.searchsorted(self.vertices, codes), len(self.vertices) - 1)
        return np.where(self.vertices[at] == codes, at, -1).astype(np.int32)


def _distinct(
    codes: np.ndarray, space: int
) -> tuple[np.ndarray, np.ndarray, _TableLookup | _SortedLookup]:
    """The sorted distinct vertex codes, each code's lattice index (P·(d + 1),) int32, and a
    lookup from codes to lattice indices.

    A dense table over the code space [0, space) where it is at most :data:`TABLE_RATIO`
    times the number of codes and :data:`TABLE_MAX_ENTRIES`; else a sort of the distinct
    simplices' vertices (points of one simplex share their d + 1 codes, so the simplices,
    rows of codes, are found first).
    """
    flat = codes.ravel()
    if space <= min(TABLE_RATIO * flat.size, TABLE_MAX_ENTRIES):
        mark = np.zeros(space, dtype=bool)
        mark[flat] = True
        vertices = np.flatnonzero(mark)
        table = np.empty(space, dtype=np.int32)  # only the entries at vertices are read
        table[vertices] = np.arange(len(vertices), dtype=np.int32)
        return vertices, table[flat], _TableLookup(mark, table)
    d1 = codes.shape[1]
    _, first, which = np.unique(codes, axis=0, return_index=True, return_inverse=True)
    vertices, inverse = np.unique(codes[first].ravel(), return_inverse=True)
    inverse = inverse.reshape(-1, d1)[which.ravel()].ravel().astype(np.int32)
    return vertices, inverse, _SortedLookup(vertices)


def _neighbours(
    vertices: np.ndarray,
    lookup: _TableLookup | _SortedLookup,
    strides: np.ndarray,
    residue_stride: int,
    d: int,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each direction j, the lattice indices (M,) of every vertex's two neighbours
    along it (−1 where absent).

    The first neighbour is ``key − 1`` with ``key[j] + d``: in codes, a vertex of residue
    r ≥ 1 goes to residue r − 1 with ``q_j + 1``; residue 0 goes to residue d with ``qᵢ − 1``
    for every i ≠ j (direction d moves no quotient). The second is its mirror: n₂[n₁[a]] = a.
    """
    m = len(vertices)
    residue0 = vertices < residue_stride
    index = np.arange(m, dtype=np.int32)
    total = int(strides.sum())
    out = []
    for j in range(d + 1):
        s = int(strides[j]) if j < d else 0
        step = np.where(residue0, d * residue_stride - (total - s), s - residue_stride)
        first = lookup(vertices + step)
        second = np.full(m, -1, dtype=np.int32)
        found = first >= 0
        second[first[found]] = index[found]
        out.append((first, second))
    return out


def _by_keys(
    rem0: np.ndarray, rank: np.ndarray
) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]], int]:
    """Each point's vertices' lattice indices (P·(d + 1),) int32, the neighbours as
    :func:`_neighbours` gives them, and M, from the vertices' keys themselves (rows of d
    integers, sorted as rows): for features whose code space exceeds int64, at several
    times the codes' cost.

    Vertex r's key is ``rem0ᵢ + r − (d + 1)·[rankᵢ > d − r]`` (i < d); its first neighbour
    along direction j is ``key − 1`` with ``key[j] + d`` (j < d; along d every coordinate
    goes down by 1), the second its mirror.
    """
    d1, p = rem0.shape
    d = d1 - 1
    keys = np.empty((p, d1, d), dtype=np.int64)
    for r in range(d1):
        keys[:, r, :] = (rem0[:d] + r - d1 * (rank[:d] > d - r)).T
    vertices, inverse = np.unique(keys.reshape(-1, d), axis=0, return_inverse=True)
    m = len(vertices)
    index = np.arange(m, dtype=np.int32)
    neighbours = []
    for j in range(d1):
        step = np.full(d, -1, dtype=np.int64)
        if j < d:
            step[j] = d
        both = np.concatenate([vertices, vertices + step])
        _, group = np.unique(both, axis=0, return_inverse=True)
        owner = np.full(len(both), -1, dtype=np.int32)
        owner[group[:m]] = index
        first = owner[group[m:]]
        second = np.full(m, -1, dtype=np.int32)
        found = first >= 0
        second[first[found]] = index[found]
        neighbours.append((first, second))
    return inverse.astype(np.int32).ravel(), neighbours, m


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
