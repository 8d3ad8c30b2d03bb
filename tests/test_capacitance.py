"""CG in the capacitance space (``lowrank_gcrf.capacitance``), against float64 maths.

The dense-reference hypothesis tests of ``test_solve.py`` run every general and Potts
``method="cg"`` draw with D < n (and D ≤ 128 for the general model) through this path; here
are the identities it rests on, the choice of space, and the masks of a batch. float64
identities hold to a few ε·‖·‖ (1e-12 relative). General and Potts only: the signed model
has no capacitance CG (its CG iterates on the unknowns).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lowrank_gcrf as lg
from lowrank_gcrf import woodbury
from lowrank_gcrf.operators import Factorization
from lowrank_gcrf.testing import (
    dense_matrix,
    make_general_system,
    make_potts_system,
    potts_dense_matrix,
)


def _operator(seed=0, rank=4, pixels=12, labels=3, kappa=100.0, batch_shape=()):
    s = make_potts_system(
        seed, rank=rank, pixels=pixels, labels=labels, kappa=kappa, batch_shape=batch_shape
    )
    return lg.PottsOperator(s.embeddings, s.lam, num_labels=labels), s


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    rank=st.integers(1, 6),
    extra=st.integers(1, 8),
    labels=st.integers(2, 5),
    log10_kappa=st.floats(0.3, 5.0),
)
def test_correction_residual_identity_and_bound(seed, rank, extra, labels, log10_kappa):
    """``r − M(r − ZÂ)/λ = −r_Z Â/λ`` with ``r_Z = C(rÂᵀ) − SZ``, for any Z, and so
    ``‖r_x‖ ≤ ‖r_Z‖/√λ`` when λ > ‖Â‖₂² (docs/maths.md)."""
    op, s = _operator(seed, rank, rank + extra, labels, 10.0**log10_kappa)
    system = op._cg_factorization().capacitance
    rng = np.random.default_rng(seed)
    r = rng.standard_normal((labels, rank + extra))
    Z = rng.standard_normal((labels, rank))
    lam = float(s.lam)
    new_residual = r - op.matvec(system.lift(r, Z, np.asarray(True)))
    r_z = system.project(r) - system.matvec(Z)
    expected = -r_z @ s.embeddings / lam
    scale = np.linalg.norm(r) + np.linalg.norm(Z) * np.linalg.norm(s.embeddings)
    np.testing.assert_allclose(new_residual, expected, rtol=0, atol=1e-12 * scale)
    assert np.linalg.norm(expected) <= np.linalg.norm(r_z) / np.sqrt(lam) * (1 + 1e-12)


def test_capacitance_operator_is_the_dense_one():
    """S = λI + C ⊗ G as a dense (L·D)² matrix: symmetric, with eigenvalues among M's."""
    op, s = _operator(1, rank=3, pixels=7, labels=4, kappa=1e3)
    system = op._cg_factorization().capacitance
    n = 4 * 3
    S = np.stack([system.matvec(e.reshape(4, 3)).reshape(-1) for e in np.eye(n)], axis=1)
    np.testing.assert_allclose(S, S.T, atol=1e-12)
    M = potts_dense_matrix(s.embeddings, s.lam, 4)
    eig_m = np.linalg.eigvalsh(M)
    for value in np.linalg.eigvalsh(S):
        assert np.min(np.abs(eig_m - value)) <= 1e-9 * eig_m[-1]


@pytest.mark.parametrize(
    ("rank", "pixels", "kappa", "expected"),
    [
        (4, 12, 1e3, True),  # D < P: CG on L×D unknowns
        (12, 4, 1e3, False),  # D ≥ P: no smaller space
        (400, 401, 1.01, False),  # ‖Â‖_F² < λ proves it and the Gram costs > 2 iterations
        (400, 401, 1e3, True),  # the Cholesky proof computed the Gram anyway
    ],
    ids=["small-D", "D>=P", "frobenius-large-D", "cholesky-large-D"],
)
def test_which_space_cg_iterates_in(rank, pixels, kappa, expected):
    op, s = _operator(2, rank=rank, pixels=pixels, labels=2, kappa=kappa)
    _, info = op.solve(s.b, method="cg", rtol=1e-10)
    assert (info.factorization.capacitance is not None) == expected
    np.testing.assert_allclose(
        op.solve(s.b, method="direct", rtol=1e-12)[0], s.reference(), rtol=1e-8, atol=1e-12
    )


def test_same_iterations_as_cg_on_the_unknowns():
    """Mathematically the same Krylov method on a smaller system: in float64 the two need
    the same number of iterations to within a few (rounding orders them differently)."""
    op, s = _operator(3, rank=6, pixels=40, labels=5, kappa=1e4)
    x, info = op.solve(s.b, method="cg", rtol=1e-10)
    unknowns = Factorization(op._token, certificate="cholesky")
    x_p, info_p = op.solve(s.b, method="cg", rtol=1e-10, factorization=unknowns)
    assert info.factorization.capacitance is not None
    assert abs(int(info.iterations) - int(info_p.iterations)) <= 3
    assert float(info.residual) <= 1e-10 and float(info_p.residual) <= 1e-10
    np.testing.assert_allclose(x, x_p, rtol=1e-6, atol=1e-12)


def test_rhs_outside_row_space_needs_no_iteration():
    """b ⟂ the rows of Â: M b = λ b, the correction is b/λ with Z = 0 (no CG step, no
    breakdown on the zero right-hand side)."""
    op, s = _operator(4, rank=3, pixels=10, labels=3)
    Q, _ = np.linalg.qr(s.embeddings.T, mode="complete")
    b = np.random.default_rng(0).standard_normal((3, 7)) @ Q[:, 3:].T
    x, info = op.solve(b, method="cg", rtol=1e-12)
    assert int(info.iterations) == 0
    np.testing.assert_allclose(x, b / s.lam, rtol=1e-12)


def test_converged_system_of_a_batch_is_left_alone():
    """A system that starts converged (x0 its solution) must not move while the other
    iterates: the correction is masked, not (r − ZÂ)/λ with Z = 0."""
    op, s = _operator(5, rank=4, pixels=15, labels=3, batch_shape=(2,))
    exact = s.reference()
    x0 = np.stack([exact[0], np.zeros_like(exact[1])])
    x, info = op.solve(s.b, x0=x0, method="cg", rtol=1e-6)
    np.testing.assert_array_equal(x[0], exact[0])
    assert list(info.iterations) == [0, info.iterations[1]] and info.iterations[1] > 0
    np.testing.assert_allclose(x[1], exact[1], rtol=1e-5)


def test_backward_reuses_the_forward_gram(monkeypatch):
    """The forward's factorization carries the capacitance system: the backward solve by CG
    computes no Gram of its own."""
    op, s = _operator(6, rank=4, pixels=15, labels=3, kappa=1e3)
    x, info = op.solve(s.b, method="cg", rtol=1e-10)
    calls = []
    original = woodbury.working_gram

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr("lowrank_gcrf.potts.working_gram", counting)
    _, g_b, _, binfo = op.vjp(
        x, np.ones_like(x), method="cg", rtol=1e-10, factorization=info.factorization
    )
    assert calls == [] and binfo.factorization is info.factorization
    M = potts_dense_matrix(s.embeddings, s.lam, 3)
    np.testing.assert_allclose(g_b.reshape(-1), np.linalg.solve(M, np.ones(M.shape[0])), rtol=1e-8)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), rank=st.integers(1, 6), extra=st.integers(1, 8))
def test_general_correction_identity_and_row_sum_bound(seed, rank, extra):
    """The general model (C = [1]): the same identity, and the bound the sweep aims with
    is an upper bound on ‖A‖₂²."""
    s = make_general_system(seed, rank=rank, n=rank + extra, kappa=1e3)
    op = lg.GeneralOperator(s.embeddings, s.lam)
    system = op._cg_factorization().capacitance
    assert float(system.norm_bound) >= np.linalg.norm(s.embeddings, 2) ** 2 * (1 - 1e-12)
    rng = np.random.default_rng(seed)
    r = rng.standard_normal((1, rank + extra))
    Z = rng.standard_normal((1, rank))
    new_residual = r - op.matvec(system.lift(r, Z, np.asarray(True)))
    expected = -(system.project(r) - system.matvec(Z)) @ s.embeddings / float(s.lam)
    scale = np.linalg.norm(r) + np.linalg.norm(Z) * np.linalg.norm(s.embeddings)
    np.testing.assert_allclose(new_residual, expected, rtol=0, atol=1e-12 * scale)


@pytest.mark.parametrize(
    ("rank", "n", "expected"), [(4, 30, True), (129, 300, False), (9, 5, False)]
)
def test_general_cg_space_follows_the_shape_rule(rank, n, expected):
    """General CG computes the Gram only while it costs at most a few iterations (D ≤ 128,
    D < N); the solution is the dense one either way."""
    s = make_general_system(7, rank=rank, n=n, kappa=1e3)
    x, info = lg.GeneralOperator(s.embeddings, s.lam).solve(s.b, method="cg", rtol=1e-11)
    has_system = info.factorization is not None and info.factorization.capacitance is not None
    assert has_system == expected
    reference = np.linalg.solve(dense_matrix(s.embeddings, s.lam), s.b)
    np.testing.assert_allclose(x, reference, rtol=1e-8)
