"""Framework-neutral glue shared by the adapters: DLPack hand-over and forward/backward state.

The adapters call :func:`to_core` on framework tensors (zero-copy through DLPack: CPU memory
becomes a NumPy array, CUDA memory a CuPy array) and keep one :class:`CoreSolve` per
forward call so that the backward pass reuses the forward's operator and factorization.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from array_api_compat import numpy as numpy_namespace

from lowrank_gcrf.errors import GCRFError, GCRFTypeError
from lowrank_gcrf.info import SolveInfo
from lowrank_gcrf.operators import GCRFOperator, GeneralOperator, PottsOperator
from lowrank_gcrf.validation import as_lam

# DLPack device types (dlpack.h: kDLCPU, kDLCUDA).
_DLPACK_CPU = 1
_DLPACK_CUDA = 2

#: keyword arguments the adapters pass through to the core solver
SOLVER_KEYWORDS = ("method", "rtol", "atol", "maxiter")


def to_core(tensor: Any) -> Any:
    """A NumPy (CPU) or CuPy (CUDA) view of ``tensor``, shared through DLPack without copying.

    ``tensor`` must implement ``__dlpack__`` and ``__dlpack_device__``.
    """
    device_type, _ = tensor.__dlpack_device__()
    if device_type == _DLPACK_CPU:
        return np.from_dlpack(tensor)
    if device_type == _DLPACK_CUDA:
        try:
            import cupy
        except ImportError as exc:
            raise GCRFTypeError(
                "CUDA tensors need CuPy: install lowrank-gcrf[cuda12] or lowrank-gcrf[cuda13]"
            ) from exc
        return cupy.from_dlpack(tensor)
    raise GCRFTypeError(
        f"tensors on DLPack device type {device_type} are not supported; use CPU or CUDA"
    )


def check_scalar_lam(lam: float) -> None:
    """The core's check of a Python-float λ (finite, > 0), with its error and message."""
    as_lam(numpy_namespace, lam, (), numpy_namespace.float64, "cpu")


def softplus_inverse(value: float) -> float:
    """r with softplus(r) = value > 0 (a learnable λ's initial parameter), without overflow."""
    return value + math.log(-math.expm1(-value))


def check_solver_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The solver keywords, validated by name (values are checked by the core)."""
    unknown = sorted(set(kwargs) - set(SOLVER_KEYWORDS))
    if unknown:
        raise GCRFError(
            f"unknown solver keyword(s) {', '.join(unknown)}; the layer accepts "
            f"{', '.join(SOLVER_KEYWORDS)}"
        )
    return dict(kwargs)


def make_operator(potts: bool, embeddings: Any, lam: Any, b: Any) -> GCRFOperator:
    """The core operator of a solve whose right-hand side (or solution) is ``b``."""
    if not potts:
        return GeneralOperator(embeddings, lam)
    if b.ndim < 2:
        raise GCRFError(f"b must have shape (..., L, P) for Potts, got {tuple(b.shape)}")
    return PottsOperator(embeddings, lam, int(b.shape[-2]))


class CoreSolve:
    """One forward solve on core arrays, kept for its backward pass.

    Parameters
    ----------
    potts : bool
        Potts model (embeddings (..., D, P), b (..., L, P)) or general (embeddings
        (..., D, N), b (..., N)).
    embeddings, b : NumPy or CuPy arrays
    lam : float or array of the batch shape
    solver_kwargs : dict
        ``method``, ``rtol``, ``atol``, ``maxiter``, used for both solves.
    """

    def __init__(
        self, potts: bool, embeddings: Any, b: Any, lam: Any, solver_kwargs: dict[str, Any]
    ):
        self.solver_kwargs = check_solver_kwargs(solver_kwargs)
        self.operator = make_operator(potts, embeddings, lam, b)
        self.x, self.info = self.operator.solve(b, **self.solver_kwargs)
        self.backward_info: SolveInfo | None = None

    def backward(self, gx: Any) -> tuple[Any, Any, Any]:
        """``(∂L/∂embeddings, ∂L/∂b, ∂L/∂λ)`` for the cotangent ``gx`` of x."""
        g_u, g_b, g_lam, self.backward_info = self.operator.vjp(self.x, gx, **self.solver_kwargs)
        return g_u, g_b, g_lam
