"""Choice of solver method and iteration budgets, from shapes and dtype alone.

``method="auto"`` never looks at the data (so that a model's cost does not change from
batch to batch). The rule, from the crossover measured by ``python -m benchmarks.speed`` (its
"auto crossover" table in benchmarks/RESULTS.md; P = 1681, L = 21, float32 and float64, one
system, one BLAS thread, forward and forward+backward with the backward reusing the
forward's factorization), with CG on the capacitance system where that pays
(:func:`capacitance_gram_pays`):

* Potts: always ``"direct"``. Every Potts solve must establish λ > ‖Â‖₂² first; unless the
  cheap bound ‖Â‖_F² < λ settles it, that takes the Gram ÂÂᵀ and the Cholesky factor of
  λI − ÂÂᵀ, after which the exact solve costs one more small factorization and a few
  matvecs. Measured: CG is slower at κ = 10³ for every D from 16 to 1024, and at κ = 10
  ahead by little where it is ahead at all.
* General: ``"direct"`` while the embedding dimension D ≤ ``DIRECT_MAX_RANK``, else
  ``"cg"``. Measured at κ = 10³: CG (on the capacitance system) at best level with the
  direct solve for D ≤ 128, up to a few times slower, and up to an order of magnitude
  slower above (in float32 it does not reach rtol = 1e-5 there above D = 256). CG wins
  clearly only on well-conditioned systems at large D (κ = 10), by less than it loses on
  ill-conditioned ones, whose CG iterations grow with √κ up to D + 1. Above D = 1024 the
  Gram ``AAᵀ`` (2D²N flops) outgrows the CG iterations of a reasonably conditioned system
  (4DN flops each), so ``"cg"``.
* Signed: with attractive embeddings Γ, always ``"direct"``: every solve must prove M
  positive definite, and the proof (the Cholesky factor of the Schur complement λH) is the
  exact solver's factorization, which a CG solve computes as well. Without Γ it is the
  general model, and the general rule applies.
"""

from __future__ import annotations

from typing import Any

#: Largest embedding dimension for which ``auto`` picks the direct solve in the general model.
DIRECT_MAX_RANK = 1024

#: Exact solves allowed for ``"direct"``: the solve plus iterative refinement (each step
#: multiplies the error by about ε·κ, so a handful suffice whenever the dtype can reach the
#: tolerance at all).
DEFAULT_REFINEMENT_STEPS = 10

#: Margin on the exact-arithmetic CG bound for the loss of orthogonality in floating point.
CG_MARGIN = 4

#: Most CG iterations on the unknowns that a Gram computed only to iterate on the
#: capacitance system (:mod:`lowrank_gcrf.capacitance`) may cost.
CAPACITANCE_GRAM_ITERATIONS = 8


def choose_method(method: str, operator: Any) -> str:
    """Resolve a validated ``method`` ("auto", "cg" or "direct") for ``operator``."""
    if method != "auto":
        return method
    if operator.factors_to_check_definiteness:
        return "direct"
    return "direct" if operator.rank <= DIRECT_MAX_RANK else "cg"


def capacitance_gram_pays(operator: Any) -> bool:
    """Whether a CG solve should compute the Gram ``UUᵀ`` to iterate on the k×D capacitance
    system when nothing else needs it (a Potts proof by Cholesky computes it anyway).

    Only for D < n, and when the Gram costs at most ``CAPACITANCE_GRAM_ITERATIONS``
    iterations on the unknowns; after that every iteration is 2n/D times cheaper. Cost
    model, from shapes only (P = 1681, L = 21, float32, one BLAS thread): the Gram's D²n/2
    multiply-adds against an iteration's 2kDn, i.e. D/(4k) iterations, with a factor 4 for
    the general model, whose iteration is two matrix-vector products that run about 4×
    fewer multiply-adds per second than the Gram's matrix product (measured: the Gram of a
    D = 128 general A took the time of 8.3 matvecs, at D = 256 of 19). So: general
    D ≤ 128, Potts D ≤ 32L.
    """
    k, n = operator.row_shape
    rank = operator.rank
    if rank >= n:
        return False
    iterations = rank / 16 if k == 1 else rank / (4 * k)
    return iterations <= CAPACITANCE_GRAM_ITERATIONS


def cg_iteration_bound(operator: Any) -> int:
    """Exact-arithmetic bound on CG iterations: the number of distinct eigenvalues of M.

    General: at most D + 1 ({λ} ∪ {λ + σᵢ²}); Potts: at most 2D + 1 (λ, λ + (L−1)μᵢ and
    λ − μᵢ); signed: at most D + E + 1 (λ and λ plus the eigenvalues of UᵀSU); never more
    than the number of unknowns.
    """
    k, n = operator.row_shape
    distinct = operator.rank + 1 if k == 1 else 2 * operator.rank + 1
    return min(distinct, k * n)


def default_maxiter(method: str, operator: Any) -> int:
    """Default ``maxiter``: ``CG_MARGIN`` × the CG bound, or the direct-solve step budget."""
    if method == "cg":
        return CG_MARGIN * cg_iteration_bound(operator)
    return DEFAULT_REFINEMENT_STEPS
