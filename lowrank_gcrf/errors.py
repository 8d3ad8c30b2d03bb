"""Exceptions raised by lowrank-gcrf.

Every error is a :class:`GCRFError`, itself a :class:`ValueError`, so that callers can catch
the whole family with one clause. Each message says what was wrong and what to do about it.
"""

from __future__ import annotations

from typing import Any


class GCRFError(ValueError):
    """Base class of every error raised by lowrank-gcrf (a ``ValueError``)."""

    # Exception's own constructor (ValueError's behaves the same): TensorFlow's autograph
    # re-raises errors from traced code with their own type only for such classes, and as
    # an opaque StagingError otherwise.
    __init__ = Exception.__init__


class GCRFTypeError(GCRFError, TypeError):
    """An input has the wrong type: not an array, not floating point, or from another library.

    It is both a :class:`GCRFError` and a ``TypeError``.
    """


class IndefiniteSystemError(GCRFError):
    """The system matrix is not positive definite, so the Gaussian CRF has no MAP solution.

    For the Potts model ``M = λI + (J − I) ⊗ ÂᵀÂ`` this happens exactly when
    ``λ ≤ μ_max = ‖Â‖₂²``; for the signed model ``M = λI + AᵀA − ΓᵀΓ`` exactly when
    ``I − Γ(λI + AᵀA)⁻¹Γᵀ`` is not positive definite; the general model ``λI + AᵀA`` is
    positive definite for every λ > 0. Conjugate gradient also raises it on a breakdown
    ``pᵀMp ≤ 0``.

    Attributes
    ----------
    lam, mu_max : float or None
        The offending λ and the largest eigenvalue of ``ÂÂᵀ`` when known.
    """

    def __init__(self, message: str, *, lam: float | None = None, mu_max: float | None = None):
        super().__init__(message)
        self.lam = lam
        self.mu_max = mu_max


class ConvergenceError(GCRFError):
    """The solve stopped above the requested tolerance.

    Attributes
    ----------
    x : array
        The best iterate reached (same namespace and dtype as the requested output).
    info : SolveInfo
        Method, iterations and true relative residual of every system.
    """

    def __init__(self, message: str, *, x: Any = None, info: Any = None):
        super().__init__(message)
        self.x = x
        self.info = info


class ConvergenceWarning(RuntimeWarning):
    """Some systems stopped above the requested tolerance (``on_failure="warn"``).

    The solve returned its best iterate; ``info.converged`` tells which systems missed and
    ``info.residual`` by how much.
    """
