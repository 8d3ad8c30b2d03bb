"""Input validation: array namespace, shapes, λ and finiteness.

The core takes its array library from its inputs (``array_api_compat.array_namespace``), so
the same code runs on NumPy, CuPy and any array-API library. Every check raises a
:class:`~lowrank_gcrf.errors.GCRFError` subclass whose message says what to change. The dtype
rules live in :mod:`lowrank_gcrf.dtypes`, the solver keywords in :mod:`lowrank_gcrf.options`.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import array_api_compat
import numpy as np

from .dtypes import dtype_name, largest
from .errors import GCRFError, GCRFTypeError
from .host_reads import to_host


def array_namespace(*arrays: Any) -> Any:
    """The array-API namespace shared by ``arrays``; ``GCRFTypeError`` if none or several."""
    for a in arrays:
        if not array_api_compat.is_array_api_obj(a):
            raise GCRFTypeError(
                f"expected arrays (NumPy, CuPy or another array-API library), got "
                f"{type(a).__name__}; convert with numpy.asarray or cupy.asarray first"
            )
    try:
        return array_api_compat.array_namespace(*arrays)
    except TypeError as exc:
        libraries = sorted({type(a).__module__.split(".")[0] for a in arrays})
        raise GCRFTypeError(
            f"inputs come from different array libraries ({', '.join(libraries)}); "
            "pass all arrays from one library (e.g. all NumPy or all CuPy on one device)"
        ) from exc


def is_numpy(xp: Any) -> bool:
    """Whether ``xp`` is NumPy (the CPU reference, where SciPy kernels may be used)."""
    return array_api_compat.is_numpy_namespace(xp)


def check_array(a: Any, name: str) -> None:
    """Raise :class:`GCRFTypeError` naming ``name`` unless ``a`` is an array-API array."""
    if not array_api_compat.is_array_api_obj(a):
        raise GCRFTypeError(
            f"expected arrays (NumPy, CuPy or another array-API library), but {name} is a "
            f"{type(a).__name__}; convert it with numpy.asarray or cupy.asarray first"
        )


def check_finite(xp: Any, a: Any, name: str) -> None:
    """Raise if ``a`` holds NaN or ±Inf."""
    if is_numpy(xp) and a.dtype in (np.float32, np.float64) and a.flags.c_contiguous:
        # A finite ‖a‖² proves every entry finite (NaN and ±Inf propagate through the squares)
        # and is one BLAS dot, half the time of isfinite + all on a large embedding; an
        # overflowing sum of finite entries falls through to the exact test, so its overflow
        # is expected and must not warn.
        flat = a.reshape(-1)
        with np.errstate(over="ignore", invalid="ignore"):
            norm2 = float(np.dot(flat, flat))
        if math.isfinite(norm2):
            return
    if not bool(to_host(xp, xp.all(xp.isfinite(a)))):
        raise GCRFError(
            f"{name} contains NaN or Inf; the G-CRF solve needs finite inputs (check the "
            "network output feeding it, e.g. for overflow in float16)"
        )


#: The layout of each embedding argument, for messages (others read as ``(..., D, N)``).
EMBEDDING_LAYOUTS = {"A": "(..., D, N)", "Ahat": "(..., D, P)", "Gamma": "(..., E, N)"}


def check_embeddings(xp: Any, A: Any, name: str) -> None:
    """Check an embedding array of shape (..., D, n): at least 2 dimensions, none empty."""
    check_embedding_shape(tuple(A.shape), name)


def check_embedding_shape(shape: tuple[Any, ...], name: str) -> None:
    """:func:`check_embeddings` on a shape (the adapters check framework shapes with it;
    a size unknown while tracing, None, passes)."""
    if len(shape) < 2:
        layout = EMBEDDING_LAYOUTS.get(name, "(..., D, N)")
        raise GCRFError(
            f"{name} must have shape {layout} with at least 2 dimensions, got shape {shape}"
        )
    if shape[-1] == 0 or shape[-2] == 0:
        raise GCRFError(f"{name} has an empty dimension: shape {shape}")


def check_system_shape(
    got: tuple[int, ...], expected: tuple[int, ...], name: str, layout: str
) -> None:
    """Raise a shape error naming the expected ``layout`` when ``got != expected``."""
    if tuple(got) != tuple(expected):
        raise GCRFError(
            f"{name} has shape {tuple(got)} but the embeddings imply {tuple(expected)} "
            f"(layout {layout}; leading batch dimensions must equal those of the embeddings)"
        )


def check_lam_object(lam: Any) -> None:
    """Raise :class:`GCRFTypeError` unless ``lam`` is a real number or a real-valued array.

    Shared with the adapters, which call it on framework tensors before casting them (a
    cast would drop a complex λ's imaginary part without a word). Booleans are refused in
    every form: ``True`` as λ = 1 is a bug, not a choice.
    """
    if isinstance(lam, numbers.Number) or hasattr(lam, "dtype"):
        dtype = getattr(lam, "dtype", None)
        kind = dtype_name(dtype) if dtype is not None else type(lam).__name__
        if isinstance(lam, (bool, complex)) or kind.startswith(("bool", "complex")):
            raise GCRFTypeError(f"lam must be real and positive, got {kind} {lam!r}")
        if isinstance(lam, numbers.Real) or hasattr(lam, "dtype"):
            return
    raise GCRFTypeError(
        f"lam must be a positive float or an array of them, got {type(lam).__name__}"
    )


def as_lam(xp: Any, lam: Any, batch_shape: tuple[int, ...], dtype: Any, device: Any) -> Any:
    """λ as an array of the batch shape and ``dtype``, validated: finite and > 0.

    Parameters
    ----------
    lam : float, 0-d array or array of shape ``batch_shape``
        A 0-d NumPy array is accepted with arrays of any library (it is a scalar).
    """
    check_lam_object(lam)
    if array_api_compat.is_array_api_obj(lam):
        if array_api_compat.array_namespace(lam) is not xp and not (
            lam.ndim == 0 and array_api_compat.is_numpy_array(lam)
        ):
            raise GCRFTypeError(
                "lam is an array from a different library than the embeddings; pass a Python "
                "float or an array of the same library"
            )
        if lam.ndim == 0 and array_api_compat.is_numpy_array(lam):
            lam = float(lam)
    if not array_api_compat.is_array_api_obj(lam):
        lam = float(lam)
        if not (math.isfinite(lam) and lam > 0):
            _raise_not_positive(repr(lam))
        name = dtype_name(dtype)
        if lam > largest(name):
            _raise_out_of_range(repr(lam), name)
        lam_arr = xp.full(batch_shape, lam, dtype=dtype, device=device)
        if not bool(to_host(xp, xp.all(lam_arr > 0))):
            _raise_out_of_range(repr(lam), name)
        return lam_arr
    if lam.ndim != 0 and tuple(lam.shape) != tuple(batch_shape):
        raise GCRFError(
            f"lam has shape {tuple(lam.shape)}; it must be a scalar or have the batch "
            f"shape {tuple(batch_shape)}"
        )
    if not bool(to_host(xp, xp.all(xp.isfinite(lam)) & xp.all(lam > 0))):
        _raise_not_positive(_describe(xp, lam))
    lam_arr = xp.broadcast_to(xp.astype(lam, dtype), batch_shape)
    if not bool(to_host(xp, xp.all(lam_arr > 0) & xp.all(xp.isfinite(lam_arr)))):
        _raise_out_of_range(_describe(xp, lam), dtype_name(dtype))
    return lam_arr


def _raise_not_positive(shown: str) -> None:
    raise GCRFError(
        f"lam must be finite and > 0 (it is the weight of the identity in AᵀA + λI), got {shown}"
    )


def _raise_out_of_range(shown: str, dtype: str) -> None:
    raise GCRFError(
        f"lam = {shown} is out of the range of {dtype}, the dtype the system is solved in "
        f"(it overflows to inf or underflows to 0): use float64 inputs, or rescale the problem"
    )


def _describe(xp: Any, a: Any) -> str:
    a = xp.astype(a, xp.float64) if not xp.isdtype(a.dtype, "real floating") else a
    if a.ndim == 0 or a.size == 1:
        return repr(float(xp.reshape(a, (-1,))[0]))
    return f"values from {float(xp.min(a))!r} to {float(xp.max(a))!r}"
