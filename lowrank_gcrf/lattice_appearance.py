"""The dense CRF's appearance message, ``a(q) = w_a (N − diag N) q``, in the permutohedral lattice.

``N = Δ^{-1/2} K Δ^{-1/2}`` with K the appearance kernel (``sxy``, ``srgb``) of each image
filtered by its permutohedral lattice (:mod:`lowrank_gcrf.permutohedral`) and Δ = K1 its
degrees (the lattice's constant scale cancels). Each pixel's own term is left out, as the
dense CRF's energy sums over pairs j ≠ i (pydensecrf keeps it): with it, a pixel of a colour
found nowhere else in the image reinforces its own label, and on the refine benchmark's
validation split single wrong pixels of the noisy unary survived the passes as classes
absent from the image.

The lattices are built with NumPy and SciPy on the host, from the images alone. The core
applies them to NumPy arrays as SciPy sparse matrices, image by image
(:meth:`AppearanceLattices.message`), and to CuPy arrays as the batch's CSR factors in
CuPy's sparse matrices (:meth:`AppearanceLattices.csr_message`); the adapters take the
batch's factors as index arrays (:meth:`AppearanceLattices.arrays`) and apply them to
tensors on any device as their own sparse matrices, differentiable in the probabilities.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import array_api_compat
import numpy as np
import scipy.sparse as sp

from .errors import GCRFError
from .image_kernels import appearance_scales, bandwidth_too_small, feature_norm, pixel_features
from .permutohedral import PermutohedralLattice, feature_limit, permutohedral_lattice
from .refine_inputs import RefineParameters


@dataclass(frozen=True)
class LatticeArrays:
    """A batch's lattices as arrays of sparse rows with a fixed number of entries: W's rows
    (``vertices``, ``barycentric``) and each blur step's (``neighbours``, ``weights``), so
    that ``N q`` of n images' probabilities q (n, L, P) is

    * splat: ``x[m] = Σ_{(p, r): vertices[p, r] = m} barycentric[p, r] · scale[p] q[p]``;
    * blur, for each of the d + 1 steps k: ``x ← Σ_j weights[k, :, j] · x[neighbours[k, :, j]]``;
    * slice: ``(N q)[p] = scale[p] Σ_r barycentric[p, r] · x[vertices[p, r]]``;

    the images' vertices numbered one after another (a block-diagonal batch).

    Attributes
    ----------
    vertices : ndarray (n·P, d + 1), int64
        Each pixel's simplex vertices.
    barycentric : ndarray (n·P, d + 1), float32
        Its barycentric weights on them (W's rows).
    neighbours : ndarray (d + 1, M, 3), int64
        Each blur step's row: the vertex and its two neighbours along the step's direction
        (in the stored order; the vertex itself stands for an absent neighbour).
    weights : ndarray (d + 1, M, 3), float32
        The step's entries: 1 for the vertex, ½ for a neighbour, 0 for an absent one.
    scale : ndarray (n·P,), float32
        Δ^{-1/2}.
    own : ndarray (n·P,), float32
        The diagonal of N, which the message leaves out.
    """

    vertices: np.ndarray
    barycentric: np.ndarray
    neighbours: np.ndarray
    weights: np.ndarray
    scale: np.ndarray
    own: np.ndarray

    @property
    def num_vertices(self) -> int:
        """M, the batch's lattice points."""
        return int(self.neighbours.shape[1])

    def csr_factors(self) -> tuple[sp.csr_array, sp.csr_array, tuple[sp.csr_array, ...]]:
        """W (n·P × M), Wᵀ and the blur steps B_k (M × M) as canonical CSR matrices (sorted
        column indices, no duplicates, no stored zeros; int64 indices), as cuSPARSE expects
        them. Wᵀ is transposed here by SciPy (a counting sort; PyTorch's CSR conversion takes
        several times as long)."""

        def canonical(columns: np.ndarray, values: np.ndarray, rows: int) -> sp.csr_array:
            width = columns.shape[-1]
            pointers = np.arange(0, rows * width + 1, width, dtype=np.int64)
            shape = (rows, self.num_vertices)
            # A copy: canonicalising sorts and compacts the index arrays in place.
            m = sp.csr_array((values.ravel(), columns.ravel(), pointers), shape=shape, copy=True)
            m.sum_duplicates()
            m.eliminate_zeros()
            return _int64_indices(m)

        weights = canonical(self.vertices, self.barycentric, self.vertices.shape[0])
        blur = tuple(
            canonical(c, v, self.num_vertices)
            for c, v in zip(self.neighbours, self.weights, strict=True)
        )
        return weights, _int64_indices(weights.T.tocsr()), blur


def _sparse_module(xp: Any) -> Any:
    """SciPy's or CuPy's sparse module for their arrays."""
    if array_api_compat.is_cupy_namespace(xp):
        from cupyx.scipy import sparse

        return sparse
    if array_api_compat.is_numpy_namespace(xp):
        return sp
    raise GCRFError(
        f"the lattice's sparse factors have no sparse matrices in {xp.__name__}: "
        "NumPy and CuPy arrays only"
    )


def _int64_indices(m: sp.csr_array) -> sp.csr_array:
    """``m`` with int64 index arrays (SciPy picks the narrowest that fits)."""
    m.indices, m.indptr = m.indices.astype(np.int64), m.indptr.astype(np.int64)
    return m


@dataclass(frozen=True)
class AppearanceLattices:
    """The normalised appearance kernels N of a batch of images, in their lattices.

    Attributes
    ----------
    lattices : tuple of PermutohedralLattice
        Each image's lattice, K = W B Wᵀ.
    scales : tuple of ndarray (P,), float32
        Δ^{-1/2}, from the lattice's degrees K1.
    own : tuple of ndarray (P,), float32
        diag N, from :meth:`PermutohedralLattice.self_weights`.
    """

    lattices: tuple[PermutohedralLattice, ...]
    scales: tuple[np.ndarray, ...]
    own: tuple[np.ndarray, ...]

    def message(self, weight: float, dtype: Any) -> Callable[[np.ndarray], np.ndarray]:
        """``a``: probabilities (n, L, P) → ``weight (N − diag N) q`` (n, L, P) in ``dtype``,
        filtered in float32 by the sparse factors."""
        w = np.asarray(weight, dtype=dtype)
        scales = [s.astype(dtype) for s in self.scales]
        own = [o.astype(dtype) for o in self.own]

        def message(q: np.ndarray) -> np.ndarray:
            return np.stack(
                [
                    w * (s * lattice.filter(s * qi).astype(dtype) - o * qi)
                    for lattice, s, o, qi in zip(self.lattices, scales, own, q, strict=True)
                ]
            )

        return message

    def csr_message(
        self, xp: Any, weight: float, dtype: Any, *, device: Any, feature_dims: int
    ) -> Callable[[Any], Any]:
        """:meth:`message` for arrays of ``xp`` (CuPy's or NumPy's) on ``device``: the
        batch's CSR factors (:meth:`LatticeArrays.csr_factors`) copied once into the
        library's sparse matrices (CuPy's, by cuSPARSE; SciPy's for NumPy, where
        :meth:`message` saves the conversion) and applied to the whole batch at once,
        filtered in float32 as :meth:`message` does. ``feature_dims`` (d) sizes an empty
        batch."""
        sparse = _sparse_module(xp)
        arrays = self.arrays(feature_dims)

        # int32 indices where they fit (CuPy converts or inspects int64 ones on the device),
        # and the canonical form declared (else CuPy checks it, reading back, per matrix).
        entries = max(arrays.vertices.size, arrays.neighbours.size)  # bounds every nnz and M
        index = np.int32 if entries < 2**31 else np.int64

        def copied(m: sp.csr_array) -> Any:
            indices, indptr = m.indices.astype(index), m.indptr.astype(index)
            parts = (xp.asarray(a, device=device) for a in (m.data, indices, indptr))
            matrix = sparse.csr_matrix(tuple(parts), shape=m.shape)
            matrix.has_canonical_format = True
            return matrix

        W, Wt, steps = arrays.csr_factors()
        W, Wt, blur = copied(W), copied(Wt), [copied(m) for m in steps]
        w = xp.asarray(weight, dtype=dtype, device=device)
        scale = xp.asarray(arrays.scale[:, None].astype(dtype), device=device)
        own = xp.asarray(arrays.own[:, None].astype(dtype), device=device)

        def message(q: Any) -> Any:
            n, labels, pixels = q.shape
            # Rows (n·P, L): the batch's pixels one image after another, as W's rows.
            rows = xp.reshape(xp.permute_dims(q, (0, 2, 1)), (n * pixels, labels))
            x = Wt @ xp.astype(scale * rows, xp.float32)
            for step in blur:
                x = step @ x
            out = w * (scale * xp.astype(W @ x, dtype) - own * rows)
            return xp.permute_dims(xp.reshape(out, (n, pixels, labels)), (0, 2, 1))

        return message

    def arrays(self, feature_dims: int) -> LatticeArrays:
        """The batch as :class:`LatticeArrays`; ``feature_dims`` (d) sizes an empty batch
        (the lattices' own d + 1 blur steps size the others)."""
        d1 = len(self.lattices[0].blur) if self.lattices else feature_dims + 1
        vertices, neighbours, weights = [], [], []
        offset = 0
        for lattice in self.lattices:
            vertices.append(lattice.weights.indices.reshape(-1, d1).astype(np.int64) + offset)
            steps = [step.indices.reshape(-1, 3) for step in lattice.blur]
            neighbours.append(np.stack(steps).astype(np.int64) + offset)
            weights.append(np.stack([step.data.reshape(-1, 3) for step in lattice.blur]))
            offset += lattice.num_vertices

        def joined(parts: list[np.ndarray], axis: int, empty: tuple, dtype: Any) -> np.ndarray:
            return np.concatenate(parts, axis=axis) if parts else np.zeros(empty, dtype=dtype)

        return LatticeArrays(
            vertices=joined(vertices, 0, (0, d1), np.int64),
            barycentric=joined(
                [lat.weights.data.reshape(-1, d1) for lat in self.lattices], 0, (0, d1), np.float32
            ),
            neighbours=joined(neighbours, 1, (d1, 0, 3), np.int64),
            weights=joined(weights, 1, (d1, 0, 3), np.float32),
            scale=joined(list(self.scales), 0, (0,), np.float32),
            own=joined(list(self.own), 0, (0,), np.float32),
        )


def appearance_lattices(images: np.ndarray, params: RefineParameters) -> AppearanceLattices:
    """Each image's lattice of its appearance features and the normalisation of its kernel.

    Parameters
    ----------
    images : NumPy array (n, C, *spatial)
        The images, on the 0–255 scale.
    params : RefineParameters
        ``sxy`` and ``srgb``.

    Raises
    ------
    GCRFError
        A bandwidth so small that the features leave the lattice's float32 integers.
    """
    lattices, scales, own = [], [], []
    for image in images:
        _check_lattice_bandwidths(image, params)
        features = pixel_features(np, image, sxy=params.sxy, srgb=params.srgb, dtype=np.float32)
        lattice = permutohedral_lattice(features)
        degrees = lattice.filter(np.ones((1, lattice.num_points), dtype=np.float32))[0]
        # Every pixel's degree includes its own weight: positive, but kept from 0 against
        # float32's rounding.
        scale = 1.0 / np.sqrt(np.maximum(degrees, np.finfo(np.float32).tiny))
        lattices.append(lattice)
        scales.append(scale)
        own.append(lattice.self_weights() * scale * scale)
    return AppearanceLattices(tuple(lattices), tuple(scales), tuple(own))


def _check_lattice_bandwidths(image: np.ndarray, params: RefineParameters) -> None:
    """Raise a GCRFError naming ``sxy`` or ``srgb`` where the image's appearance features
    (C, *spatial) exceed what the lattice holds
    (:func:`~lowrank_gcrf.permutohedral.feature_limit`)."""
    scales = appearance_scales(np, image, sxy=params.sxy, srgb=params.srgb)
    limit = feature_limit(image.ndim - 1 + image.shape[0])
    if feature_norm(scales) > limit:
        raise bandwidth_too_small(
            [scales], limit, "at which the lattice's float32 coordinates stop holding integers"
        )
