"""How many matmul-only iterations the traceable solve runs, derived from the strength bounds.

The traceable solve (``lowrank_gcrf.adapters.torch.traceable_solve`` and its TensorFlow twin)
applies the Woodbury identity of ``docs/maths.md#exact-low-rank-solves`` with every
capacitance inverse replaced by Newton–Schulz iterations, which exporters without a
factorization (ONNX, TFLite builtins) can express. This module holds no tensor: it turns the
caller's guarantee ``‖block‖₂² ≤ ρ·λ`` for each embedding block into the spectral interval of
each capacitance scaled by 1/λ, the iteration count that leaves a truncation error below the
working dtype's machine epsilon, and the bound that count certifies.

Newton–Schulz on a symmetric C with spectrum in ``[lo, hi]``, ``0 < lo``:

    X₀ = 2/(lo + hi) · I,    X_{k+1} = X_k (2I − C X_k),    I − C X_k = (I − C X₀)^(2^k),

so ``δ_k = ‖I − C X_k‖₂ ≤ q^(2^k)`` with ``q = (hi − lo)/(hi + lo) = (κ − 1)/(κ + 1)``. The
count is the least k with ``q^(2^k) ≤`` the target that the error analysis of each model
assigns to that capacitance (``docs/guide/deploying.md`` derives the amplification factors).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lowrank_gcrf.adapters.bridge import SignedStack, SolveAs
from lowrank_gcrf.dtypes import epsilon
from lowrank_gcrf.errors import GCRFError


@dataclass(frozen=True)
class Inversion:
    """Newton–Schulz on one capacitance scaled by 1/λ, whose spectrum lies in ``[lo, hi]``.

    Attributes
    ----------
    lo, hi : float
        Bounds on the scaled capacitance's eigenvalues, ``0 < lo ≤ hi``.
    steps : int
        The iteration count k.
    """

    lo: float
    hi: float
    steps: int

    @property
    def start(self) -> float:
        """c of ``X₀ = c·I``: ``2/(lo + hi)``, which centres ``I − cC``'s spectrum on 0."""
        return 2.0 / (self.lo + self.hi)

    @property
    def residual(self) -> float:
        """The certified ``‖I − C X_k‖₂ ≤ q^(2^k)``."""
        return contraction(self.lo, self.hi) ** (2**self.steps)


@dataclass(frozen=True)
class TraceablePlan:
    """The inversions of one traceable solve and the error bound they certify.

    Attributes
    ----------
    inversions : dict of str to Inversion
        By capacitance: ``"general"``; ``"sum"`` and ``"deviation"`` (Potts, the latter only
        for L ≥ 2); ``"repulsive"`` and ``"schur"`` (signed, each only where its block is
        present).
    bound : float
        Certified bound on ``‖x̂ − x‖/‖x‖`` from the truncated iterations, in exact arithmetic
        and to first order in the residuals (their squares are below ε²). Rounding adds the
        error of the Woodbury formula itself, about ε·κ (``docs/maths.md#accuracy``).
    target : float
        What ``bound`` was asked to meet: the compute dtype's machine epsilon.
    """

    inversions: dict[str, Inversion]
    bound: float
    target: float


def contraction(lo: float, hi: float) -> float:
    """``q = (hi − lo)/(hi + lo)``: the 2-norm of ``I − C X₀`` for C's spectrum in [lo, hi]."""
    return (hi - lo) / (hi + lo)


def newton_schulz_steps(lo: float, hi: float, target: float) -> int:
    """The least k ≥ 0 with ``q^(2^k) ≤ target`` (:func:`contraction`), ``0 < target < 1``."""
    if not 0 < lo <= hi:
        # q ≥ 1: the iteration need not converge, and this loop would not end.
        raise GCRFError(f"no Newton–Schulz count converges on a spectrum in [{lo!r}, {hi!r}]")
    q = contraction(lo, hi)
    steps = 0
    while q ** (2**steps) > target:
        steps += 1
    return steps


def inversion(lo: float, hi: float, target: float) -> Inversion:
    """The inversion of a capacitance with spectrum in [lo, hi] to residual ≤ ``target``."""
    return Inversion(lo, hi, newton_schulz_steps(lo, hi, target))


def _strengths(bounds: tuple[float, ...], count: int, below_one: tuple[bool, ...]) -> list[float]:
    """The strength bounds as floats, checked: ``count`` of them, finite, ≥ 0, and < 1 where
    definiteness rests on it."""
    if len(bounds) != count:
        raise GCRFError(f"expected {count} strength bound(s), got {bounds!r}")
    values = [float(rho) for rho in bounds]
    for rho, strict in zip(values, below_one, strict=True):
        if not (math.isfinite(rho) and rho >= 0 and (rho < 1 or not strict)):
            limit = "in [0, 1)" if strict else "finite and ≥ 0"
            raise GCRFError(
                f"a strength bound ρ (‖block‖₂² ≤ ρ·λ) must be {limit} here, got {bounds!r}"
            )
    return values


def traceable_plan(
    solve_as: SolveAs,
    strength_bounds: tuple[float, ...],
    *,
    rows: int,
    labels: int,
    compute_dtype: str,
) -> TraceablePlan:
    """The Newton–Schulz counts of a traceable solve and the bound they certify.

    Parameters
    ----------
    solve_as : str or SignedStack
        ``"general"``, ``"potts"`` or the signed model on stacked ``[A; Γ]``.
    strength_bounds : tuple of float
        One ρ per embedding block, ``‖block‖₂² ≤ ρ·λ``: ``(ρ,)`` for general and Potts,
        ``(ρ_A, ρ_Γ)`` for signed. Potts needs ρ < 1 and signed ρ_Γ < 1 (definiteness).
    rows : int
        The embeddings' rows (D, or D + E for signed).
    labels : int
        L (Potts; ignored otherwise).
    compute_dtype : str
        The working dtype: the target is its machine epsilon ε.

    Notes
    -----
    With λ scaled out (each block's ``‖U‖₂² ≤ ρ``), a capacitance residual δ moves x by at
    most ``a·δ·‖x‖``, with the amplification ``a`` of each model:

    * general, ``C = I + AAᵀ`` in [1, 1 + ρ]: ``a = ρ(1 + ρ)``;
    * Potts class sum, ``C = I + (L − 1)ÂÂᵀ`` in [1, 1 + (L − 1)ρ]:
      ``a = (L − 1)ρ(1 + (L − 1)ρ)``; deviation, ``C = I − ÂÂᵀ`` in [1 − ρ, 1]:
      ``a = ρ/(1 − ρ)``. The two parts of x are orthogonal, so x's relative error is the
      larger of theirs, and each gets the whole target;
    * signed, ``C_A = I + AAᵀ`` in [1, 1 + ρ_A] and the Schur complement
      ``H = I − Γ(I + AᵀA)⁻¹Γᵀ`` in [1 − ρ_Γ, 1] (widened by the perturbation ``g²δ_A`` that
      C_A's residual leaves in the computed H), with ``g = √(ρ_Aρ_Γ)`` ≥ ``‖AΓᵀ‖₂``,
      ``h = 1/lo_H`` and ``s = (ρ_A + ρ_Γ)(1 + ρ_A)``:
      ``a_A = s(1 + 2gh(1 + g) + (1 + g)²g²h²)``, ``a_H = s(1 + g)²h``, each given half the
      target.
    """
    target = epsilon(compute_dtype)
    if solve_as == "potts":
        (rho,) = _strengths(strength_bounds, 1, (True,))
        return _potts_plan(rho, labels, target)
    if isinstance(solve_as, SignedStack):
        rho_a, rho_g = _strengths(strength_bounds, 2, (False, True))
        repulsive = solve_as.repulsive_rank > 0
        attractive = solve_as.repulsive_rank < rows
        return _stacked_plan(rho_a * repulsive, rho_g * attractive, repulsive, attractive, target)
    if solve_as == "general":
        (rho_a,) = _strengths(strength_bounds, 1, (False,))
        return _stacked_plan(rho_a, 0.0, True, False, target)
    raise GCRFError(f"no traceable solve for model {solve_as!r}")


def _potts_plan(rho: float, labels: int, target: float) -> TraceablePlan:
    """The class-sum and deviation inversions, each to the whole target (the two parts of x
    are orthogonal)."""
    coupling = (labels - 1) * rho
    gains = {"sum": coupling * (1 + coupling)}
    inversions = {"sum": inversion(1.0, 1.0 + coupling, target / _nonzero(gains["sum"]))}
    if labels > 1:
        gains["deviation"] = rho / (1 - rho)
        inversions["deviation"] = inversion(1.0 - rho, 1.0, target / _nonzero(gains["deviation"]))
    bound = max(gains[name] * inv.residual for name, inv in inversions.items())
    return TraceablePlan(inversions, bound, target)


def _stacked_plan(
    rho_a: float, rho_g: float, repulsive: bool, attractive: bool, target: float
) -> TraceablePlan:
    """The inversions of ``λI + AᵀA − ΓᵀΓ`` for the blocks present (an absent block's ρ is
    0): C_A (named ``"general"`` without Γ) and the Schur complement H."""
    scale = (rho_a + rho_g) * (1 + rho_a)
    g = math.sqrt(rho_a * rho_g)
    # H's interval widens by g²δ_A ≤ g²ε whatever C_A's count, so h is known first.
    lo_h = 1.0 - rho_g - g * g * target
    if attractive and lo_h <= 0:
        raise GCRFError(
            f"strength bounds ρ_A = {rho_a!r}, ρ_Γ = {rho_g!r} certify nothing in this dtype: the "
            f"Schur complement's lower bound 1 − ρ_Γ is within the rounding ρ_Aρ_Γε of 0"
        )
    h = 1.0 / lo_h
    budget = target / 2 if attractive and repulsive else target
    inversions, bound, widening = {}, 0.0, 0.0
    if repulsive:
        gain = scale * (1 + 2 * g * h * (1 + g) + (1 + g) ** 2 * (g * h) ** 2)
        name = "repulsive" if attractive else "general"
        inversions[name] = inversion(1.0, 1.0 + rho_a, budget / _nonzero(gain))
        bound += gain * inversions[name].residual
        widening = g * g * inversions[name].residual
    if attractive:
        gain = scale * (1 + g) ** 2 * h
        lo, hi = 1.0 - rho_g - widening, 1.0 + widening
        inversions["schur"] = inversion(lo, hi, budget / _nonzero(gain))
        bound += gain * inversions["schur"].residual
    return TraceablePlan(inversions, bound, target)


def _nonzero(gain: float) -> float:
    """An amplification factor, 1 where it vanishes (zero embeddings: any residual will do)."""
    return gain if gain > 0 else 1.0
