"""Choice of solver method and iteration budgets, from shapes and dtype alone.

``method="auto"`` never looks at the data (so that a model's cost does not change from
batch to batch). The rule, from the crossover measured by ``python -m benchmarks.speed`` (see
benchmarks/RESULTS.md; P = 1681, L = 21, 2-core CPU):

* Potts: always ``"direct"``. Every Potts solve must establish λ > ‖Â‖₂² first, and the
  exact check is the Cholesky factorization of the deviation capacitance λI − ÂÂᵀ: once it
  is paid, the exact solve costs a few more matvecs. Measured: direct 1.4–17× faster than
  CG at every D and κ.
* General: ``"direct"`` while the embedding dimension D ≤ ``DIRECT_MAX_RANK``. Measured at
  κ = 10³: direct 4–12× faster than CG for every D from 16 to 1024 (forward and
  forward+backward); CG wins only on well-conditioned systems at large D (κ = 10,
  D = 1024: up to 2.6× on the forward pass), a smaller gain than what it loses otherwise.
  Above D = 1024 the Gram ``AAᵀ`` (2D²N flops) grows past the CG iterations of a
  reasonably conditioned system (4DN flops each), so ``"cg"`` (not measured there).
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


def choose_method(method: str, operator: Any) -> str:
    """Resolve a validated ``method`` ("auto", "cg" or "direct") for ``operator``."""
    if method != "auto":
        return method
    if operator.factors_to_check_definiteness:
        return "direct"
    return "direct" if operator.rank <= DIRECT_MAX_RANK else "cg"


def cg_iteration_bound(operator: Any) -> int:
    """Exact-arithmetic bound on CG iterations: the number of distinct eigenvalues of M.

    General: at most D + 1 ({λ} ∪ {λ + σᵢ²}); Potts: at most 2D + 1 (λ, λ + (L−1)μᵢ and
    λ − μᵢ); never more than the number of unknowns.
    """
    k, n = operator.row_shape
    distinct = operator.rank + 1 if k == 1 else 2 * operator.rank + 1
    return min(distinct, k * n)


def default_maxiter(method: str, operator: Any) -> int:
    """Default ``maxiter``: ``CG_MARGIN`` × the CG bound, or the direct-solve step budget."""
    if method == "cg":
        return CG_MARGIN * cg_iteration_bound(operator)
    return DEFAULT_REFINEMENT_STEPS
