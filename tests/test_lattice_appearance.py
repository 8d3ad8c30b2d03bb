"""The appearance lattices of a batch: the index form the adapters apply against the sparse
matrices the core applies, and the symmetry of the blur steps that the PyTorch adapter's
backward relies on (Bᵀ is the steps in reverse).

Tolerances: both forms sum the same float32 products in another order, relative ~1e-7 of
values O(1) times w_a ≤ 40 (atol 1e-4 leaves two orders of magnitude).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from refine_cases import inputs

from lowrank_gcrf.errors import GCRFError
from lowrank_gcrf.lattice_appearance import LatticeArrays, appearance_lattices
from lowrank_gcrf.refine_inputs import RefineParameters
from lowrank_gcrf.refine_passes import LATTICE_APPEARANCE_WEIGHT


def gather_message(g: LatticeArrays, q: np.ndarray) -> np.ndarray:
    """``w_a (N − diag N) q`` (n, L, P) by the index form's splat, blur and slice."""
    n, labels, pixels = q.shape
    flat = q.transpose(0, 2, 1).reshape(n * pixels, labels).astype(np.float64)
    splat = (g.scale[:, None] * flat)[:, None, :] * g.barycentric[:, :, None]
    x = np.zeros((g.num_vertices, labels))
    np.add.at(x, g.vertices.reshape(-1), splat.reshape(-1, labels))
    for columns, weights in zip(g.neighbours, g.weights, strict=True):
        x = (x[columns] * weights[:, :, None]).sum(axis=1)
    sliced = g.scale[:, None] * (x[g.vertices] * g.barycentric[:, :, None]).sum(axis=1)
    out = LATTICE_APPEARANCE_WEIGHT * (sliced - g.own[:, None] * flat)
    return out.reshape(n, pixels, labels).transpose(0, 2, 1)


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    batch=st.integers(1, 3),
    spatial=st.sampled_from([(7,), (5, 6), (3, 4, 5)]),
    sxy=st.sampled_from([1.5, 4.0]),
    srgb=st.sampled_from([20.0, 80.0]),
)
def test_index_form_is_the_sparse_message(seed, batch, spatial, sxy, srgb):
    probs, image = inputs(seed, 4, spatial, batch=(batch,))
    lattices = appearance_lattices(image, RefineParameters(sxy=sxy, srgb=srgb))
    q = probs.reshape(batch, 4, -1)
    expected = lattices.message(LATTICE_APPEARANCE_WEIGHT, np.float64)(q)
    g = lattices.arrays(len(spatial) + 3)
    assert g.vertices.shape == (batch * q.shape[-1], len(spatial) + 4)
    assert g.num_vertices == sum(lattice.num_vertices for lattice in lattices.lattices)
    np.testing.assert_allclose(gather_message(g, q), expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("spatial", [(9, 11), (4, 5, 6)])
def test_blur_steps_are_symmetric(spatial):
    _, image = inputs(3, 2, spatial, batch=(2,))
    for lattice in appearance_lattices(image, RefineParameters(sxy=2.0, srgb=30.0)).lattices:
        for step in lattice.blur:
            assert abs(step - step.T).max() == 0


def test_empty_batch_has_an_empty_index_form():
    image = np.zeros((0, 3, 4, 5), dtype=np.uint8)
    g = appearance_lattices(image, RefineParameters()).arrays(5)
    assert g.vertices.shape == (0, 6) and g.neighbours.shape == (6, 0, 3)
    assert g.scale.shape == g.own.shape == (0,) and g.num_vertices == 0


def test_csr_factors_are_canonical_and_the_index_form():
    """W, Wᵀ and the blur steps in CSR with sorted, unique columns and no stored zeros (as
    cuSPARSE expects), equal to the index form's fixed-width rows."""
    _, image = inputs(5, 2, (6, 7), batch=(2,))
    g = appearance_lattices(image, RefineParameters(sxy=2.0, srgb=30.0)).arrays(5)
    before = [a.copy() for a in (g.vertices, g.barycentric, g.neighbours, g.weights)]
    weights, splat, blur = g.csr_factors()
    for a, b in zip(before, (g.vertices, g.barycentric, g.neighbours, g.weights), strict=True):
        np.testing.assert_array_equal(a, b)  # the arrays themselves are left as they were

    def dense(columns, values):
        rows = columns.shape[0]
        out = np.zeros((rows, g.num_vertices))
        np.add.at(
            out, (np.repeat(np.arange(rows), columns.shape[1]), columns.ravel()), values.ravel()
        )
        return out

    expected = [dense(g.vertices, g.barycentric), dense(g.vertices, g.barycentric).T]
    expected += [dense(c, v) for c, v in zip(g.neighbours, g.weights, strict=True)]
    for m, want in zip([weights, splat, *blur], expected, strict=True):
        np.testing.assert_array_equal(m.toarray(), want)
        assert m.indices.dtype == m.indptr.dtype == np.int64 and m.has_canonical_format
        assert np.all(m.data != 0)


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    batch=st.integers(1, 3),
    spatial=st.sampled_from([(7,), (5, 6), (3, 4, 5)]),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_csr_message_is_the_image_by_image_message(seed, batch, spatial, dtype):
    """The batch's CSR factors in one product (CuPy's path, here in SciPy's matrices) give
    the per-image SciPy message, in the probabilities' dtype, leaving them as they were."""
    probs, image = inputs(seed, 4, spatial, batch=(batch,))
    lattices = appearance_lattices(image, RefineParameters(sxy=2.0, srgb=30.0))
    q = probs.reshape(batch, 4, -1).astype(dtype)
    before = q.copy()
    expected = lattices.message(LATTICE_APPEARANCE_WEIGHT, dtype)(q)
    got = lattices.csr_message(
        np, LATTICE_APPEARANCE_WEIGHT, dtype, device="cpu", feature_dims=len(spatial) + 3
    )(q)
    assert got.dtype == dtype and got.shape == q.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(q, before)


def test_csr_message_of_an_empty_batch():
    image = np.zeros((0, 3, 4, 5), dtype=np.uint8)
    message = appearance_lattices(image, RefineParameters()).csr_message(
        np, 1.0, np.float64, device="cpu", feature_dims=5
    )
    assert message(np.zeros((0, 2, 20))).shape == (0, 2, 20)


def test_csr_message_names_the_libraries_it_serves():
    xps = pytest.importorskip("array_api_strict")
    _, image = inputs(1, 2, (4, 5))
    lattices = appearance_lattices(image[None], RefineParameters())
    with pytest.raises(GCRFError, match="NumPy and CuPy arrays only"):
        lattices.csr_message(xps, 1.0, xps.float64, device=None, feature_dims=5)
