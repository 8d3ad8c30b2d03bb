"""The permutohedral lattice's vertices: which simplex vertices the points fall on, numbered
0 … M − 1, and each vertex's two neighbours along each of the lattice's d + 1 directions.

Vertex r of a point's enclosing simplex has the key ``rem0ᵢ + r − (d + 1)·[rankᵢ > d − r]``
(i < d; :func:`lowrank_gcrf.permutohedral.permutohedral_lattice` finds ``rem0`` and
``rank``). The vertices are found without forming the keys where possible:

* integer codes: every coordinate of vertex r's key is ≡ r (mod d + 1), so the key is r
  and a mixed-radix code of its quotients by d + 1 (:func:`_vertex_codes`);
* the distinct vertices by a dense table over the code space where it is at most
  :data:`TABLE_RATIO` times the number of codes (no sort), else by a sort;
* by sorting the keys themselves where the codes would overflow int64 (features spread
  over far more lattice cells than an image has pixels).
"""

from __future__ import annotations

import math

import numpy as np

#: The dense lookup table over the vertex code space is used up to this many entries per
#: code (bytes of marks plus a lazily touched int32 table); beyond it, a sort finds the
#: distinct vertices (an image of noise: about three times slower).
TABLE_RATIO = 64
#: The table's largest size whatever the number of codes (128 MiB of marks); a photograph's
#: code space is 3–22 times its codes, 2·10⁷ entries at 1024 × 1024.
TABLE_MAX_ENTRIES = 2**27


def lattice_vertices(
    rem0: np.ndarray, rank: np.ndarray
) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]], int]:
    """Each point's d + 1 vertices' lattice indices (P·(d + 1),) int32, point-major; for
    each direction j, every vertex's two neighbours along it (M,) int32 each, −1 where
    absent; and M, the number of distinct vertices.

    Parameters
    ----------
    rem0, rank : ndarray (d + 1, P)
        The points' remainder-0 lattice point and their coordinates' ranks, as
        pydensecrf's ``permutohedral.cpp`` finds them.
    """
    d = rem0.shape[0] - 1
    coded = _vertex_codes(rem0, rank)
    if coded is None:
        return _by_keys(rem0, rank)
    codes, strides, residue_stride = coded
    codes = np.ascontiguousarray(codes.T)  # (P, d + 1): a point's vertices adjacent
    vertices, inverse, lookup = _distinct(codes, residue_stride * (d + 1))
    return inverse, _neighbours(vertices, lookup, strides, residue_stride, d), len(vertices)


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
