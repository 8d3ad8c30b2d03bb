"""The test-side model registry: one :class:`ModelCase` per model of ``lg.MODEL_NAMES``.

The generic suites (dense references, array libraries, CuPy, bad input, layers, gradients)
parametrize over :data:`MODEL_CASES`, so that every model runs every generic case;
``test_model_cases.py`` fails when a model of the library has no entry in :data:`REGISTRY`.

Every model is seen through one calling convention, in the core's layout:

* ``embeddings``: A (..., D, N) for ``general``, Â (..., D, P) for ``potts``, and for
  ``signed`` the stack ``[A; Γ]`` (..., D + E, N) whose last E = :data:`ATTRACTIVE_DIM`
  rows are the attractive Γ (the order of the signed layers' channels);
* ``b`` and ``x``: (..., N), or (..., L, P) for ``potts``;
* ``case.solve(embeddings, b, lam, **kw)`` and ``case.vjp(embeddings, x, gx, lam, **kw)``
  call the model's public functions; the VJP gives ``(∂L/∂embeddings, ∂L/∂b, ∂L/∂λ)``, the
  first stacked like the embeddings.

Drawn systems are positive definite with a known ``system.kappa``, from which the suites
derive their tolerances: an upper bound (mostly exact) on the 2-norm condition number κ(M)
that also bounds the relative rounding of a matrix-free matvec (ε·kappa·‖b‖); it is κ(M)
for the general and Potts models, a little more for the signed one (see _make_signed).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import array_api_compat
import numpy as np
import pytest
from hypothesis import strategies as st

import lowrank_gcrf as lg
from lowrank_gcrf import testing

#: E, the attractive rows of the signed test embeddings (the signed layers' last channels).
ATTRACTIVE_DIM = 2
BATCH_SHAPES: Sequence[tuple[int, ...]] = ((), (1,), (2,), (2, 3))


@dataclass(frozen=True)
class System:
    """A drawn positive definite system of one model, in NumPy."""

    case: ModelCase
    embeddings: np.ndarray
    b: np.ndarray
    lam: Any  # a float, or a float64 array of the batch shape
    kappa: float

    @property
    def num_labels(self) -> int:
        return self.case.num_labels(self.b)

    def args(self, to: Callable[[Any], Any] = lambda a: a) -> tuple[Any, Any, Any]:
        """(embeddings, b, λ), the arrays converted by ``to`` (e.g. into another library)."""
        lam = to(self.lam) if isinstance(self.lam, np.ndarray) else self.lam
        return to(self.embeddings), to(self.b), lam

    def dense(self) -> np.ndarray:
        """The system matrix in float64, (..., n, n)."""
        return self.case.dense(self.embeddings, self.lam, self.num_labels)

    def flat_b(self) -> np.ndarray:
        """b as float64 vectors (..., n) of the dense matrix."""
        return self.case.flat(np.asarray(self.b, dtype=np.float64))

    def reference(self) -> np.ndarray:
        """The float64 dense solution, shaped like b."""
        return testing.reference_solve(self.dense(), self.flat_b()).reshape(self.b.shape)


@dataclass(frozen=True)
class ModelCase:
    """How the tests draw, solve, differentiate and lay out one model."""

    name: str
    #: How the core's messages name the (first) embeddings argument.
    embedding_name: str
    #: The embeddings as the positional arguments of the model's functions.
    split: Callable[[Any], tuple[Any, ...]]
    #: The core's solve and VJP, as the library's public functions take them.
    public_solve: Callable[..., Any]
    public_vjp: Callable[..., tuple]
    #: ``dense(embeddings, lam, num_labels)``: the float64 matrix of lowrank_gcrf.testing.
    dense: Callable[..., np.ndarray]
    #: ``make(seed, *, rank, pixels, labels, kappa, batch_shape=(), dtype=np.float64,
    #: per_batch_lam=False)``: a System of rank D and N = labels·pixels unknowns (Potts:
    #: P = pixels, L = labels; general and signed ignore the split of N).
    make: Callable[..., System]
    #: ``systems(dtype=, log10_kappa=, batch_shapes=)``: a hypothesis strategy of Systems.
    systems: Callable[..., Any]
    #: The function of ``lowrank_gcrf.adapters.torch`` / ``.tensorflow`` for this model.
    adapter_function: str
    #: Rows of the embeddings a raw layer (``strength=None``) clamps to
    #: ‖·‖₂² ≤ max_strength·λ (None: no clamp).
    bounded_rows: slice | None
    #: Whether ``GCRFHead`` builds this model.
    has_head: bool
    #: ``indefinite_lam(system)``: a λ at which the system is indefinite (half the critical
    #: λ), None for the general model (definite for every λ > 0) ...
    indefinite_lam: Callable[[System], Any] | None
    #: ... and a fragment of the IndefiniteSystemError's message, which says what to change.
    indefinite_message: str | None

    def __str__(self) -> str:  # the pytest id
        return self.name

    # -- the core -----------------------------------------------------------------------

    @property
    def potts_layout(self) -> bool:
        """Right-hand sides (..., L, P) rather than (..., N)."""
        return self.name == "potts"

    def num_labels(self, b: Any) -> int:
        """L of a right-hand side (1 where the layout has no label axis)."""
        return int(b.shape[-2]) if self.potts_layout else 1

    def flat(self, v: Any) -> Any:
        """Right-hand sides or solutions as the dense matrix's vectors (..., n)."""
        return v.reshape(*v.shape[:-2], -1) if self.potts_layout else v

    def solve(self, embeddings: Any, b: Any, lam: Any, **kwargs: Any) -> Any:
        return self.public_solve(*self.split(embeddings), b, lam, **kwargs)

    def vjp(self, embeddings: Any, x: Any, gx: Any, lam: Any, **kwargs: Any) -> tuple:
        """(∂L/∂embeddings, ∂L/∂b, ∂L/∂λ), the embeddings' gradient stacked like them."""
        *g_embeddings, g_b, g_lam = self.public_vjp(*self.split(embeddings), x, gx, lam, **kwargs)
        if len(g_embeddings) > 1:
            xp = array_api_compat.array_namespace(*g_embeddings)
            g_embeddings = [xp.concat(g_embeddings, axis=-2)]
        return g_embeddings[0], g_b, g_lam

    def operator(self, embeddings: Any, lam: Any, num_labels: int = 1) -> lg.GCRFOperator:
        """The model's operator, built by the library's registry."""
        parts = self.split(embeddings)
        if len(parts) > 1:
            return lg.make_operator(self.name, parts[0], lam, attractive=parts[1])
        labels = num_labels if self.potts_layout else None
        return lg.make_operator(self.name, embeddings, lam, num_labels=labels)

    # -- the adapters and layers --------------------------------------------------------

    def adapter_solve(self, adapter: Any, embeddings: Any, b: Any, lam: Any, **kwargs: Any):
        """The adapter module's function for this model, on core-layout tensors."""
        function = getattr(adapter, self.adapter_function)
        return function(*self.split(embeddings), b, lam, **kwargs)

    def layer_kwargs(self, *, learnt: bool = False) -> dict[str, Any]:
        """The ``DenseGCRF`` arguments that choose this model: a raw layer (the embeddings as
        given, ``strength=None``) unless ``learnt``, the default layer with a learnt strength."""
        kwargs: dict[str, Any] = {"model": self.name}
        if not learnt:
            kwargs["strength"] = None
        if self.name == "signed":
            kwargs["attractive_dim"] = ATTRACTIVE_DIM
        return kwargs

    def embedding_channels(self, dim: int, labels: int) -> tuple[int, ...]:
        """The channel axes of a layer's embeddings, after B and before the spatial axes:
        (D,) for Potts, (D, L) general, (D + E, L) signed with E = ATTRACTIVE_DIM."""
        if self.potts_layout:
            return (dim,)
        return (dim + (ATTRACTIVE_DIM if self.name == "signed" else 0), labels)

    def layer_system(
        self, unary, embeddings, lam, max_strength=0.9, strength: Any = None
    ) -> System:
        """The system a channels-first layer solves, in float64 and the core's layout: the
        label-major flattening, then with a ``strength`` ρ (one, or one per block) every
        embedding block (the model's split) scaled to ρ·λ over its bound on ‖·‖₂²,
        ``(Σᵢ eᵢ³²)^(1/32)`` (eᵢ the Gram's eigenvalues: the layers' 5 squarings), else the
        bounded rows clamped to ‖·‖₂² ≤ max_strength·λ."""
        batch, labels, *_ = unary.shape
        U = np.array(embeddings, dtype=np.float64).reshape(batch, embeddings.shape[1], -1)
        if strength is not None:
            blocks = []
            parts = self.split(U)
            strengths = np.broadcast_to(np.asarray(strength, dtype=np.float64), len(parts))
            for block, strength in zip(parts, strengths, strict=True):
                gram = block @ np.swapaxes(block, -1, -2)
                eigenvalues = np.clip(np.linalg.eigvalsh(gram), 0, None)
                top = eigenvalues[..., -1:]
                bound = top[..., 0] * np.sum((eigenvalues / top) ** 32, axis=-1) ** (1 / 32)
                blocks.append(block * np.sqrt(strength * lam / bound)[:, None, None])
            U = np.concatenate(blocks, axis=1)
        elif self.bounded_rows is not None and max_strength is not None:
            rows = U[:, self.bounded_rows]
            factor = np.sqrt(np.minimum(1.0, max_strength * lam / top_eigenvalue(rows)))
            U[:, self.bounded_rows] = rows * factor[:, None, None]
        core_shape = (batch, labels, -1) if self.potts_layout else (batch, -1)
        b = np.asarray(unary, dtype=np.float64).reshape(core_shape)
        return System(self, U, b, lam, self.condition(U, lam, labels))

    def layer_reference(
        self, unary, embeddings, lam, max_strength=0.9, strength=None, **kwargs
    ) -> np.ndarray:
        """A channels-first layer's output (B, L, *spatial) from the core."""
        system = self.layer_system(unary, embeddings, lam, max_strength, strength)
        return self.solve(*system.args(), **kwargs).reshape(unary.shape)

    def condition(self, embeddings, lam, num_labels: int = 1) -> float:
        """The ``kappa`` of a system (see System) from its dense matrix: κ(M), and for the
        signed model (λ + ‖A‖₂² + ‖Γ‖₂²)/λ_min(M); the largest of a batch."""
        e = np.linalg.eigvalsh(self.dense(embeddings, lam, num_labels))
        high = e[..., -1]
        if self.name == "signed":
            high = np.asarray(lam) + sum(map(top_eigenvalue, self.split(embeddings)))
        return float(np.max(high / e[..., 0]))


def top_eigenvalue(U: np.ndarray) -> np.ndarray:
    """‖U‖₂² of each (k, n) matrix of a batch, from the k×k Gram in float64."""
    U = np.asarray(U, dtype=np.float64)
    return np.linalg.eigvalsh(U @ np.swapaxes(U, -1, -2))[..., -1]


# -- general and Potts: lowrank_gcrf.testing's systems -----------------------------------


def _from_testing(name: str) -> Callable[[testing.GCRFSystem], System]:
    def wrap(system: testing.GCRFSystem) -> System:
        return System(REGISTRY[name], system.embeddings, system.b, system.lam, system.kappa)

    return wrap


def _make_general(seed, *, rank, pixels, labels, kappa, **options) -> System:
    system = testing.make_general_system(seed, rank=rank, n=labels * pixels, kappa=kappa, **options)
    return _from_testing("general")(system)


def _make_potts(seed, *, rank, pixels, labels, kappa, **options) -> System:
    system = testing.make_potts_system(
        seed, rank=rank, pixels=pixels, labels=labels, kappa=kappa, **options
    )
    return _from_testing("potts")(system)


def _general_systems(**options) -> Any:
    return testing.general_systems(**options).map(_from_testing("general"))


def _potts_systems(**options) -> Any:
    return testing.potts_systems(**options).map(_from_testing("potts"))


# -- signed: λ from the spectrum of AᵀA − ΓᵀΓ --------------------------------------------


def _signed_split(embeddings: Any) -> tuple[Any, Any]:
    return embeddings[..., :-ATTRACTIVE_DIM, :], embeddings[..., -ATTRACTIVE_DIM:, :]


def _signed_dense(embeddings: Any, lam: Any, num_labels: int = 1) -> np.ndarray:
    return testing.signed_dense_matrix(*_signed_split(embeddings), lam)


def _signed_bounds(U: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(low, scale) per system: low ≤ min(0, λ_min(AᵀA − ΓᵀΓ)) and scale = ‖A‖₂² + ‖Γ‖₂².

    The non-zero eigenvalues of UᵀSU are those of ``RᵀSR`` with ``RRᵀ = UUᵀ`` (the small
    Gram); zero, an eigenvalue whenever D + E < N, is added: exact there, a bound otherwise.
    """
    signature = np.r_[np.ones(U.shape[-2] - ATTRACTIVE_DIM), -np.ones(ATTRACTIVE_DIM)]
    w, V = np.linalg.eigh(U @ np.swapaxes(U, -1, -2))
    R = V * np.sqrt(np.clip(w, 0.0, None))[..., None, :]
    low = np.linalg.eigvalsh(np.swapaxes(R, -1, -2) @ (signature[:, None] * R))[..., 0]
    A, Gamma = _signed_split(U)
    return np.minimum(low, 0.0), top_eigenvalue(A) + top_eigenvalue(Gamma)


def _make_signed(
    seed, *, rank, pixels, labels, kappa, batch_shape=(), dtype=np.float64, per_batch_lam=False
) -> System:
    """A signed system with D = rank repulsive and E = ATTRACTIVE_DIM attractive rows.

    Its ``kappa`` is ``(λ + ‖A‖₂² + ‖Γ‖₂²) / λ_min(M)``, not only an upper bound on κ(M) but
    also what governs the rounding of the matrix-free matvec ``λx + Aᵀ(Ax) − Γᵀ(Γx)``
    (about ε·kappa·‖b‖), whose terms can be far larger than Mx where A and Γ cancel; the
    general and Potts matvecs have no such cancellation and their κ(M) plays both parts.
    With low ≤ min(0, λ_min(AᵀA − ΓᵀΓ)) and scale = ‖A‖₂² + ‖Γ‖₂², λ = (scale − κ·low)/(κ−1)
    gives ``kappa`` = κ (exactly when D + E < N: then low < 0 for random rows, so that the
    attractive term matters and λ sits just above the definiteness boundary for large κ).
    A scalar λ is the largest of the batch's, and ``kappa`` the batch's largest.
    """
    rng = np.random.default_rng(seed)
    n = labels * pixels
    U = rng.standard_normal((*batch_shape, rank + ATTRACTIVE_DIM, n)) / np.sqrt(n)
    U, b = U.astype(dtype), rng.standard_normal((*batch_shape, n)).astype(dtype)
    # The bounds of the rounded embeddings: the system the solver is given.
    low, scale = _signed_bounds(U.astype(np.float64))
    lam = (scale - kappa * low) / (kappa - 1.0)
    if not per_batch_lam:
        lam = float(np.max(lam))
    actual = np.max((lam + scale) / (lam + low))
    return System(REGISTRY["signed"], U, b, lam, float(actual))


def _signed_systems(
    *,
    dtype: Any = np.float64,
    batch_shapes: Sequence[tuple[int, ...]] = BATCH_SHAPES,
    max_rank: int = 10,
    max_n: int = 40,
    log10_kappa: tuple[float, float] = (np.log10(2.0), 6.0),
) -> Any:
    """Hypothesis strategy of signed Systems: D ∈ [1, max_rank], N ∈ [1, max_n] (so that
    D + E ≥ N occurs), κ log-uniform in 10**log10_kappa, scalar or per-batch λ."""

    @st.composite
    def draw(draw_: Any) -> System:
        return _make_signed(
            draw_(st.integers(0, 2**32 - 1)),
            rank=draw_(st.integers(1, max_rank)),
            pixels=draw_(st.integers(1, max_n)),
            labels=1,
            kappa=10.0 ** draw_(st.floats(*log10_kappa)),
            batch_shape=draw_(st.sampled_from(list(batch_shapes))),
            dtype=dtype,
            per_batch_lam=draw_(st.booleans()),
        )

    return draw()


def _potts_indefinite_lam(system: System) -> Any:
    return 0.5 * top_eigenvalue(system.embeddings)


def _signed_indefinite_lam(system: System) -> Any:
    """Half of −λ_min(AᵀA − ΓᵀΓ), positive for the draws with D + E < N."""
    low = np.linalg.eigvalsh(_signed_dense(system.embeddings, 0.0))[..., 0]
    assert np.all(low < 0), "this draw is definite for every λ > 0"
    return -0.5 * low


def _single(embeddings: Any) -> tuple[Any]:
    return (embeddings,)


REGISTRY: dict[str, ModelCase] = {
    case.name: case
    for case in (
        ModelCase(
            name="general",
            embedding_name="A",
            split=_single,
            public_solve=lg.solve,
            public_vjp=lg.solve_vjp,
            dense=lambda U, lam, num_labels=1: testing.dense_matrix(U, lam),
            make=_make_general,
            systems=_general_systems,
            adapter_function="solve",
            bounded_rows=None,
            has_head=True,
            indefinite_lam=None,
            indefinite_message=None,
        ),
        ModelCase(
            name="potts",
            embedding_name="Ahat",
            split=_single,
            public_solve=lg.solve_potts,
            public_vjp=lg.solve_potts_vjp,
            dense=testing.potts_dense_matrix,
            make=_make_potts,
            systems=_potts_systems,
            adapter_function="solve_potts",
            bounded_rows=slice(None),
            has_head=True,
            indefinite_lam=_potts_indefinite_lam,
            indefinite_message="lam > ‖Ahat‖₂²",
        ),
        ModelCase(
            name="signed",
            embedding_name="A",
            split=_signed_split,
            public_solve=lg.solve_signed,
            public_vjp=lg.solve_signed_vjp,
            dense=_signed_dense,
            make=_make_signed,
            systems=_signed_systems,
            adapter_function="solve_signed",
            bounded_rows=slice(-ATTRACTIVE_DIM, None),
            # GCRFHead builds the general and Potts heads only (it refuses "signed").
            has_head=True,
            indefinite_lam=_signed_indefinite_lam,
            indefinite_message="Increase lam above",
        ),
    )
}

#: The cases of the library's models, in lg.MODEL_NAMES order: what the suites parametrize
#: over. A model without an entry is left out here and fails test_model_cases.py.
MODEL_CASES: list[ModelCase] = [REGISTRY[name] for name in lg.MODEL_NAMES if name in REGISTRY]

#: Parametrizes a test's ``case`` argument over MODEL_CASES, with the model names as ids.
each_model = pytest.mark.parametrize("case", MODEL_CASES, ids=str)

#: The cases of the models that a λ > 0 can make indefinite (Potts and signed).
INDEFINITE_CASES = [case for case in MODEL_CASES if case.indefinite_lam is not None]
