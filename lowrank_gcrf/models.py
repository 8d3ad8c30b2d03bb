"""The model registry: one factory from a model name to its operator.

Every caller that chooses a model by name (the public functions, the adapters, the layers and
the benchmarks) goes through :func:`make_operator`, so that a new model is added here once.

========== ====================================== =========================== ===============
name       system matrix                          embeddings                  right-hand side
========== ====================================== =========================== ===============
general    ``λI + AᵀA`` (Eq. 5)                   A ``(..., D, N)``           ``(..., N)``
potts      ``λI + (J_L − I_L) ⊗ ÂᵀÂ`` (Eq. 12)    Â ``(..., D, P)``           ``(..., L, P)``
signed     ``λI + AᵀA − ΓᵀΓ``                     A ``(..., D, N)`` or None,  ``(..., N)``
                                                  ``attractive=`` Γ
                                                  ``(..., E, N)``
========== ====================================== =========================== ===============
"""

from __future__ import annotations

from typing import Any

from .errors import GCRFError
from .general import GeneralOperator
from .operators import GCRFOperator
from .potts import PottsOperator
from .signed import SignedOperator

#: The model names :func:`make_operator` accepts.
MODEL_NAMES = ("general", "potts", "signed")


def check_model(model: Any) -> str:
    """``model`` if it names a registered model, else a :class:`GCRFError` listing them."""
    if not isinstance(model, str) or model not in MODEL_NAMES:
        raise GCRFError(f"model must be one of {', '.join(map(repr, MODEL_NAMES))}, got {model!r}")
    return model


def make_operator(
    model: str,
    embeddings: Any,
    lam: Any,
    *,
    num_labels: int | None = None,
    attractive: Any = None,
) -> GCRFOperator:
    """The operator of ``model`` for ``embeddings`` and ``lam``.

    Parameters
    ----------
    model : {"general", "potts", "signed"}
        The model name (see the table above).
    embeddings : array (..., D, n)
        A (n = N) for ``"general"`` and ``"signed"`` (where it may be None), Â (n = P) for
        ``"potts"``.
    lam : float, 0-d array or array of the batch shape
        λ > 0.
    num_labels : int, optional
        L, required by ``"potts"`` (the number of rows of its right-hand sides).
    attractive : array (..., E, N), optional
        Γ, the attractive embeddings of ``"signed"`` (refused by the other models).

    Returns
    -------
    GCRFOperator

    Examples
    --------
    >>> import numpy as np
    >>> import lowrank_gcrf as lg
    >>> rng = np.random.default_rng(0)
    >>> op = lg.make_operator("potts", rng.standard_normal((4, 20)) / 10, 1.0, num_labels=3)
    >>> type(op).__name__, op.rank
    ('PottsOperator', 4)
    >>> x, info = op.solve(rng.standard_normal((3, 20)))
    >>> x.shape, info.method
    ((3, 20), 'direct')
    """
    if check_model(model) == "signed":
        return SignedOperator(embeddings, attractive, lam)
    if attractive is not None:
        raise GCRFError(f"attractive embeddings belong to the signed model, not {model!r}")
    if model == "general":
        return GeneralOperator(embeddings, lam)
    if num_labels is None:
        raise GCRFError("the Potts model needs num_labels (L, the rows of b (..., L, P))")
    return PottsOperator(embeddings, lam, num_labels)
