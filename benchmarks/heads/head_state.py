"""The logged state of a trained head: λ and the pairwise term's strength as plain floats.

Read defensively, so that the benchmark runs against every version of the heads: where the
layer exposes ``effective_lam`` and ``effective_strength`` these are used; where it has only
a ``lam`` (a tensor, a variable or a float) that is read without tracking gradients, and no
strength is logged.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def plain_float(value: Any) -> float:
    """A torch tensor, TensorFlow tensor or variable, NumPy scalar or number as a float."""
    if hasattr(value, "detach"):
        value = value.detach().cpu()
    return float(np.asarray(value))


def head_state(head: Any) -> dict[str, Any]:
    """``{"lam": float | None, "strength": {name: float} | None}`` of a ``GCRFHead``.

    Parameters
    ----------
    head : GCRFHead
        A PyTorch or Keras head, or ``None`` (then both entries are ``None``).
    """
    crf = getattr(head, "crf", None)
    lam = getattr(crf, "effective_lam", None)
    if lam is None:
        lam = getattr(crf, "lam", None)
    strength = getattr(crf, "effective_strength", None)
    return {
        "lam": None if lam is None else plain_float(lam),
        "strength": None
        if strength is None
        else {str(name): plain_float(v) for name, v in dict(strength).items()},
    }
