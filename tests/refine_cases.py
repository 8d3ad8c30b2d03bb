"""Inputs and dense references shared by the tests of ``refine``'s passes and solves."""

from __future__ import annotations

import itertools
import math

import numpy as np


def inputs(seed, labels, spatial, batch=()):
    """Probabilities (*batch, L, *spatial) drawn from a flat Dirichlet and a uint8 image
    (*batch, 3, *spatial)."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(labels), size=(*batch, *spatial))
    probs = np.moveaxis(probs, -1, len(batch))
    image = rng.integers(0, 256, (*batch, 3, *spatial)).astype(np.uint8)
    return probs, image


def dense_gaussian(spatial, sigma):
    """The smoothness kernel as a dense P × P matrix: value 1 at distance 0, cut where any
    coordinate differs by more than ⌈3σ⌉ (the separable filter's support)."""
    positions = np.array(list(itertools.product(*(range(n) for n in spatial))), dtype=float)
    difference = positions[:, None, :] - positions[None, :, :]
    inside = np.all(np.abs(difference) <= math.ceil(3.0 * sigma), axis=-1)
    return np.exp(-0.5 * (difference**2).sum(-1) / sigma**2) * inside
