"""The permutohedral lattice filter of :mod:`lowrank_gcrf.permutohedral`.

What these tests establish:

* ``PermutohedralLattice.filter`` is Krähenbühl's ``permutohedral.cpp`` (the dense CRF, as in
  pydensecrf) without its slice scale ``1/(1 + 2^-d)``: it matches a plain per-point
  transcription of that code's ``init`` and ``compute`` (below, :class:`Reference`) on
  hypothesis-drawn features, duplicated points and rank ties included, as a whole
  operator and per point (the same barycentric weights, the same number of vertices and of
  blur neighbours along each direction);
* the reference itself is right: its elevation is the C++ recurrence, and its barycentric
  weights are a convex combination of its vertex keys that reconstructs the elevated point;
* the filter is linear, equivariant under a permutation of the points, and invariant under a
  translation of the features by a vector that maps the lattice onto itself;
* on a small image it approximates the exact Gaussian kernel ``exp(−|fᵢ − fⱼ|²/2)``, after the
  symmetric normalisation the dense CRF applies, to a measured accuracy;
* non-finite features are refused; features spread over too many lattice cells for int64
  codes, far from the origin (past float32's and int32's integers), or absent give the
  exact lattice, a valid one, or the documented GCRFError, never another exception or a
  wrong answer;
* the table and sort paths that find the distinct vertices give bitwise the same lattice.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lowrank_gcrf import lattice_vertices as lv
from lowrank_gcrf import permutohedral as pl
from lowrank_gcrf.errors import GCRFError

# -- the reference: permutohedral.cpp, one point and one vertex at a time ----------------


def reference_elevation_matrix(d: int) -> np.ndarray:
    """The linear map of the C++ elevation loop, ``elevated[j] = Σ_{k≥j} cf_k − j·cf_{j−1}``
    with ``cf_k = f_k·scale_k``, as a float32 (d + 1, d) matrix."""
    inv_std_dev = math.sqrt(2.0 / 3.0) * (d + 1)
    scale = [inv_std_dev / math.sqrt((i + 1) * (i + 2)) for i in range(d)]
    e = np.zeros((d + 1, d))
    for j in range(d + 1):
        for k in range(j, d):
            e[j, k] = scale[k]
        if j > 0:
            e[j, j - 1] = -j * scale[j - 1]
    return e.astype(np.float32)


def reference_elevate_loop(features: np.ndarray) -> np.ndarray:
    """The C++ elevation loop itself, per point, in float64: (P, d + 1)."""
    p, d = features.shape
    inv_std_dev = math.sqrt(2.0 / 3.0) * (d + 1)
    scale = [inv_std_dev / math.sqrt((i + 1) * (i + 2)) for i in range(d)]
    out = np.zeros((p, d + 1))
    for n in range(p):
        f = [float(x) for x in features[n]]
        sm = 0.0
        for j in range(d, 0, -1):
            cf = f[j - 1] * scale[j - 1]
            out[n, j] = sm - j * cf
            sm += cf
        out[n, 0] = sm
    return out


class Reference:
    """``permutohedral.cpp``'s non-SSE ``init`` and ``seqCompute``, transcribed point by point
    with a dict as the hash table, values in float64 and without the slice scale alpha.

    The elevation is the one float32 product ``E f`` (E from the C++ recurrence, which
    :func:`test_reference_elevation_is_the_cpp_loop` checks): the module elevates the same
    way, so that a point on a rounding or rank tie is decided identically by both, and the
    comparison is exact in structure. The rounding and the rank are then the C++ code's, in
    float32 as there.
    """

    def __init__(self, features: np.ndarray) -> None:
        features = np.asarray(features, dtype=np.float32)
        p, d = features.shape
        d1 = d + 1
        self.d = d
        self.elevated = np.ascontiguousarray((reference_elevation_matrix(d) @ features.T).T)
        down_factor = np.float32(1.0) / np.float32(d1)
        up_factor = np.float32(d1)
        canonical = [[i if j <= d - i else i - d1 for j in range(d1)] for i in range(d1)]
        self.table: dict[tuple[int, ...], int] = {}
        self.offsets = np.zeros((p, d1), dtype=np.int64)
        self.barycentric = np.zeros((p, d1))
        self.full_keys = np.zeros((p, d1, d1), dtype=np.int64)  # point, remainder, coordinate
        for n in range(p):
            e = self.elevated[n]
            # The closest remainder-0 point: up only when strictly closer (a tie goes down).
            rem0 = [0] * d1
            total = 0
            for i in range(d1):
                v = down_factor * e[i]
                up = np.float32(math.ceil(v)) * up_factor
                down = np.float32(math.floor(v)) * up_factor
                rem0[i] = int(up) if up - e[i] < e[i] - down else int(down)
                # C++ accumulates rd2·down_factor into an int; the sum is exact here.
                total += rem0[i] // d1
            rank = [0] * d1
            for i in range(d):
                di = e[i] - np.float32(rem0[i])
                for j in range(i + 1, d1):
                    if di < e[j] - np.float32(rem0[j]):
                        rank[i] += 1
                    else:
                        rank[j] += 1
            for i in range(d1):
                rank[i] += total
                if rank[i] < 0:
                    rank[i] += d1
                    rem0[i] += d1
                elif rank[i] > d:
                    rank[i] -= d1
                    rem0[i] -= d1
            b = [0.0] * (d + 2)
            for i in range(d1):
                v = (float(e[i]) - rem0[i]) / d1
                b[d - rank[i]] += v
                b[d - rank[i] + 1] -= v
            b[0] += 1.0 + b[d + 1]
            for r in range(d1):
                key = tuple(rem0[i] + canonical[r][rank[i]] for i in range(d1))
                self.full_keys[n, r] = key
                self.offsets[n, r] = self.table.setdefault(key[:d], len(self.table))
                self.barycentric[n, r] = b[r]
        # The blur's neighbours along direction j: n1 = key − 1 with key[j] + d, n2 its mirror
        # (the implied last coordinate is the one moved when j = d); −1 where absent.
        self.neighbours = []
        for j in range(d1):
            n1s, n2s = [], []
            for key in self.table:
                n1 = [k - 1 for k in key]
                n2 = [k + 1 for k in key]
                if j < d:
                    n1[j] = key[j] + d
                    n2[j] = key[j] - d
                n1s.append(self.table.get(tuple(n1), -1))
                n2s.append(self.table.get(tuple(n2), -1))
            self.neighbours.append((n1s, n2s))

    @property
    def num_vertices(self) -> int:
        return len(self.table)

    def filter(self, values: np.ndarray) -> np.ndarray:
        """Splat, blur along j = 0..d in turn (each on the previous one's output), slice."""
        values = np.asarray(values, dtype=np.float64)
        p, d1 = self.offsets.shape
        lattice = np.zeros((self.num_vertices, values.shape[0]))
        for n in range(p):
            for r in range(d1):
                lattice[self.offsets[n, r]] += self.barycentric[n, r] * values[:, n]
        zero = np.zeros(values.shape[0])
        for n1s, n2s in self.neighbours:
            blurred = np.zeros_like(lattice)
            for i in range(self.num_vertices):
                a = lattice[n1s[i]] if n1s[i] >= 0 else zero
                b = lattice[n2s[i]] if n2s[i] >= 0 else zero
                blurred[i] = lattice[i] + 0.5 * (a + b)
            lattice = blurred
        out = np.zeros_like(values)
        for n in range(p):
            for r in range(d1):
                out[:, n] += self.barycentric[n, r] * lattice[self.offsets[n, r]]
        return out


# -- hypothesis-drawn lattices -----------------------------------------------------------


@st.composite
def feature_sets(draw, max_points: int = 40):
    """Features (P, d) float32, |f| ≤ 20, with some points repeated: hypothesis's favourite
    values (0, integers, range ends) put points on rank ties."""
    d = draw(st.integers(1, 5))
    p = draw(st.integers(1, max_points))
    distinct = draw(st.integers(1, p))
    base = draw(hnp.arrays(np.float32, (distinct, d), elements=st.floats(-20, 20, width=32)))
    rows = draw(st.lists(st.integers(0, distinct - 1), min_size=p, max_size=p))
    return base[np.array(rows)]


def values_for(draw, p: int) -> np.ndarray:
    count = draw(st.integers(1, 3))
    return draw(hnp.arrays(np.float32, (count, p), elements=st.floats(-1, 1, width=32)))


def tolerance(reference: Reference, values: np.ndarray) -> float:
    """1e-4 of the largest filtered |v|, the sum of the magnitudes of the terms that make an
    output. The module computes in float32 (weights, splat, d + 1 blurs, slice: a few dozen
    roundings of 6e-8 per output, relative to that sum), the reference in float64, and their
    weights differ by float32 rounding: measured differences are at most 2.4e-7 of it (400
    random lattices), so 1e-4 leaves a wide margin while a wrong vertex, weight or neighbour
    costs a whole term (≥ 1e-2 of it unless its weight is tiny)."""
    return 1e-4 * max(float(np.abs(reference.filter(np.abs(values))).max()), 1e-30)


@given(data=st.data())
@settings(max_examples=100)
def test_filter_matches_the_cpp_reference(data):
    features = data.draw(feature_sets())
    p, d = features.shape
    values = values_for(data.draw, p)
    lattice = pl.permutohedral_lattice(features)
    reference = Reference(features)
    tol = tolerance(reference, values)
    np.testing.assert_allclose(lattice.filter(values), reference.filter(values), rtol=0, atol=tol)
    # The whole operator W B Wᵀ, column by column.
    eye = np.eye(p, dtype=np.float32)
    np.testing.assert_allclose(
        lattice.filter(eye), reference.filter(eye), rtol=0, atol=tolerance(reference, eye)
    )
    # The same lattice, whatever order the vertices are in: as many vertices, each point's
    # weights, the Gram W Wᵀ (which points share a vertex, and with what weights), and as
    # many blur neighbours along each direction.
    assert lattice.num_vertices == reference.num_vertices
    w = lattice.weights.toarray().astype(np.float64)
    assert lattice.weights.shape == (p, reference.num_vertices)
    np.testing.assert_allclose(
        np.sort(w, axis=1)[:, -(d + 1) :], np.sort(reference.barycentric, axis=1), atol=1e-6
    )
    dense = np.zeros((p, reference.num_vertices))
    for n in range(p):
        dense[n, reference.offsets[n]] += reference.barycentric[n]
    np.testing.assert_allclose(w @ w.T, dense @ dense.T, atol=1e-5)
    assert len(lattice.blur) == d + 1
    for step, (n1s, n2s) in zip(lattice.blur, reference.neighbours, strict=True):
        halves = int(np.count_nonzero(step.toarray() == 0.5))
        assert halves == sum(n >= 0 for n in n1s) + sum(n >= 0 for n in n2s)


@pytest.mark.parametrize("d", [1, 2, 3, 5])
def test_ties_are_resolved_as_in_the_cpp_code(d):
    """Points whose elevation sits exactly on a rank tie (zero coordinates: equal elevated
    coordinates) or on a lattice point (all zero), where the C++ code's tie-break, an equal
    pair ranked by its index, decides the simplex. (The rounding's tie-break is not pinned
    down: a float32 elevation lands exactly halfway between multiples of d + 1 only by
    coincidence, and where it does the wrap-around may well lead both choices to one simplex.)"""
    rng = np.random.default_rng(d)
    features = rng.uniform(-5, 5, size=(30, d)).astype(np.float32)
    features[:10] = 0.0
    features[10:20, : (d + 1) // 2] = 0.0
    features[20:25] = np.round(features[20:25])
    values = rng.uniform(-1, 1, size=(2, 30)).astype(np.float32)
    reference = Reference(features)
    np.testing.assert_allclose(
        pl.permutohedral_lattice(features).filter(values),
        reference.filter(values),
        rtol=0,
        atol=tolerance(reference, values),
    )


# -- the reference itself ----------------------------------------------------------------


@given(features=feature_sets(max_points=10))
def test_reference_elevation_is_the_cpp_loop(features):
    elevated = Reference(features).elevated.astype(np.float64)
    loop = reference_elevate_loop(features)
    scale = 1.0 + np.abs(loop).max()
    np.testing.assert_allclose(elevated, loop, rtol=0, atol=1e-6 * scale)
    np.testing.assert_allclose(elevated.sum(axis=1), 0.0, atol=1e-5 * scale)


@given(features=feature_sets(max_points=20))
def test_reference_barycentric_weights_reconstruct_the_point(features):
    """The reference's simplex encloses the point: its vertices are the remainder-r lattice
    points (coordinates ≡ r mod d + 1, summing to 0), its weights are convex, and they
    reconstruct the elevated point from the vertices' keys."""
    reference = Reference(features)
    d1 = reference.d + 1
    keys = reference.full_keys
    assert (keys.sum(axis=2) == 0).all()
    assert ((keys - np.arange(d1)[None, :, None]) % d1 == 0).all()
    b = reference.barycentric
    assert (b >= -1e-6).all()
    np.testing.assert_allclose(b.sum(axis=1), 1.0, atol=1e-9)
    rebuilt = np.einsum("nr,nrc->nc", b, keys.astype(np.float64))
    # The float32 elevation is off the plane Σ = 0 by its roundings; the weights ignore that
    # component (they depend on differences of coordinates), so they rebuild the projection.
    elevated = reference.elevated.astype(np.float64)
    on_plane = elevated - elevated.mean(axis=1, keepdims=True)
    scale = 1.0 + np.abs(elevated).max()
    np.testing.assert_allclose(rebuilt, on_plane, rtol=0, atol=1e-12 * scale)


# -- properties of the module ------------------------------------------------------------


@given(features=feature_sets())
def test_weights_are_convex_on_d_plus_1_vertices(features):
    p, d = features.shape
    w = pl.permutohedral_lattice(features).weights
    assert w.dtype == np.float32
    np.testing.assert_array_equal(np.diff(w.indptr), d + 1)
    # The d + 1 vertices of a simplex are distinct.
    for n in range(p):
        assert len(set(w.indices[w.indptr[n] : w.indptr[n + 1]].tolist())) == d + 1
    assert (w.data >= 0).all()
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-6)


@given(data=st.data())
def test_filter_is_linear(data):
    features = data.draw(feature_sets())
    p = features.shape[0]
    u, v = values_for(data.draw, p)[:1], values_for(data.draw, p)[:1]
    # Coefficients away from 0: the filter computes in float32, where a tiny coefficient
    # would underflow and the comparison would test float32's range, not linearity.
    coefficient = st.floats(0.01, 3) | st.floats(-3, -0.01)
    a, b = data.draw(coefficient), data.draw(coefficient)
    lattice = pl.permutohedral_lattice(features)
    combined = lattice.filter(a * u.astype(np.float64) + b * v)
    separate = a * lattice.filter(u).astype(np.float64) + b * lattice.filter(v)
    scale = (abs(a) + abs(b)) * float(lattice.filter(np.ones((1, p))).max())
    np.testing.assert_allclose(combined, separate, rtol=0, atol=1e-5 * scale)


@given(data=st.data())
def test_filter_is_equivariant_under_a_permutation_of_the_points(data):
    features = data.draw(feature_sets())
    p = features.shape[0]
    values = values_for(data.draw, p)
    order = np.array(data.draw(st.permutations(range(p))), dtype=np.int64)
    out = pl.permutohedral_lattice(features).filter(values)
    permuted = pl.permutohedral_lattice(features[order]).filter(values[:, order])
    scale = float(pl.permutohedral_lattice(features).filter(np.abs(values)).max())
    np.testing.assert_allclose(permuted, out[:, order], rtol=0, atol=1e-5 * max(scale, 1e-30))


@pytest.mark.parametrize("d", [1, 2, 3, 5])
def test_filter_is_invariant_under_a_lattice_translation(d):
    """Features moved by t with E t = (d + 1)·(e₀ − e₁), a remainder-0 lattice vector: the
    same simplices, keys shifted. float32 moves the points by a rounding, and the filter is
    continuous in the features, so the output moves by about that much."""
    rng = np.random.default_rng(10 + d)
    features = rng.uniform(-4, 4, size=(40, d))
    values = rng.uniform(-1, 1, size=(2, 40)).astype(np.float32)
    shift = np.zeros(d + 1)
    shift[0], shift[1] = d + 1, -(d + 1)
    e = reference_elevation_matrix(d).astype(np.float64)
    t, *_ = np.linalg.lstsq(e, shift, rcond=None)
    np.testing.assert_allclose(e @ t, shift, atol=1e-5)
    before = pl.permutohedral_lattice(features.astype(np.float32))
    after = pl.permutohedral_lattice((features + t).astype(np.float32))
    assert after.num_vertices == before.num_vertices
    scale = float(before.filter(np.abs(values)).max())
    np.testing.assert_allclose(after.filter(values), before.filter(values), atol=1e-4 * scale)


# -- against the exact Gaussian ----------------------------------------------------------


def image_features(sxy: float = 3.0, srgb: float = 20.0) -> np.ndarray:
    """A 12 × 16 synthetic photograph (two colour regions on a gradient, with noise) and
    its appearance features (x/σxy, y/σxy, rgb/σrgb): the dense CRF's bilateral kernel."""
    rng = np.random.default_rng(0)
    h, w = 12, 16
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    rgb = np.stack([8 * x, 10 * y, np.full_like(x, 100.0)], axis=-1)
    rgb[(x - 5) ** 2 + (y - 6) ** 2 < 16] = (200, 40, 60)
    rgb[8:, 10:] = (30, 180, 90)
    rgb += rng.normal(0, 6, size=rgb.shape)
    return np.concatenate([x[..., None] / sxy, y[..., None] / sxy, rgb / srgb], axis=-1).reshape(
        h * w, 5
    )


def exact_kernel(features: np.ndarray) -> np.ndarray:
    sq = ((features[:, None, :] - features[None, :, :]) ** 2).sum(axis=-1)
    return np.exp(-sq / 2)


def test_normalised_filter_approximates_the_normalised_gaussian():
    """``D^{-1/2} W B Wᵀ D^{-1/2} q`` against ``Δ^{-1/2} K Δ^{-1/2} q`` (D, Δ the row sums)
    on probability-like q: the operator the dense CRF's message passing applies. The lattice
    is an approximation (its kernel is a sum of tents, not a Gaussian); pydensecrf is
    reported about 6% off on probabilities after normalisation. Measured here: 4.4% relative
    Frobenius error (4.4–4.5% over other draws of q); bound 6%."""
    features = image_features()
    p = features.shape[0]
    lattice = pl.permutohedral_lattice(features)
    k = exact_kernel(features)
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, size=(3, p))
    q = np.exp(logits) / np.exp(logits).sum(axis=0)
    d_lattice = lattice.filter(np.ones((1, p))).astype(np.float64)[0]
    approx = lattice.filter(q / np.sqrt(d_lattice)) / np.sqrt(d_lattice)
    d_exact = k.sum(axis=1)
    exact = (q / np.sqrt(d_exact)) @ k / np.sqrt(d_exact)
    error = np.linalg.norm(approx - exact) / np.linalg.norm(exact)
    assert error < ERROR_NORMALISED, error


def test_lattice_kernel_is_a_multiple_of_the_gaussian():
    """The best scalar multiple c·K of the exact kernel fitting the dense W B Wᵀ (least
    squares): the lattice kernel's shape, scale aside (c ≈ 0.50). Measured: 14.9% relative
    Frobenius error; bound 18%. Larger than after normalisation: the lattice's effective
    bandwidth and its scale vary with the point's place in its simplex, which the row sums
    largely divide out."""
    features = image_features()
    p = features.shape[0]
    dense = pl.permutohedral_lattice(features).filter(np.eye(p, dtype=np.float32))
    dense = dense.astype(np.float64)
    k = exact_kernel(features)
    c = float((dense * k).sum() / (k * k).sum())
    error = np.linalg.norm(dense - c * k) / np.linalg.norm(c * k)
    assert error < ERROR_SCALED, error


ERROR_NORMALISED = 0.06
ERROR_SCALED = 0.18


# -- bad input and the two ways of finding the vertices ----------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_features_are_refused(bad):
    features = np.zeros((5, 3), dtype=np.float32)
    features[2, 1] = bad
    with pytest.raises(GCRFError, match="finite"):
        pl.permutohedral_lattice(features)


def spread_points(d: int, offset: float, spread: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (offset + spread * rng.uniform(-1, 1, size=(6, d))).astype(np.float32)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize(
    ("d", "spread", "seed"),
    [(3, 3e5, 0), (3, 1e6, 0), (4, 1e5, 1), (5, 1e4, 1), (5, 3e4, 0), (5, 1e6, 1)],
)
def test_spread_features_give_the_exact_lattice(d, spread, seed):
    """Six points over ~10⁴–10⁶ lattice cells a coordinate: their vertex codes need more
    than int64 (mixed radix over d quotients), yet the elevation stays below 2²⁴, where
    float32 holds the lattice's integers exactly and the reference is exact: the reference's
    filter, found from the vertices' keys."""
    features = spread_points(d, 0.0, spread, seed)
    assert np.abs(Reference(features).elevated).max() < 2**24
    # Codes beyond int64 make the lattice find its vertices by their keys: no error here.
    lattice = pl.permutohedral_lattice(features)
    reference = Reference(features)
    eye = np.eye(len(features), dtype=np.float32)
    np.testing.assert_allclose(
        lattice.filter(eye), reference.filter(eye), rtol=0, atol=tolerance(reference, eye)
    )


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize(
    ("d", "offset", "spread"),
    [(2, 1e6, 10.0), (2, 1e8, 10.0), (2, 5e8, 10.0), (2, 1e10, 10.0), (5, 0.0, 1e30)],
)
def test_far_features_give_an_answer_or_a_gcrf_error(d, offset, spread):
    """Features whose elevation passes 2²⁴ (float32 no longer holds every multiple of
    d + 1) or 2³¹ (int32): float32 merges nearby points, and the C++ code's short keys
    overflow long before, so there is no reference; but the answer must still be a lattice
    (convex weights on d + 1 distinct vertices, a finite positive filter of ones) or the
    documented GCRFError, never another exception from deep inside."""
    features = spread_points(d, offset, spread)
    try:
        lattice = pl.permutohedral_lattice(features)
    except GCRFError:
        return
    w = lattice.weights
    np.testing.assert_array_equal(np.diff(w.indptr), d + 1)
    for n in range(len(features)):
        assert len(set(w.indices[w.indptr[n] : w.indptr[n + 1]].tolist())) == d + 1
    assert (w.data >= 0).all()
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-6)
    out = lattice.filter(np.ones((1, len(features))))
    assert np.isfinite(out).all()
    assert (out > 0).all()


def test_no_points_give_an_empty_lattice():
    lattice = pl.permutohedral_lattice(np.zeros((0, 3), dtype=np.float32))
    assert lattice.num_points == 0 and lattice.num_vertices == 0 and len(lattice.blur) == 4
    assert lattice.filter(np.zeros((2, 0))).shape == (2, 0)
    assert lattice.self_weights().shape == (0,)


def test_many_dimensions_take_every_path():
    """d = 15 (a 13-channel image's features): the simplices' codes in the sort path are
    rows, not one integer that d + 1 to the power d + 1 would overflow."""
    rng = np.random.default_rng(7)
    features = rng.uniform(0, 3, size=(60, 15)).astype(np.float32)
    values = rng.uniform(0, 1, size=(2, 60)).astype(np.float32)
    with pytest.MonkeyPatch.context() as patch:
        assert_the_three_paths_agree(features, values, patch)


def assert_same_lattice(a: pl.PermutohedralLattice, b: pl.PermutohedralLattice) -> None:
    np.testing.assert_array_equal(a.weights.toarray(), b.weights.toarray())
    for x, y in zip(a.blur, b.blur, strict=True):
        np.testing.assert_array_equal(x.toarray(), y.toarray())


def assert_the_three_paths_agree(features, values, patch):
    """The distinct vertices by the dense table, by a sort of the codes, and by the keys
    (forced by codes that 'overflow') give one lattice."""
    patch.setattr(lv, "TABLE_RATIO", 10**6)
    table = pl.permutohedral_lattice(features)
    patch.setattr(lv, "TABLE_RATIO", 0)
    sort = pl.permutohedral_lattice(features)
    patch.setattr(lv, "_vertex_codes", lambda rem0, rank: None)
    keys = pl.permutohedral_lattice(features)
    assert_same_lattice(table, sort)
    np.testing.assert_array_equal(table.filter(values), sort.filter(values))
    # The keys number the vertices in another order: the operator is the same, its sums
    # run in another order (float32 rounding).
    eye = np.eye(features.shape[0], dtype=np.float32)
    np.testing.assert_allclose(keys.filter(eye), table.filter(eye), rtol=1e-5, atol=1e-6)


@given(data=st.data())
@settings(max_examples=15)
def test_table_sort_and_key_paths_agree(data):
    features = data.draw(feature_sets())
    values = values_for(data.draw, features.shape[0])
    with pytest.MonkeyPatch.context() as patch:
        assert_the_three_paths_agree(features, values, patch)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_table_sort_and_key_paths_agree_on_noise(seed, monkeypatch):
    """Noise-like features (every pixel its own simplex) and image-like ones."""
    rng = np.random.default_rng(seed)
    noise = rng.uniform(0, 4, size=(400, 5)).astype(np.float32)
    for features in (noise, image_features().astype(np.float32)):
        values = rng.uniform(0, 1, size=(3, features.shape[0])).astype(np.float32)
        with pytest.MonkeyPatch.context() as patch:
            assert_the_three_paths_agree(features, values, patch)
