"""The adapters' one door to the core: DLPack hand-over, the dtype policy, λ and solver
keywords checked once, and the forward/backward state of a solve.

Written here once, for PyTorch and TensorFlow alike:

* :func:`to_core`: framework tensors as core arrays, zero-copy through DLPack (CPU memory
  becomes a NumPy array, CUDA memory a CuPy array);
* the dtype policy (:func:`solve_dtype_names`, the core's rule applied to dtype names);
* λ: which objects are accepted (:func:`check_lam`), a layer's initial λ
  (:func:`initial_lam`) and the softplus parametrisation of a learnt λ;
* the solver keywords (:func:`check_solver_kwargs`, validated by the core's
  :func:`~lowrank_gcrf.options.solver_options`);
* the errors of a layer's positive-definiteness rescaling (:func:`check_rescaling`);
* the forward/backward state (:class:`CoreSolve`), including the reduction of a shared
  0-d λ's gradient, for a model of the core's registry or the signed model on stacked
  embeddings (:class:`SignedStack`);
* ``refine``'s embeddings or appearance lattices from an image (:func:`refine_appearance`).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, NoReturn

import array_api_compat
import numpy as np

from lowrank_gcrf.dtypes import check_floating, dtype_name, promote
from lowrank_gcrf.errors import GCRFError, GCRFTypeError
from lowrank_gcrf.host_reads import to_host
from lowrank_gcrf.image_embeddings import refine_embeddings as image_embeddings
from lowrank_gcrf.info import SolveInfo
from lowrank_gcrf.lattice_appearance import appearance_lattices
from lowrank_gcrf.models import make_operator
from lowrank_gcrf.operators import GCRFOperator
from lowrank_gcrf.options import SOLVER_KEYWORDS, SolverOptions, solver_options
from lowrank_gcrf.refine_inputs import RefineParameters, channels_first, check_refine_inputs
from lowrank_gcrf.threads import core_function, one_blas_thread
from lowrank_gcrf.validation import (
    array_namespace,
    as_lam,
    check_embedding_shape,
    check_finite,
    check_lam_object,
)
from lowrank_gcrf.woodbury import gram_overflow_error

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


def check_rescaling(embeddings: Any, lam: Any, name: str) -> NoReturn:
    """Raise the core's error for the inputs of a layer's positive-definiteness rescaling
    whose float64 Gram, or whose λ, the framework found not finite (or λ ≤ 0).

    The rescaling's eigensolve runs before the core sees the inputs, and would fail on them
    with a linear-algebra error, or blame the embeddings for a diverged λ. ``embeddings`` is
    the core view of the float64 copy the Gram was computed from, ``name`` the embeddings'
    name in messages.
    """
    xp = array_namespace(embeddings)
    check_finite(xp, embeddings, name)
    if hasattr(lam, "shape"):
        as_lam(xp, lam, tuple(lam.shape), lam.dtype, array_api_compat.device(lam))
    else:
        initial_lam(lam)
    raise gram_overflow_error(name, embeddings.dtype)


def top_eigenvectors(gram: Any) -> Any:
    """The eigenvector of the largest eigenvalue of each symmetric matrix of ``gram``
    (..., D, D), a core array; in one BLAS thread.

    A layer's rescaling takes ``‖Â‖₂² = vᵀGv`` with this v held constant: the value of the
    largest eigenvalue, and its gradient ``vvᵀ`` with respect to G (v is a stationary point
    of the Rayleigh quotient), without the framework's own eigensolver, whose threads cost
    a PyTorch training step more than the rest of the rescaling (measured in
    ``benchmarks.speed.threads``).
    """
    xp = array_namespace(gram)
    with one_blas_thread(xp):
        return xp.linalg.eigh(gram)[1][..., -1]


def check_solver_kwargs(kwargs: dict[str, Any]) -> SolverOptions:
    """The solver keywords, validated by name and value."""
    unknown = sorted(set(kwargs) - set(SOLVER_KEYWORDS))
    if unknown:
        raise GCRFError(
            f"unknown solver keyword(s) {', '.join(unknown)}; the layer accepts "
            f"{', '.join(SOLVER_KEYWORDS)}"
        )
    return solver_options(**kwargs)


@dataclass(frozen=True)
class SignedStack:
    """The signed model on stacked embeddings ``[A; Γ]`` (..., D + E, N), A the first
    ``repulsive_rank`` rows: one framework tensor then carries the gradients of both (the
    framework's concatenation splits them), so the adapters pass it where a model name goes.
    """

    repulsive_rank: int


def signed_stack(
    A: tuple[Any, Any] | None, Gamma: tuple[Any, Any] | None
) -> tuple[SignedStack, str]:
    """The stacking of A (..., D, N) and Γ (..., E, N), each given as ``(shape, dtype)`` or
    None, and the dtype name both are cast to before they are stacked.

    The core's checks, before any framework concatenation could cast an integer factor or
    fail on a factor of fewer than 2 dimensions: each present factor floating and of shape
    (..., rows, N), and the two sharing the batch shape and N.
    """
    present = {name: spec for name, spec in (("A", A), ("Gamma", Gamma)) if spec is not None}
    if not present:
        raise GCRFError("the signed model needs A, Gamma or both; both are None")
    for name, (shape, dtype) in present.items():
        check_floating(dtype_name(dtype), name)
        check_embedding_shape(tuple(shape), name)
    if len(present) == 2:
        A_shape, Gamma_shape = (tuple(shape) for shape, _ in present.values())
        if A_shape[:-2] != Gamma_shape[:-2] or A_shape[-1:] != Gamma_shape[-1:]:
            raise GCRFError(
                f"A (..., D, N) and Gamma (..., E, N) must share the batch shape and N, got "
                f"shapes {A_shape} and {Gamma_shape}"
            )
    _, common = promote(*(dtype_name(dtype) for _, dtype in present.values()))
    return SignedStack(0 if A is None else int(tuple(A[0])[-2])), common


#: What the bridge solves: a model name of the core's registry, or the signed model on
#: stacked embeddings.
SolveAs = str | SignedStack


def core_operator(model: SolveAs, embeddings: Any, lam: Any, b: Any) -> GCRFOperator:
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
    model : str or SignedStack
        A name of the core's model registry, or the signed model on stacked embeddings.
    embeddings, b : NumPy or CuPy arrays
    lam : float or array of the batch shape (or 0-d, shared by the batch)
    options : SolverOptions
        Used for both solves.
    """

    def __init__(self, model: SolveAs, embeddings: Any, b: Any, lam: Any, options: SolverOptions):
        self._setup(model, embeddings, b, lam, options)
        self.x, self.info = self.operator.solve(b, **options.as_kwargs())

    @classmethod
    def from_solution(
        cls, model: SolveAs, embeddings: Any, x: Any, lam: Any, options: SolverOptions
    ) -> CoreSolve:
        """The state of a forward solve that returned ``x`` and was not kept: its backward
        factorizes anew (a graph whose forward ran before its gradient was built)."""
        state = cls.__new__(cls)
        state._setup(model, embeddings, x, lam, options)
        state.x, state.info = x, None
        return state

    def _setup(self, model: SolveAs, embeddings: Any, b: Any, lam: Any, options: SolverOptions):
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


@core_function
def refine_appearance(
    probs: Any,
    image: Any,
    params: RefineParameters,
    *,
    lattice: bool,
    spatial_dims: int,
    logits: bool,
    channel_axis: int | None,
    carried_dtype: str,
) -> Any:
    """``refine``'s inputs checked, and what its appearance message needs of the image: with
    ``lattice``, the images' appearance lattices
    (:class:`~lowrank_gcrf.lattice_appearance.LatticeArrays`, NumPy index arrays built on
    the host, from a copy of a device image); else its Potts embeddings Â (n, D, P) on core
    arrays.

    The adapters differentiate with either as data (they depend on the image only); the
    checks and messages are the core :func:`lowrank_gcrf.refine`'s, the sum of the
    probabilities judged by the rounding of ``carried_dtype``, the tensor's own dtype. As in
    the core, NumPy's BLAS runs one thread meanwhile (for NumPy ``probs``): its small
    products gain nothing from the pool, whose threads contended with the framework's.
    """
    shape = check_refine_inputs(
        probs,
        image,
        spatial_dims=spatial_dims,
        logits=logits,
        channel_axis=channel_axis,
        carried_dtype=carried_dtype,
    )
    if not lattice:
        return image_embeddings(
            image, params, spatial_dims=spatial_dims, dtype=shape.compute, channel_axis=channel_axis
        )
    xp = array_namespace(image)
    image = channels_first(xp, image, spatial_dims, channel_axis)
    channels, spatial = image.shape[-spatial_dims - 1], image.shape[-spatial_dims:]
    images = np.reshape(np.asarray(to_host(xp, image)), (-1, channels, *spatial))
    return appearance_lattices(images, params).arrays(spatial_dims + channels)
