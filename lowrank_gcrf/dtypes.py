"""The dtype policy, written once for the core and both adapters.

* float32 and float64 are computed natively;
* float16 and bfloat16 are computed in float32 and returned in their own dtype (a solve in
  half precision could certify no useful tolerance);
* mixed floating dtypes promote to the wider one, float16 with bfloat16 to float32;
* anything else — integers, booleans, complex — is refused with a
  :class:`~lowrank_gcrf.errors.GCRFTypeError`: a silent cast would hide a bug upstream.

Dtypes are compared by *name*, so that one rule serves NumPy (whose big-endian ``'>f8'`` is
float64 in another byte order), CuPy, PyTorch and TensorFlow. Results come back in native
byte order.

Every result leaves the core through :func:`cast_result`, the single place where a value
can overflow its output dtype (float16 holds at most 65504): it raises instead of returning
±inf.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import GCRFError, GCRFTypeError
from .host_reads import to_host

#: Floating dtypes the library accepts, ranked by width.
FLOAT_RANKS = {"float16": 0, "bfloat16": 0, "float32": 1, "float64": 2}


def dtype_name(dtype: Any) -> str:
    """The short name of a dtype (``"float32"``), whatever its library or byte order."""
    name = getattr(dtype, "name", None)  # NumPy and CuPy dtypes (byte order dropped), TF
    if isinstance(name, str):
        return name
    if isinstance(dtype, type) and issubclass(dtype, np.generic):
        return np.dtype(dtype).name  # NumPy's scalar types, e.g. numpy.float32
    return str(dtype).rsplit(".", 1)[-1]  # torch.float32, array-api-strict


def check_floating(name: str, what: str) -> None:
    """Raise :class:`GCRFTypeError` unless ``name`` is an accepted floating dtype."""
    if name not in FLOAT_RANKS:
        raise GCRFTypeError(
            f"{what} has dtype {name}; lowrank-gcrf needs real floating arrays (float16, "
            f"bfloat16, float32 or float64): cast it first, e.g. to float32"
        )


def promote(*names: str) -> tuple[str, str]:
    """``(compute, output)`` dtype names for inputs of the floating dtypes ``names``."""
    output = names[0]
    for name in names[1:]:
        if name == output:
            continue
        if FLOAT_RANKS[name] == FLOAT_RANKS[output]:
            output = "float32"  # float16 with bfloat16: no exact common half type
        elif FLOAT_RANKS[name] > FLOAT_RANKS[output]:
            output = name
    return ("float64" if output == "float64" else "float32"), output


def floating_dtypes(xp: Any, **arrays: Any) -> tuple[Any, Any]:
    """The compute and output dtypes of ``xp`` for a solve on ``arrays`` (by keyword name).

    Raises
    ------
    GCRFTypeError
        An array is not of a real floating dtype.
    """
    names = []
    for what, a in arrays.items():
        names.append(dtype_name(a.dtype))
        check_floating(names[-1], what)
    compute, output = promote(*names)
    return getattr(xp, compute), _native_dtype(xp, output, arrays.values())


def _native_dtype(xp: Any, name: str, arrays: Any) -> Any:
    """The dtype object called ``name``, in native byte order.

    NumPy has no ``bfloat16`` attribute (it comes from ml_dtypes): take it from the input.
    """
    found = getattr(xp, name, None)
    if found is not None:
        return found
    for a in arrays:
        if dtype_name(a.dtype) == name:
            return np.dtype(a.dtype).newbyteorder("=") if isinstance(a, np.ndarray) else a.dtype
    raise GCRFTypeError(f"no {name} dtype in {xp.__name__}")


def largest(name: str) -> float:
    """The largest finite value of a floating dtype, by name."""
    if name == "bfloat16":
        return float.fromhex("0x1.fep127")
    return float(np.finfo(np.dtype(name)).max)


def epsilon(name: str) -> float:
    """The machine epsilon of a floating dtype, by name."""
    if name == "bfloat16":
        return 2.0**-7
    return float(np.finfo(np.dtype(name)).eps)


def cast_result(xp: Any, value: Any, dtype: Any, what: str) -> Any:
    """``value`` cast to ``dtype``; a :class:`GCRFError` where a finite value overflowed.

    The core's inputs are checked finite, so a non-finite result is an overflow: of the
    output dtype (a float16 result above 65504) or of the compute dtype itself (a float32
    solution of a system with tiny λ and a huge right-hand side).
    """
    # asarray: NumPy turns arithmetic on 0-d arrays into scalars, which are not arrays.
    out = xp.asarray(xp.astype(value, dtype, copy=False))
    if not bool(to_host(xp, xp.all(xp.isfinite(out)))):
        raise GCRFError(overflow_message(dtype_name(dtype), what))
    return out


def results_checked() -> Any:
    """A context in which NumPy does not warn of overflow: for computing results that
    :func:`cast_result` then checks, so that its error is what an overflow raises (a
    warning would come before it, and under ``-W error`` instead of it)."""
    return np.errstate(over="ignore", invalid="ignore")


def overflow_message(name: str, what: str) -> str:
    """The message of a result too large for the dtype ``name`` (shared with the adapters,
    which cast half-precision results themselves)."""
    return (
        f"{what} overflows {name} (its largest finite value is {largest(name):.4g}): solve in "
        "a wider dtype (float64), or rescale the inputs (the solution scales linearly with b "
        "and as 1/lam)"
    )
