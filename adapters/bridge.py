"""Framework-neutral glue shared by the adapters: the one policy both follow, DLPack hand-over
and forward/backward state.

Written here once, for PyTorch and TensorFlow alike:

* the dtype policy (:func:`solve_dtype_names`, the core's rule applied to dtype names);
* λ: which objects are accepted (:func:`check_lam`), a layer's initial λ
  (:func:`initial_lam`) and the softplus parametrisation of a learnt λ;
* the solver keywords (:func:`check_solver_kwargs`, validated by the core's
  :func:`~lowrank_gcrf.options.solver_options`);
* the model names (the core's registry) and the forward/backward state
  (:class:`CoreSolve`), including the reduction of a shared 0-d λ's gradient.

The adapters call :func:`to_core` on framework tensors (zero-copy through DLPack: CPU memory
becomes a NumPy array, CUDA memory a CuPy array).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from lowrank_gcrf.dtypes import check_floating, dtype_name, promote
from lowrank_gcrf.errors import GCRFError, GCRFTypeError
from lowrank_gcrf.info import SolveInfo
from lowrank_gcrf.models import check_model, make_operator
from lowrank_gcrf.operators import GCRFOperator
from lowrank_gcrf.options import SOLVER_KEYWORDS, SolverOptions, solver_options
from lowrank_gcrf.validation import check_lam_object

# DLPack device types (dlpack.h: kDLCPU, kDLCUDA).
_DLPACK_CPU = 1
_DLPACK_CUDA = 2


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


def solve_dtype_names(embeddings_dtype: Any, b_dtype: Any) -> tuple[str, str]:
    """``(compute, output)`` dtype names of a solve: the core's policy, for framework dtypes.

    Non-floating tensors are refused, as the core refuses non-floating arrays.
    """
    names = (dtype_name(embeddings_dtype), dtype_name(b_dtype))
    for name, what in zip(names, ("embeddings", "b"), strict=True):
        check_floating(name, what)
    return promote(*names)


def check_lam(lam: Any) -> None:
    """Refuse a λ of the wrong kind (None, text, bool, complex) before any cast hides it, and
    a number λ ≤ 0 before any tracing (tensors are checked by the core)."""
    check_lam_object(lam)
    if isinstance(lam, numbers.Real):
        initial_lam(lam)


def initial_lam(lam: Any) -> float:
    """A layer's initial λ as a float: a real number or a one-element array or tensor, > 0."""
    check_lam_object(lam)
    try:
        value = float(lam)
    except (TypeError, ValueError):
        raise GCRFTypeError(
            f"a layer's lam must be one number (a float or a one-element tensor), got "
            f"{type(lam).__name__} of shape {tuple(getattr(lam, 'shape', ()))}"
        ) from None
    if not (math.isfinite(value) and value > 0):
        raise GCRFError(
            f"lam must be finite and > 0 (it is the weight of the identity in AᵀA + λI), got "
            f"{value!r}"
        )
    return value


def softplus_inverse(value: float) -> float:
    """r with softplus(r) = value > 0 (a learnable λ's initial parameter), without overflow."""
    return value + math.log(-math.expm1(-value))


def check_solver_kwargs(kwargs: dict[str, Any]) -> SolverOptions:
    """The solver keywords, validated by name and value."""
    unknown = sorted(set(kwargs) - set(SOLVER_KEYWORDS))
    if unknown:
        raise GCRFError(
            f"unknown solver keyword(s) {', '.join(unknown)}; the layer accepts "
            f"{', '.join(SOLVER_KEYWORDS)}"
        )
    return solver_options(**kwargs)


def layer_model(model: Any, potts: Any) -> str:
    """The model name of a layer, from ``model=`` or its documented alias ``potts=``."""
    if potts is None:
        return check_model("general" if model is None else model)
    if not isinstance(potts, (bool, np.bool_)):
        raise GCRFTypeError(f"potts must be True or False, got {type(potts).__name__}")
    alias = "potts" if potts else "general"
    if model not in (None, alias):
        raise GCRFError(f"model={model!r} contradicts potts={bool(potts)}: pass only model=")
    return alias


#: The layers' default ``rtol`` is this multiple of the compute dtype's machine epsilon: no
#: residual below about ε·κ can be certified, so 1000ε (1.2e-4 in float32) accepts every
#: system with κ up to about 10³ — the Potts layer's κ is at most (1 + (L−1)ρ)/(1 − ρ), 190
#: for L = 21 and ρ = 0.9 — while a training step's gradient noise is far larger.
LAYER_RTOL_EPS = 1000

#: Machine epsilon of the compute dtypes.
_EPS = {"float32": 2.0**-23, "float64": 2.0**-52}


@dataclass(frozen=True)
class LayerSettings:
    """The validated settings of a ``DenseGCRF`` layer, shared by PyTorch and Keras."""

    lam: float
    model: str
    learn_lam: bool
    pd_bound: float | None
    method: str
    rtol: float | None
    atol: float
    maxiter: int | None
    on_failure: str
    attractive_dim: int | None = None

    def options(self, compute_dtype: str) -> SolverOptions:
        """The solver options for a solve in ``compute_dtype`` (float32 or float64)."""
        rtol = LAYER_RTOL_EPS * _EPS[compute_dtype] if self.rtol is None else self.rtol
        return solver_options(
            method=self.method,
            rtol=rtol,
            atol=self.atol,
            maxiter=self.maxiter,
            on_failure=self.on_failure,
        )

    def config(self) -> dict[str, Any]:
        """The constructor arguments that rebuild the layer (``attractive_dim`` only for the
        signed model, whose layers alone take it)."""
        config = {name: getattr(self, name) for name in self.__dataclass_fields__}
        if self.attractive_dim is None:
            del config["attractive_dim"]
        return config

    def changed(self) -> dict[str, Any]:
        """The settings that differ from the defaults (for ``repr``)."""
        defaults = layer_settings()
        return {k: v for k, v in self.config().items() if getattr(defaults, k) != v}


def layer_settings(
    lam: Any = 1.0,
    model: str | None = None,
    *,
    potts: bool | None = None,
    learn_lam: bool = False,
    pd_bound: float | None = 0.9,
    method: str = "auto",
    rtol: float | None = None,
    atol: float = 0.0,
    maxiter: int | None = None,
    on_failure: str = "warn",
    attractive_dim: int | None = None,
) -> LayerSettings:
    """Validate a layer's arguments (the ``DenseGCRF`` docstrings describe them)."""
    name = layer_model(model, potts)
    if (name == "signed") != (attractive_dim is not None) or not (
        attractive_dim is None
        or (
            isinstance(attractive_dim, numbers.Integral)
            and not isinstance(attractive_dim, bool)
            and attractive_dim >= 1
        )
    ):
        raise GCRFError(
            "attractive_dim (E ≥ 1, the last E embedding channels are the attractive "
            f"embeddings Γ) goes with model='signed' and only with it; got model={name!r}, "
            f"attractive_dim={attractive_dim!r}"
        )
    if pd_bound is not None and not (
        isinstance(pd_bound, numbers.Real) and not isinstance(pd_bound, bool) and 0 < pd_bound < 1
    ):
        raise GCRFError(f"pd_bound must be a number in (0, 1) or None, got {pd_bound!r}")
    settings = LayerSettings(
        lam=initial_lam(lam),
        model=name,
        learn_lam=bool(learn_lam),
        pd_bound=None if pd_bound is None else float(pd_bound),
        method=method,
        rtol=rtol,
        atol=atol,
        maxiter=maxiter,
        on_failure=on_failure,
        attractive_dim=None if attractive_dim is None else int(attractive_dim),
    )
    settings.options("float32")  # validates the solver keywords now, not at the first batch
    return settings


@dataclass(frozen=True)
class SignedStack:
    """The signed model on stacked embeddings ``[A; Γ]`` (..., D + E, N), A the first
    ``repulsive_rank`` rows: one framework tensor then carries the gradients of both (the
    framework's concatenation splits them), so the adapters pass it where a model name goes.
    """

    repulsive_rank: int


def signed_stack(A_shape: Any, Gamma_shape: Any) -> SignedStack:
    """The stacking of A (..., D, N) and Γ (..., E, N), either None (its shape None)."""
    if A_shape is None and Gamma_shape is None:
        raise GCRFError("the signed model needs A, Gamma or both; both are None")
    if A_shape is not None and Gamma_shape is not None:
        A_shape, Gamma_shape = tuple(A_shape), tuple(Gamma_shape)
        if len(A_shape) < 2 or A_shape[:-2] != Gamma_shape[:-2] or A_shape[-1:] != Gamma_shape[-1:]:
            raise GCRFError(
                f"A (..., D, N) and Gamma (..., E, N) must share the batch shape and N, got "
                f"shapes {A_shape} and {Gamma_shape}"
            )
    return SignedStack(0 if A_shape is None else int(tuple(A_shape)[-2]))


def core_operator(model: str | SignedStack, embeddings: Any, lam: Any, b: Any) -> GCRFOperator:
    """The core operator of a solve whose right-hand side (or solution) is ``b``."""
    if isinstance(model, SignedStack):
        d = model.repulsive_rank
        A = embeddings[..., :d, :] if d else None
        Gamma = embeddings[..., d:, :] if d < embeddings.shape[-2] else None
        return make_operator("signed", A, lam, attractive=Gamma)
    if model == "potts" and b.ndim < 2:
        raise GCRFError(f"b must have shape (..., L, P) for Potts, got {tuple(b.shape)}")
    labels = int(b.shape[-2]) if model == "potts" else None
    return make_operator(model, embeddings, lam, num_labels=labels)


class CoreSolve:
    """One forward solve on core arrays, kept for its backward pass.

    Parameters
    ----------
    model : {"general", "potts"} or SignedStack
        A name of the core's model registry, or the signed model on stacked embeddings.
    embeddings, b : NumPy or CuPy arrays
    lam : float or array of the batch shape (or 0-d, shared by the batch)
    options : SolverOptions
        Used for both solves.
    """

    def __init__(self, model: str, embeddings: Any, b: Any, lam: Any, options: SolverOptions):
        self._setup(model, embeddings, b, lam, options)
        self.x, self.info = self.operator.solve(b, **options.as_kwargs())

    @classmethod
    def from_solution(
        cls, model: str, embeddings: Any, x: Any, lam: Any, options: SolverOptions
    ) -> CoreSolve:
        """The state of a forward solve that returned ``x`` and was not kept: its backward
        factorizes anew (a graph whose forward ran before its gradient was built)."""
        state = cls.__new__(cls)
        state._setup(model, embeddings, x, lam, options)
        state.x, state.info = x, None
        return state

    def _setup(self, model: str, embeddings: Any, b: Any, lam: Any, options: SolverOptions):
        self.options = options
        self.lam_is_shared = isinstance(lam, numbers.Real) or getattr(lam, "ndim", 0) == 0
        self.operator = core_operator(model, embeddings, lam, b)
        self.backward_info: SolveInfo | None = None

    def backward(self, gx: Any) -> tuple[Any, Any, Any]:
        """``(∂L/∂embeddings, ∂L/∂b, ∂L/∂λ)`` for the cotangent ``gx`` of x, reusing the
        forward's factorization; a λ shared by the batch gets the sum over it (0-d)."""
        g_u, g_b, g_lam, self.backward_info = self.operator.vjp(
            self.x,
            gx,
            factorization=None if self.info is None else self.info.factorization,
            **self.options.as_kwargs(),
        )
        if self.lam_is_shared:
            xp = self.operator.xp
            g_lam = xp.asarray(xp.sum(g_lam))
        return g_u, g_b, g_lam
