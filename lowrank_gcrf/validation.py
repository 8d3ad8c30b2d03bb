"""Input validation: array namespace, dtype policy, shapes, λ and finiteness.

The core takes its array library from its inputs (``array_api_compat.array_namespace``), so
the same code runs on NumPy, CuPy and any array-API library. Every check raises a
:class:`~lowrank_gcrf.errors.GCRFError` subclass whose message says what to change.
"""

from __future__ import annotations

from typing import Any

import array_api_compat

from .errors import GCRFError, GCRFTypeError

_HALF_PRECISION = ("float16", "bfloat16")


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


def dtype_name(dtype: Any) -> str:
    """The short name of a dtype (``float32``), whatever the array library."""
    return str(dtype).rsplit(".", 1)[-1]


def floating_dtypes(xp: Any, **arrays: Any) -> tuple[Any, Any]:
    """The compute and output dtypes of a solve (DESIGN §2 dtype policy).

    float32 and float64 are computed natively; float16/bfloat16 are computed in float32 and
    returned in their own dtype; mixed float dtypes promote. Non-floating inputs raise.

    Returns
    -------
    compute_dtype, output_dtype
    """
    out_dtype = None
    for name, a in arrays.items():
        if dtype_name(a.dtype) not in _HALF_PRECISION and not xp.isdtype(a.dtype, "real floating"):
            raise GCRFTypeError(
                f"{name} has dtype {dtype_name(a.dtype)}; lowrank-gcrf needs real floating "
                "arrays (float16, bfloat16, float32 or float64): cast it, e.g. "
                f"{name}.astype('float32')"
            )
        out_dtype = a.dtype if out_dtype is None else result_dtype(xp, out_dtype, a.dtype)
    compute = xp.float64 if out_dtype == xp.float64 else xp.float32
    return compute, out_dtype


def result_dtype(xp: Any, a: Any, b: Any) -> Any:
    """The dtype of a result computed from floating dtypes ``a`` and ``b``."""
    if a == b:
        return a
    ranks = {"bfloat16": 0, "float16": 0, "float32": 1, "float64": 2}
    # float16 with bfloat16 has no exact common half type: both go to float32.
    if ranks[dtype_name(a)] == ranks[dtype_name(b)]:
        return xp.float32
    return a if ranks[dtype_name(a)] > ranks[dtype_name(b)] else b


def check_finite(xp: Any, a: Any, name: str) -> None:
    """Raise if ``a`` holds NaN or ±Inf."""
    if not bool(xp.all(xp.isfinite(a))):
        raise GCRFError(
            f"{name} contains NaN or Inf; the G-CRF solve needs finite inputs (check the "
            "network output feeding it, e.g. for overflow in float16)"
        )


def check_embeddings(xp: Any, A: Any, name: str) -> None:
    """Check an embedding array of shape (..., D, n)."""
    if A.ndim < 2:
        raise GCRFError(
            f"{name} must have shape (..., D, {'P' if name == 'Ahat' else 'N'}) with at least "
            f"2 dimensions, got shape {tuple(A.shape)}"
        )
    if A.shape[-1] == 0 or A.shape[-2] == 0:
        raise GCRFError(f"{name} has an empty dimension: shape {tuple(A.shape)}")


def check_system_shape(
    got: tuple[int, ...], expected: tuple[int, ...], name: str, layout: str
) -> None:
    """Raise a shape error naming the expected ``layout`` when ``got != expected``."""
    if tuple(got) != tuple(expected):
        raise GCRFError(
            f"{name} has shape {tuple(got)} but the embeddings imply {tuple(expected)} "
            f"(layout {layout}; leading batch dimensions must equal those of the embeddings)"
        )


def as_lam(xp: Any, lam: Any, batch_shape: tuple[int, ...], dtype: Any, device: Any) -> Any:
    """λ as an array of the batch shape, validated: finite and > 0.

    Parameters
    ----------
    lam : float, 0-d array or array of shape ``batch_shape``
    """
    if isinstance(lam, bool) or not (
        isinstance(lam, (int, float)) or array_api_compat.is_array_api_obj(lam)
    ):
        raise GCRFTypeError(f"lam must be a positive float or an array, got {type(lam).__name__}")
    if array_api_compat.is_array_api_obj(lam):
        if array_api_compat.array_namespace(lam) is not xp and not (
            getattr(lam, "ndim", None) == 0 and array_api_compat.is_numpy_array(lam)
        ):
            raise GCRFTypeError(
                "lam is an array from a different library than the embeddings; pass a Python "
                "float or an array of the same library"
            )
        if lam.ndim == 0 and array_api_compat.is_numpy_array(lam):
            lam = float(lam)
    if isinstance(lam, (int, float)):
        lam_arr = xp.full(batch_shape, float(lam), dtype=dtype, device=device)
    else:
        if lam.ndim != 0 and tuple(lam.shape) != tuple(batch_shape):
            raise GCRFError(
                f"lam has shape {tuple(lam.shape)}; it must be a scalar or have the batch "
                f"shape {tuple(batch_shape)}"
            )
        lam_arr = xp.broadcast_to(xp.astype(lam, dtype), batch_shape)
    if not bool(xp.all(xp.isfinite(lam_arr))) or not bool(xp.all(lam_arr > 0)):
        raise GCRFError(
            f"lam must be finite and > 0 (it is the weight of the identity in AᵀA + λI), got "
            f"{_describe(xp, lam_arr)}"
        )
    return lam_arr


def _describe(xp: Any, a: Any) -> str:
    if a.ndim == 0 or a.size == 1:
        return repr(float(xp.reshape(a, (-1,))[0]))
    return f"values from {float(xp.min(a))!r} to {float(xp.max(a))!r}"
