"""Embeddings built from the ground truth: what each G-CRF model could add at best.

A trained embedding branch sees a 10×10-pixel window; these embeddings are built from the
answer. Fed to the G-CRF on top of a fixed unary network (no training), they separate what
a model can *express* from what training found. In every scene the digit pixels are grouped
by their ground-truth class (one group per digit in DigitScenes, one for all digits in
ConsensusScenes), and each group k of n_k pixels gets its own direction:

* ``potts``: Â_p = √(ρλ/n_k) e_k — the target of the Potts pairwise objective, scaled so
  that the group's block of ÂᵀÂ has eigenvalue ρλ < λ: the group's shared label deviation
  is amplified by λ/(λ − ρλ) = 1/(1 − ρ) (Eq. 15–16).
* ``general``: the same grouping for M = AᵀA + λI, one direction per (group, label):
  A_p^l = √(ρλ/n_k) e_(k,l). Then x_p = (b_p − ρ/(1 + ρ) b̄_k)/λ: the group's mean is
  *subtracted*, because M ≽ λI passes a uniform group pattern v with gain
  vᵀM⁻¹v/‖v‖² ≤ 1/λ — never more than an isolated pixel's.
* ``general-sign-split``: within each group, the pixels the unary network already labels
  correctly get +√(λ/n₊), the others −√(λ/n₋). Opposite signs are the only way the general
  model passes evidence between pixels with a positive weight (−⟨A_p, C⁻¹A_q⟩ > 0), so this
  is its best case given knowledge no network has.
* ``attractive-tied``: the attractive model M = λI − ΓᵀΓ with TiedScenes' partner labels
  tied, given the digit pixels but not their classes: one row per partner pair (0–1, 2–3,
  …), each over every digit pixel of the scene, Γ_{k, l, p} = [p is a digit] t_{k, l},
  t_k the indicator of the pair's two labels *centred over the labels*, scaled so that
  ‖Γ‖₂² = ρλ. Evidence for either partner anywhere in the scene's digits raises both
  partners everywhere in them. Centring matters: without it Γ also pools the scores'
  label mean, which the softmax ignores, into the two partners' scores. Choosing the row of
  the pair actually present would hand the oracle the digits' classes; it does not.

The first three need only a grouping of the pixels: :func:`group_oracle_outputs` takes any
grouping and the sign split's size (the head benchmark groups every label, background too).
"""

from __future__ import annotations

import numpy as np

from lowrank_gcrf import solve, solve_potts, solve_signed

from .scenes import partner

#: the oracles built from a grouping of the pixels alone, in report order
GROUP_ORACLES = ("potts", "general", "general-sign-split")
#: the oracles, in report order
ORACLES = (*GROUP_ORACLES, "attractive-tied")


def digit_groups(labels: np.ndarray) -> np.ndarray:
    """One-hot group membership (n, K, P) of the digit pixels of each scene.

    Parameters
    ----------
    labels : ndarray (n, P) of int
        Ground-truth labels at the G-CRF's resolution (0 = background).

    Returns
    -------
    ndarray (n, K, P), float64
        ``groups[i, k, p] = 1`` if pixel p of scene i has the k-th digit label present in
        that scene; K is the largest number of digit labels in a scene.
    """
    present = [np.unique(row[row > 0]) for row in labels]
    slots = max((len(classes) for classes in present), default=0)
    groups = np.zeros((len(labels), max(slots, 1), labels.shape[1]))
    for scene, classes in enumerate(present):
        for slot, label in enumerate(classes):
            groups[scene, slot] = labels[scene] == label
    return groups


def scaled_groups(weights: np.ndarray, budget: float) -> np.ndarray:
    """Rescale each group's weights (n, K, P) so that its squared norm equals ``budget``."""
    norms = np.square(weights).sum(axis=-1, keepdims=True)
    return weights * np.sqrt(budget / np.maximum(norms, 1e-300))


def general_embeddings(weights: np.ndarray, num_labels: int) -> np.ndarray:
    """General embeddings (n, K·L, L·P) with A_p^l = weights[k, p] e_(k,l).

    The columns follow the core's flattening of b (L, P) → L·P.
    """
    n, groups, pixels = weights.shape
    eye = np.eye(num_labels)
    return np.einsum("nkp,lm->nklmp", weights, eye).reshape(
        n, groups * num_labels, num_labels * pixels
    )


def tied_embeddings(labels: np.ndarray, num_labels: int, budget: float) -> np.ndarray:
    """Attractive embeddings Γ (n, K, L·P) of the ``attractive-tied`` oracle.

    Parameters
    ----------
    labels : ndarray (n, P) of int
        Ground-truth labels (0 = background, digit d has label d + 1); only which pixels
        are digits is used.
    num_labels : int
        L.
    budget : float
        ‖Γ‖₂² of each scene with digits.

    Returns
    -------
    ndarray (n, K, L·P), float64
        Row k ties the labels of the k-th partner pair (K pairs among the L − 1 digit
        labels); columns in the core's label-major flattening l·P + p.
    """
    n, pixels = labels.shape
    digits = range(num_labels - 1)
    pairs = sorted({min(d, partner(d)) for d in digits if partner(d) in digits})
    ties = np.zeros((len(pairs), num_labels))
    for k, first in enumerate(pairs):
        ties[k, [first + 1, partner(first) + 1]] = 1.0
    ties -= ties.mean(axis=1, keepdims=True)
    gamma = np.einsum("kl,np->nklp", ties, (labels > 0).astype(np.float64))
    gamma = gamma.reshape(n, len(pairs), num_labels * pixels)
    # ΓΓᵀ = |digits| T Tᵀ: its top eigenvalue from the K×K Gram of the ties
    top = np.linalg.eigvalsh(ties @ ties.T)[-1] * (labels > 0).sum(axis=1)
    return gamma * np.sqrt(budget / np.maximum(top, 1e-300))[:, None, None]


def group_oracle_outputs(
    scores: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    lam: float,
    margin: float,
    split_margin: float = 1.0,
    chunk: int = 25,
) -> dict[str, np.ndarray]:
    """G-CRF outputs x (n, L, P) of the :data:`GROUP_ORACLES` on unary scores b (n, L, P).

    Parameters
    ----------
    scores : ndarray (n, L, P), float64
        Unary scores of a fixed network.
    labels : ndarray (n, P) of int
        Ground-truth labels at the same resolution (the sign split's right pixels).
    groups : ndarray (n, K, P), float64
        One-hot group membership of the pixels, e.g. :func:`digit_groups`.
    lam : float
        λ of the G-CRF.
    margin : float
        ρ < 1 of the Potts and general oracles (module docstring).
    split_margin : float
        ‖·‖² of each sign's part of a ``general-sign-split`` group, a fraction of λ.
    chunk : int
        Scenes per general solve (its embeddings have K·L rows of L·P entries).
    """
    n, num_labels, pixels = scores.shape
    right = scores.argmax(axis=1)[:, None, :] == labels[:, None, :]
    split = split_margin * lam
    signed = scaled_groups(groups * right, split) - scaled_groups(groups * ~right, split)
    outputs = {
        "potts": solve_potts(scaled_groups(groups, margin * lam), scores, lam, method="direct")
    }
    for name, weights in (
        ("general", scaled_groups(groups, margin * lam)),
        ("general-sign-split", signed),
    ):
        parts = [
            solve(
                general_embeddings(weights[i : i + chunk], num_labels),
                scores[i : i + chunk].reshape(-1, num_labels * pixels),
                lam,
                method="direct",
            )
            for i in range(0, n, chunk)
        ]
        outputs[name] = np.concatenate(parts).reshape(n, num_labels, pixels)
    return outputs


def oracle_outputs(
    scores: np.ndarray,
    labels: np.ndarray,
    lam: float,
    margin: float,
    chunk: int = 25,
) -> dict[str, np.ndarray]:
    """G-CRF outputs x (n, L, P) of each oracle on unary scores b (n, L, P).

    Parameters
    ----------
    scores : ndarray (n, L, P), float64
        Unary scores of a fixed network.
    labels : ndarray (n, P) of int
        Ground-truth labels at the same resolution.
    lam : float
        λ of the G-CRF.
    margin : float
        ρ < 1 of the Potts, general and tied oracles (module docstring).
    chunk : int
        Scenes per general solve (its embeddings have K·L rows of L·P entries).
    """
    n, num_labels, pixels = scores.shape
    outputs = group_oracle_outputs(scores, labels, digit_groups(labels), lam, margin, chunk=chunk)
    tied = tied_embeddings(labels, num_labels, margin * lam)
    outputs["attractive-tied"] = solve_signed(
        None, tied, scores.reshape(n, -1), lam, method="direct"
    ).reshape(n, num_labels, pixels)
    return outputs
