"""Ground-truth oracle embeddings of the reproduction benchmark: grouping, layout, and the
G-CRF outputs checked against dense float64 solves and the general model's closed form."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.reproduce.oracles import (
    ORACLES,
    digit_groups,
    general_embeddings,
    oracle_outputs,
    tied_embeddings,
)
from lowrank_gcrf.testing import (
    dense_matrix,
    potts_dense_matrix,
    reference_solve,
    signed_dense_matrix,
)

L, P, LAM, RHO = 4, 12, 0.7, 0.9


@pytest.fixture
def scene():
    rng = np.random.default_rng(5)
    labels = np.zeros((3, P), np.int64)
    labels[0, :4], labels[0, 6:9] = 2, 3  # two digit groups
    labels[1, 2:7] = 1  # one group
    # scene 2: background only
    scores = rng.standard_normal((3, L, P))
    return scores, labels


def test_digit_groups_one_slot_per_present_label(scene):
    _, labels = scene
    groups = digit_groups(labels)
    assert groups.shape == (3, 2, P)
    np.testing.assert_array_equal(groups[0, 0], labels[0] == 2)
    np.testing.assert_array_equal(groups[0, 1], labels[0] == 3)
    np.testing.assert_array_equal(groups[1, 0], labels[1] == 1)
    assert not groups[1, 1].any() and not groups[2].any()
    np.testing.assert_array_equal(groups.sum(1), labels > 0)


def test_general_embeddings_layout():
    weights = np.arange(2 * 3 * 5, dtype=float).reshape(2, 3, 5)
    A = general_embeddings(weights, 4)
    assert A.shape == (2, 12, 20)
    # row (k, label), column (m, p): weights[k, p] if label == m, else 0
    k, label, p = 1, 2, 3
    assert A[0, k * 4 + label, label * 5 + p] == weights[0, k, p]
    assert A[0, k * 4 + label, 1 * 5 + p] == 0.0


def test_oracles_match_dense_solves(scene):
    scores, labels = scene
    outputs = oracle_outputs(scores, labels, LAM, RHO, chunk=2)
    assert list(outputs) == list(ORACLES)
    groups = digit_groups(labels)
    ahat = groups * np.sqrt(RHO * LAM / np.maximum(groups.sum(-1, keepdims=True), 1))
    expected = reference_solve(potts_dense_matrix(ahat, LAM, L), scores.reshape(3, -1))
    np.testing.assert_allclose(outputs["potts"].reshape(3, -1), expected, rtol=1e-10, atol=1e-12)
    A = general_embeddings(ahat, L)
    expected = reference_solve(dense_matrix(A, LAM), scores.reshape(3, -1))
    np.testing.assert_allclose(outputs["general"].reshape(3, -1), expected, rtol=1e-10, atol=1e-12)


def test_general_oracle_subtracts_the_group_mean(scene):
    """x_p = (b_p − ρ/(1 + ρ) b̄_group)/λ: the general model cannot amplify a group."""
    scores, labels = scene
    x = oracle_outputs(scores, labels, LAM, RHO)["general"]
    for i, label in ((0, 2), (0, 3), (1, 1)):
        member = labels[i] == label
        mean = scores[i][:, member].mean(axis=1, keepdims=True)
        expected = (scores[i][:, member] - RHO / (1 + RHO) * mean) / LAM
        np.testing.assert_allclose(x[i][:, member], expected, rtol=1e-12)
    np.testing.assert_allclose(x[2], scores[2] / LAM, rtol=1e-12)  # no digits: x = b/λ


def test_sign_split_passes_right_pixels_evidence_to_wrong_ones():
    labels = np.zeros((1, P), np.int64)
    labels[0, :6] = 1
    scores = np.zeros((1, L, P))
    scores[0, 1, :3] = 2.0  # right: label 1 wins on pixels 0–2
    scores[0, 3, 3:6] = 0.5  # wrong: label 3 wins on pixels 3–5
    x = oracle_outputs(scores, labels, LAM, RHO)["general-sign-split"]
    assert np.all(x[0, 1, 3:6] > 0.0)  # the wrong pixels received label-1 evidence
    assert np.all(x[0, 1, :3] < scores[0, 1, :3] / LAM)  # paid for by the right ones


def tied_scene():
    labels = np.zeros((2, P), np.int64)
    labels[0, :3], labels[0, 5:8] = 1, 2  # the partner digits 0 and 1: one pair
    labels[0, 9:11] = 3  # digit 2, whose partner (digit 3) has no label when L = 4
    labels[1, 2:6] = 2  # one digit of a pair
    return labels


def test_tied_oracle_matches_dense_solves_and_ties_partners():
    labels = tied_scene()
    gamma = tied_embeddings(labels, L, RHO * LAM)
    assert gamma.shape == (2, 1, L * P)  # digit labels 1–3: one complete pair, digits 0–1
    rows = gamma.reshape(2, 1, L, P)
    np.testing.assert_allclose(rows.sum(axis=2), 0.0, atol=1e-15)  # centred over labels
    spectral = np.linalg.eigvalsh(gamma @ np.swapaxes(gamma, 1, 2))[:, -1]
    np.testing.assert_allclose(spectral, RHO * LAM)
    digit = labels > 0
    np.testing.assert_allclose(rows[:, 0, 1], rows[:, 0, 2])  # labels 1 and 2 tied...
    assert np.all(rows[:, 0, 1][digit] > 0) and np.all(rows[:, 0, 3][digit] < 0)
    assert not rows[:, 0][:, :, ~digit[0]][0].any()  # ...on the digit pixels only
    scores = np.random.default_rng(2).standard_normal((2, L, P))
    x = oracle_outputs(scores, labels, LAM, RHO)["attractive-tied"]
    expected = reference_solve(signed_dense_matrix(None, gamma, LAM), scores.reshape(2, -1))
    np.testing.assert_allclose(x.reshape(2, -1), expected, rtol=1e-10, atol=1e-12)


def test_tied_oracle_ignores_the_label_mean():
    """Centred ties pool label deviations only: a score shift shared by all labels passes
    through as x = b/λ, so the softmax of x sees no change."""
    labels = tied_scene()
    scores = np.random.default_rng(3).standard_normal((2, L, P))
    shift = np.random.default_rng(4).standard_normal((2, 1, P))
    x = oracle_outputs(scores, labels, LAM, RHO)["attractive-tied"]
    shifted = oracle_outputs(scores + shift, labels, LAM, RHO)["attractive-tied"]
    np.testing.assert_allclose(shifted - x, np.broadcast_to(shift / LAM, x.shape), atol=1e-12)
