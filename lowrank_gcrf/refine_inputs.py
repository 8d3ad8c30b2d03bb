"""The checks of :func:`~lowrank_gcrf.refine`'s inputs: its parameters and its arrays.

:class:`RefineParameters` validates the kernels, their approximation and the strength;
:func:`check_refine_inputs` the probabilities and the image, their shapes, dtypes and scales.
The PyTorch and TensorFlow adapters run the same checks on their tensors' core views, so
that their messages are the core's.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import warnings
from typing import Any

import numpy as np

from .dtypes import dtype_name, epsilon, floating_dtypes
from .errors import GCRFError, GCRFTypeError
from .image_kernels import check_kernel_options
from .refine_strength import AUTO
from .validation import array_namespace, check_array, check_finite

#: The unit roundoff of float32, the precision networks compute their softmax in.
FLOAT32_EPS = float(np.finfo(np.float32).eps)
#: The largest colour a 0–255 image holds; a wider integer image above it is on another scale.
COLOUR_MAX = 255
#: A floating image above this is on another scale too: a 0–255 image stays far below it,
#: even with the overshoot of a resampling filter (bicubic, Lanczos) at its edges.
FLOAT_COLOUR_MAX = 2 * COLOUR_MAX
#: How the smoothness kernel is held: in the low-rank embeddings, or exactly by filtering.
SMOOTH_KERNELS = ("landmarks", "exact")
#: How the passes hold the appearance kernel: ``"auto"`` (the lattice where it can serve), by
#: the permutohedral lattice, or in the rank-D embeddings (the Potts resolvent).
APPEARANCE_KERNELS = ("auto", "lattice", "landmarks")


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _real(name: str, value: Any) -> float:
    """``value`` as a Python float; a GCRFTypeError naming ``name`` unless it is a real
    number (Python or NumPy, booleans refused: ``sxy=True`` is a bug, not 1 pixel)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise GCRFTypeError(f"{name} must be a real number, got {_describe(value)}")
    try:
        return float(value)
    except OverflowError:  # an int beyond float's range
        return math.inf


def _integer(name: str, value: Any) -> int:
    """``value`` as a Python int; a GCRFTypeError naming ``name`` unless it is an integer
    (Python or NumPy; booleans and floats refused)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise GCRFTypeError(f"{name} must be an integer, got {_describe(value)}")
    return int(value)


def _positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not (math.isfinite(value) and ok):
        bound = "≥ 0" if allow_zero else "> 0"
        raise GCRFError(f"{name} must be a finite number {bound}, got {value!r}")


def _strength(value: Any) -> float | str:
    """``value`` as a strength: ``"auto"``, or a float in [0, 1); raise otherwise."""
    if isinstance(value, str):
        if value != AUTO:
            raise GCRFError(f"strength must be {AUTO!r} or a number in [0, 1), got {value!r}")
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise GCRFTypeError(f"strength must be {AUTO!r} or a real number, got {_describe(value)}")
    strength = _real("strength", value)
    if not 0 <= strength < 1:
        raise GCRFError(
            f"strength must be in [0, 1) (it is ‖Â‖₂²/λ; the Potts system is positive "
            f"definite only below 1), or {AUTO!r}, got {strength!r}"
        )
    return strength


@dataclasses.dataclass(frozen=True)
class RefineParameters:
    """The dense CRF kernels, their approximation and the strength of a refinement.

    The fields and their defaults are :func:`~lowrank_gcrf.refine`'s keywords of the same names (see
    there). Construction validates them, raising :class:`GCRFTypeError` for a value of the
    wrong type and :class:`GCRFError` for one out of range, and stores numbers as Python
    ``float`` and ``int`` (NumPy scalars are accepted).
    """

    sxy: float = 80.0
    srgb: float = 13.0
    sxy_smooth: float = 3.0
    w_appearance: float = 4.0
    w_smooth: float = 0.0
    strength: float | str = AUTO
    rank: int = 32
    landmarks: int = 128
    seed: int = 0
    lam: float = 1.0
    approximation: str = "nystrom-kmeans"
    normalization: str = "symmetric"
    smooth_kernel: str = "landmarks"
    passes: int = 2
    appearance_kernel: str = "auto"

    def __post_init__(self) -> None:
        for name in ("sxy", "srgb", "sxy_smooth", "w_appearance", "w_smooth", "lam"):
            object.__setattr__(self, name, _real(name, getattr(self, name)))
        object.__setattr__(self, "strength", _strength(self.strength))
        for name in ("rank", "landmarks", "seed", "passes"):
            object.__setattr__(self, name, _integer(name, getattr(self, name)))
        for name in ("sxy", "srgb", "sxy_smooth", "lam"):
            _positive(name, getattr(self, name))
        _positive("w_appearance", self.w_appearance, allow_zero=True)
        _positive("w_smooth", self.w_smooth, allow_zero=True)
        if self.w_appearance == 0 and self.w_smooth == 0:
            raise GCRFError(
                "w_appearance and w_smooth are both 0: set at least one kernel weight > 0"
            )
        if self.rank < 1:
            raise GCRFError(f"rank must be a positive integer, got {self.rank!r}")
        if self.landmarks < self.rank:
            raise GCRFError(
                f"landmarks must be an integer ≥ rank ({self.rank}), got {self.landmarks!r}: "
                "the rank-D embeddings are compressed from the m landmarks' approximation"
            )
        if self.seed < 0:
            raise GCRFError(
                f"seed must be an integer ≥ 0 (it seeds numpy.random.default_rng), got "
                f"{self.seed!r}"
            )
        check_kernel_options(self.approximation, self.normalization)
        if self.smooth_kernel not in SMOOTH_KERNELS:
            raise GCRFError(
                f"smooth_kernel must be one of {', '.join(SMOOTH_KERNELS)}; got "
                f"{self.smooth_kernel!r}"
            )
        if self.passes < 0:
            raise GCRFError(
                f"passes must be an integer ≥ 0 (0: the exact Potts solve), got {self.passes!r}"
            )
        if self.appearance_kernel not in APPEARANCE_KERNELS:
            raise GCRFError(
                f"appearance_kernel must be one of {', '.join(APPEARANCE_KERNELS)}; got "
                f"{self.appearance_kernel!r}"
            )
        if self.appearance_kernel == "lattice" and self.passes == 0:
            raise GCRFError(
                "appearance_kernel='lattice' is an option of the mean-field passes "
                "(passes > 0); the exact Potts solve (passes=0) needs the rank-D embeddings: "
                "pass appearance_kernel='landmarks' or 'auto'"
            )
        if self.appearance_kernel == "lattice" and self.strength != AUTO:
            raise GCRFError(
                f"strength={self.strength!r} sets the low-rank Potts resolvent, which the "
                "lattice's passes do not use: pass strength='auto', or "
                "appearance_kernel='landmarks'"
            )
        if self.appearance_kernel == "lattice" and self.w_smooth > 0:
            raise GCRFError(
                f"w_smooth={self.w_smooth!r} puts the smoothness kernel in the rank-D "
                "embeddings, which the lattice's passes do not use (they apply it exactly, "
                "at a fixed weight): pass w_smooth=0, or appearance_kernel='landmarks'"
            )
        if self.passes > 0 and self.smooth_kernel == "exact" and self.w_smooth > 0:
            raise GCRFError(
                "smooth_kernel='exact' is an option of the exact solve (passes=0); the "
                "mean-field passes (passes > 0) apply the smoothness kernel exactly already"
            )


def check_adapter_parameters(params: RefineParameters) -> None:
    """Raise for what only the core :func:`~lowrank_gcrf.refine` does: the exact smoothness
    kernel with the exact solve (the adapters differentiate through the exact solve with
    low-rank embeddings)."""
    if params.smooth_kernel == "exact" and params.w_smooth > 0:
        raise GCRFError(
            "smooth_kernel='exact' is available in lowrank_gcrf.refine only (NumPy and CuPy "
            "arrays); the adapters hold the smoothness kernel in the landmarks: pass "
            "smooth_kernel='landmarks', or w_smooth=0"
        )


def checked_spatial_dims(value: Any) -> int:
    """``value`` as the number of trailing spatial axes, 1, 2 or 3; raise otherwise."""
    spatial_dims = _integer("spatial_dims", value)
    if spatial_dims not in (1, 2, 3):
        raise GCRFError(f"spatial_dims must be 1, 2 or 3, got {value!r}")
    return spatial_dims


def channels_first(xp: Any, image: Any, spatial_dims: int, channel_axis: Any) -> Any:
    """``image`` with its channel axis moved where refine reads it, before the spatial axes.

    ``channel_axis=None`` reads the image as it is, (..., C, *spatial).
    """
    if channel_axis is None:
        return image
    axis = _integer("channel_axis", channel_axis)
    if not -image.ndim <= axis < image.ndim:
        raise GCRFError(
            f"channel_axis={axis} is not an axis of image, whose shape is {tuple(image.shape)}"
        )
    target = image.ndim - spatial_dims - 1
    axis %= image.ndim
    if target < 0 or axis == target:
        return image  # too few axes: the shape check reports it
    order = [i for i in range(image.ndim) if i != axis]
    order.insert(target, axis)
    return xp.permute_dims(image, tuple(order))


def _check_shapes(
    probs: Any, image: Any, spatial_dims: int, given: tuple[int, ...], channel_axis: Any
) -> tuple[tuple[int, ...], ...]:
    """Batch shape, labels and spatial shape; raise when probs and image disagree.

    ``image`` is read as (..., C, *spatial) (channels moved by :func:`channels_first`);
    ``given`` is its shape as passed, for the messages.
    """
    for name, a in (("probs", probs), ("image", image)):
        if a.ndim < spatial_dims + 1:
            axis = "L" if name == "probs" else "C"
            raise GCRFError(
                f"{name} has shape {tuple(a.shape)}; with spatial_dims={spatial_dims} it must "
                f"have shape (..., {axis}, {', '.join('S' * spatial_dims)}) — set spatial_dims "
                "to the number of trailing spatial axes"
                + ("; a grayscale image needs a channel axis of length 1" if axis == "C" else "")
            )
    batch, spatial = tuple(probs.shape[: -spatial_dims - 1]), tuple(probs.shape[-spatial_dims:])
    image_batch = tuple(image.shape[: -spatial_dims - 1])
    image_spatial = tuple(image.shape[-spatial_dims:])
    if (image_batch, image_spatial) != (batch, spatial):
        if channel_axis is None and given[-1] in (3, 4) and given[:-1] == batch + spatial:
            raise GCRFError(
                f"image has shape {given}, channels last (as scikit-image, PIL and pydensecrf "
                "lay images out), but refine reads image as (..., C, *spatial) by default: "
                "pass channel_axis=-1"
            )
        read = "as (..., C, *spatial)"
        if channel_axis is not None:
            read += f" with its channel_axis={channel_axis} moved there"
        raise GCRFError(
            f"probs has shape {tuple(probs.shape)} (batch {batch}, spatial {spatial}) but image "
            f"has shape {given}, read {read}: batch {image_batch}, spatial {image_spatial}. "
            "The image must be (..., C, *spatial) with the batch and spatial shape of probs: "
            "pass channel_axis for another layout of the image, and resize the "
            "probabilities (or the image) where the spatial shapes differ"
        )
    if probs.shape[-spatial_dims - 1] == 0 or image.shape[-spatial_dims - 1] == 0:
        raise GCRFError("probs needs at least one label and image at least one channel")
    if math.prod(spatial) == 0:
        raise GCRFError(f"probs and image have no pixels: their spatial shape is {spatial}")
    return batch, (int(probs.shape[-spatial_dims - 1]),), spatial


def _compute_dtype(xp: Any, probs: Any) -> Any:
    """The library's dtype policy for ``probs``: float64 computed in float64, float32 and
    half precision in float32; anything else raises."""
    return floating_dtypes(xp, probs=probs)[0]


def _check_probabilities(
    xp: Any, probs: Any, num_labels: int, axis: int, carried_dtype: str | None
) -> None:
    if not bool(xp.all(probs >= 0)):
        raise GCRFError(
            "probs has negative values; pass probabilities (a softmax), or pass the scores "
            "with logits=True"
        )
    if probs.size == 0:
        return
    # A softmax computed in precision ε sums to 1 within about L·ε (the roundings of its L
    # exponentials, of their sum and of each quotient), and √ε is room for what comes after
    # it (resampling, averaging). The precision the values carry is not their dtype's when
    # they were cast up: a network's float32 softmax cast to float64 has float32's
    # rounding. Networks compute in float32 or wider, so L·ε is taken at least float32's;
    # values cast up before they reached the core (bfloat16, which has no NumPy dtype to
    # cross DLPack with) carry ``carried_dtype``'s.
    eps = max(epsilon(dtype_name(probs.dtype)), epsilon(carried_dtype or "float64"))
    tol = math.sqrt(eps) + num_labels * max(eps, FLOAT32_EPS)
    total = xp.sum(xp.astype(probs, _compute_dtype(xp, probs)), axis=axis)
    worst = float(xp.max(xp.abs(total - 1.0)))
    if worst > tol:
        raise GCRFError(
            f"probs does not sum to 1 over the label axis (largest deviation {worst:.3g}, "
            f"tolerance {tol:.2g} for {dtype_name(probs.dtype)}): pass a softmax over the "
            "labels, or the scores with logits=True"
        )


def _check_image(xp: Any, image: Any) -> None:
    integral = xp.isdtype(image.dtype, "integral")
    if xp.isdtype(image.dtype, "bool") or not (
        integral
        or xp.isdtype(image.dtype, "real floating")
        or dtype_name(image.dtype) in ("float16", "bfloat16")
    ):
        raise GCRFTypeError(
            f"image has dtype {dtype_name(image.dtype)}; pass uint8 (0–255) or a real floating "
            "image on the 0–255 scale"
        )
    if not integral:
        check_finite(xp, image, "image")
    if image.size == 0 or dtype_name(image.dtype) == "uint8":
        return
    top = float(xp.max(image))
    if not integral and max(top, -float(xp.min(image))) <= 1.0:
        warnings.warn(
            "image is floating point with values in [-1, 1]; refine reads colours on the "
            "0–255 scale (srgb is in those units): multiply a [0, 1] image by 255",
            UserWarning,
            stacklevel=3,
        )
    elif top > (COLOUR_MAX if integral else FLOAT_COLOUR_MAX):
        warnings.warn(
            f"image has values up to {top:g} ({dtype_name(image.dtype)}); refine reads colours "
            "on the 0–255 scale (srgb is in those units): rescale a 12- or 16-bit image to "
            "0–255 (e.g. image * (255 / 4095) for 12 bits), or give srgb in its units",
            UserWarning,
            stacklevel=3,
        )


def _warn_if_energies(xp: Any, scores: Any, num_labels: int, axis: int) -> None:
    """Warn when ``logits=True`` scores are recognisably energies ``−log p`` (pydensecrf's
    unary): all ≥ 0, not all equal, and ``Σ_k exp(−s_k) = 1`` at every pixel within √ε of
    float32 plus the L·1e-5 that clipping the probabilities at 1e-5 (as pydensecrf's
    ``unary_from_softmax`` does) adds. Scores are read higher-is-likelier: energies would
    invert the result."""
    if num_labels < 2 or scores.size == 0:
        return
    s = xp.astype(scores, xp.float64)
    if not (float(xp.min(s)) >= 0.0 and float(xp.max(s)) > float(xp.min(s))):
        return
    total = xp.sum(xp.exp(-s), axis=axis)
    tol = math.sqrt(FLOAT32_EPS) + num_labels * 1e-5
    if float(xp.max(xp.abs(total - 1.0))) <= tol:
        warnings.warn(
            "probs with logits=True look like energies −log p (all ≥ 0, and exp(−probs) sums "
            "to 1 over the labels): refine reads logits as scores, higher for likelier labels, "
            "so energies invert the result. Pass the probabilities exp(−energies) with "
            "logits=False, or the scores −energies with logits=True",
            UserWarning,
            stacklevel=3,
        )


@dataclasses.dataclass(frozen=True)
class RefineShape:
    """What :func:`check_refine_inputs` found: namespace, shapes and compute dtype."""

    xp: Any
    batch: tuple[int, ...]
    num_labels: int
    spatial: tuple[int, ...]
    compute: Any


def check_refine_inputs(
    probs: Any,
    image: Any,
    *,
    spatial_dims: int,
    logits: bool,
    channel_axis: int | None = None,
    carried_dtype: str | None = None,
) -> RefineShape:
    """Validate :func:`~lowrank_gcrf.refine`'s arrays and return what they hold.

    The adapters call it on their tensors' core views; ``carried_dtype`` names the dtype of
    probabilities they cast up first (whose rounding the sum to 1 is judged by).

    Raises
    ------
    GCRFError, GCRFTypeError
        As listed in :func:`~lowrank_gcrf.refine`.
    """
    check_array(probs, "probs")
    check_array(image, "image")
    xp = array_namespace(probs, image)
    spatial_dims = checked_spatial_dims(spatial_dims)
    if not isinstance(logits, (bool, np.bool_)):
        raise GCRFTypeError(f"logits must be True or False, got {_describe(logits)}")
    given = tuple(image.shape)
    image = channels_first(xp, image, spatial_dims, channel_axis)
    batch, (num_labels,), spatial = _check_shapes(probs, image, spatial_dims, given, channel_axis)
    compute = _compute_dtype(xp, probs)
    _check_image(xp, image)
    check_finite(xp, probs, "probs")
    if logits:
        _warn_if_energies(xp, probs, num_labels, -spatial_dims - 1)
    else:
        _check_probabilities(xp, probs, num_labels, -spatial_dims - 1, carried_dtype)
    return RefineShape(xp, batch, num_labels, spatial, compute)
