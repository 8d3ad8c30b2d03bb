"""The test registry itself: it covers every model of the library, and its draws are what
the suites' tolerances assume (positive definite, condition number at most ``kappa``)."""

from __future__ import annotations

import numpy as np
import pytest
from model_cases import MODEL_CASES, REGISTRY, each_model

import lowrank_gcrf as lg


def test_every_model_of_the_library_has_a_test_case():
    """A model added to lg.MODEL_NAMES must get an entry in tests/model_cases.py, or the
    generic suites would silently leave it out."""
    missing = sorted(set(lg.MODEL_NAMES) - set(REGISTRY))
    assert not missing, f"add a ModelCase for {missing} to tests/model_cases.py"
    assert sorted(REGISTRY) == sorted(lg.MODEL_NAMES)
    assert [case.name for case in MODEL_CASES] == list(lg.MODEL_NAMES)


@each_model
@pytest.mark.parametrize("per_batch_lam", [False, True], ids=["scalar-lam", "batch-lam"])
@pytest.mark.parametrize(("rank", "pixels"), [(3, 8), (9, 4)], ids=["D<n", "D>=n"])
def test_drawn_systems_are_definite_with_the_stated_condition_number(
    case, per_batch_lam, rank, pixels
):
    system = case.make(
        0, rank=rank, pixels=pixels, labels=3, kappa=1e3, batch_shape=(3,),
        per_batch_lam=per_batch_lam,
    )  # fmt: skip
    eigenvalues = np.linalg.eigvalsh(system.dense())
    assert np.all(eigenvalues[..., 0] > 0)
    kappa = eigenvalues[..., -1] / eigenvalues[..., 0]
    assert np.all(kappa <= system.kappa * (1 + 1e-9)), (kappa, system.kappa)
    stated = case.condition(system.embeddings, system.lam, system.num_labels)
    assert stated <= system.kappa * (1 + 1e-9)
    if rank < pixels:  # exact where the low-rank term has a null space
        np.testing.assert_allclose(stated, system.kappa, rtol=1e-9)


@each_model
def test_vjp_stacks_the_embeddings_gradient_like_the_embeddings(case):
    system = case.make(1, rank=2, pixels=5, labels=2, kappa=10.0, batch_shape=(2,))
    x = case.solve(*system.args())
    grads = case.vjp(system.embeddings, x, np.ones_like(x), system.lam)
    assert [g.shape for g in grads] == [system.embeddings.shape, x.shape, (2,)]
