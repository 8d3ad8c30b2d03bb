"""Everything a ``DenseGCRF`` layer or ``GCRFHead`` decides that is not a tensor operation,
shared by the PyTorch and Keras versions: the per-model table, the shape contract, the
validated settings and the solve plan of a call.

The per-model table (:data:`LAYER_MODELS`) is the only place that knows how a model's layer
inputs look and which solve runs: the framework files ask it and hold no model branches.

Shape contract, channels first, 1 to 3 spatial dimensions: unary ``(B, L, *spatial)``,
embeddings ``(B, *channels, *spatial)`` with the model's channel axes (signed: repulsive A in
the first D channels, attractive Γ in the last E = ``attractive_dim``). The core's node order
is label-major over row-major pixels (``docs/maths.md#notation``), so both reshape to the
core's layout without a copy (:class:`LayerShapes`). The Keras layer's
``data_format="channels_last"`` moves the channel axes to the end, in the same order.
"""

from __future__ import annotations

import inspect
import math
import numbers
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from lowrank_gcrf.adapters.bridge import SignedStack, SolveAs, initial_lam
from lowrank_gcrf.dtypes import epsilon
from lowrank_gcrf.errors import GCRFError, GCRFTypeError
from lowrank_gcrf.models import MODEL_NAMES, check_model
from lowrank_gcrf.options import SolverOptions, solver_options


@dataclass(frozen=True)
class LayerModel:
    """How one model of the core's registry appears in a layer.

    Attributes
    ----------
    name : str
        The registry name.
    channels : tuple of str
        The embeddings' channel axes after the batch axis (their names in messages).
    per_label : bool
        One embedding per pixel and label (the unary flattens to L·P nodes), or one per
        pixel shared by the labels (the unary keeps its label axis).
    rescaled : str or None
        The embeddings ``pd_bound`` rescales to keep the system positive definite, by their
        name in messages: ``"Ahat"`` (Potts: ‖Â‖₂² < λ is its definiteness condition),
        ``"Gamma"`` (signed: the attractive embeddings; ‖Γ‖₂² < λ suffices whatever A is),
        or None (general: PD for any A).
    in_heads : bool
        ``GCRFHead`` builds it (its embeddings come from one convolution, without a split).
    attractive_split : bool
        The last ``attractive_dim`` embedding channels are attractive embeddings, solved as
        the signed model on stacked ``[A; Γ]``; the layer then requires ``attractive_dim``.
    """

    name: str
    channels: tuple[str, ...]
    per_label: bool
    rescaled: str | None
    in_heads: bool
    attractive_split: bool = False


#: The per-model table, one row per name of the core's registry.
LAYER_MODELS = {
    "general": LayerModel("general", ("D", "L"), per_label=True, rescaled=None, in_heads=True),
    "potts": LayerModel("potts", ("D",), per_label=False, rescaled="Ahat", in_heads=True),
    "signed": LayerModel(
        "signed",
        ("D+E", "L"),
        per_label=True,
        rescaled="Gamma",
        in_heads=False,
        attractive_split=True,
    ),
}
assert tuple(LAYER_MODELS) == MODEL_NAMES, "every registered model needs a row here"

#: Names of the spatial axes in messages, by their number.
SPATIAL_NAMES = {1: ("W",), 2: ("H", "W"), 3: ("Z", "H", "W")}


# -- settings -------------------------------------------------------------------------------------

#: The layers' default ``rtol`` is this multiple of the compute dtype's machine epsilon: no
#: residual below about ε·κ can be certified, so 1000ε (1.2e-4 in float32) accepts every
#: system with κ up to about 10³ — the Potts layer's κ is at most (1 + (L−1)ρ)/(1 − ρ), 190
#: for L = 21 and ρ = 0.9 — while a training step's gradient noise is far larger.
LAYER_RTOL_EPS = 1000


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
    # Validated once, at construction: a call looks its dtype up.
    _options: dict[str, SolverOptions] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        for dtype in ("float32", "float64"):
            rtol = LAYER_RTOL_EPS * epsilon(dtype) if self.rtol is None else self.rtol
            self._options[dtype] = solver_options(
                method=self.method,
                rtol=rtol,
                atol=self.atol,
                maxiter=self.maxiter,
                on_failure=self.on_failure,
            )

    @property
    def spec(self) -> LayerModel:
        """The model's row of :data:`LAYER_MODELS`."""
        return LAYER_MODELS[self.model]

    @property
    def potts(self) -> bool:
        """Whether the model is Potts (the layers' ``potts=`` alias, read back)."""
        return self.model == "potts"

    def options(self, compute_dtype: str) -> SolverOptions:
        """The solver options for a solve in ``compute_dtype`` (float32 or float64)."""
        return self._options[compute_dtype]

    def config(self) -> dict[str, Any]:
        """The constructor arguments that rebuild the layer (``attractive_dim`` only for the
        signed model, whose layers alone take it)."""
        config = {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        if self.attractive_dim is None:
            del config["attractive_dim"]
        return config

    def changed(self) -> dict[str, Any]:
        """The settings that differ from the defaults (for ``repr``)."""
        defaults = layer_settings()
        return {k: v for k, v in self.config().items() if getattr(defaults, k) != v}


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
    splits = [n for n, spec in LAYER_MODELS.items() if spec.attractive_split]
    if (name in splits) != (attractive_dim is not None) or not (
        attractive_dim is None or _is_positive_int(attractive_dim)
    ):
        raise GCRFError(
            "attractive_dim (E ≥ 1, the last E embedding channels are the attractive "
            f"embeddings Γ) goes with model={' or '.join(map(repr, splits))} and only with it; "
            f"got model={name!r}, attractive_dim={attractive_dim!r}"
        )
    if pd_bound is not None and not (
        isinstance(pd_bound, numbers.Real) and not isinstance(pd_bound, bool) and 0 < pd_bound < 1
    ):
        raise GCRFError(f"pd_bound must be a number in (0, 1) or None, got {pd_bound!r}")
    return LayerSettings(
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


#: The keywords of :func:`layer_settings`: the constructor arguments the layers and heads
#: pass on.
SETTING_KEYWORDS = tuple(inspect.signature(layer_settings).parameters)


def setting_arguments(arguments: dict[str, Any]) -> dict[str, Any]:
    """The :data:`SETTING_KEYWORDS` among a constructor's arguments (its ``locals()``), so
    that a layer or head passes them on without listing them again."""
    return {name: arguments[name] for name in SETTING_KEYWORDS if name in arguments}


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


# -- the solve plan of a call --------------------------------------------------------------------


@dataclass(frozen=True)
class SolvePlan:
    """What a layer call solves, decided from the settings and the embedding channels.

    ``solve_as`` is the core model the bridge solves (the signed model on stacked
    ``[A; Γ]``); the embedding channels from ``rescaled_from`` to the last are rescaled so that
    their ``‖·‖₂² ≤ pd_bound·λ`` (the framework's ``pd_scaled``), none for None.
    """

    solve_as: SolveAs
    rescaled_from: int | None
    options: SolverOptions


def solve_plan(settings: LayerSettings, channels: int, compute_dtype: str) -> SolvePlan:
    """The plan of a call with ``channels`` embedding channels (D, or D + E for signed),
    solved in ``compute_dtype``."""
    spec = settings.spec
    solve_as: SolveAs = spec.name
    first_attractive = 0
    if settings.attractive_dim is not None:
        if settings.attractive_dim > channels:
            raise GCRFError(
                f"attractive_dim={settings.attractive_dim} exceeds the {channels} embedding "
                "channels (D + E) of the signed model: the last attractive_dim channels are "
                "the attractive embeddings"
            )
        first_attractive = channels - settings.attractive_dim
        solve_as = SignedStack(first_attractive)
    rescales = settings.pd_bound is not None and spec.rescaled is not None
    rescaled_from = first_attractive if rescales else None
    return SolvePlan(solve_as, rescaled_from, settings.options(compute_dtype))


# -- shapes ---------------------------------------------------------------------------------------


def layout(channels: tuple[str, ...], spatial_rank: int, channels_last: bool = False) -> str:
    """A layout as text, e.g. ``(B, D, H, W)``."""
    spatial = SPATIAL_NAMES.get(spatial_rank, ("*spatial",))
    axes = (*spatial, *channels) if channels_last else (*channels, *spatial)
    return f"(B, {', '.join(axes)})"


def embeddings_layout(model: str, spatial_rank: int, channels_last: bool = False) -> str:
    """The expected embeddings layout for ``model``, with the alias the layers accept."""
    text = layout(LAYER_MODELS[model].channels, spatial_rank, channels_last)
    return f"{text} for potts={model == 'potts'} (model={model!r})"


@dataclass(frozen=True)
class LayerShapes:
    """Sizes of one ``DenseGCRF`` call and the core-layout shapes they imply."""

    batch: int
    labels: int
    spatial: tuple[int, ...]
    dim: int
    model: str

    @property
    def pixels(self) -> int:
        """P, the product of the spatial sizes."""
        return math.prod(self.spatial)

    @property
    def core_embeddings(self) -> tuple[int, int, int]:
        """(B, D, L·P) with one embedding per pixel and label, else (B, D, P)."""
        per_label = LAYER_MODELS[self.model].per_label
        return (self.batch, self.dim, self.pixels * (self.labels if per_label else 1))

    @property
    def core_unary(self) -> tuple[int, ...]:
        """(B, L·P) with one embedding per pixel and label, else (B, L, P)."""
        if LAYER_MODELS[self.model].per_label:
            return (self.batch, self.labels * self.pixels)
        return (self.batch, self.labels, self.pixels)

    @property
    def output(self) -> tuple[int, ...]:
        """(B, L, *spatial)."""
        return (self.batch, self.labels, *self.spatial)


def spatial_rank(unary_rank: int) -> int:
    """The number of spatial axes of a unary of rank ``unary_rank``; an error outside 1–3."""
    if not 3 <= unary_rank <= 5:
        raise GCRFError(
            f"unary must have shape (B, L, H, W) or, in general, (B, L, *spatial) with 1 to 3 "
            f"spatial dimensions (channels first), got {unary_rank} dimensions"
        )
    return unary_rank - 2


def paired_axes(model: str, rank: int) -> list[tuple[int, int]]:
    """(unary axis, embeddings axis) pairs that must have one size: B, the spatial axes and,
    with one embedding per pixel and label, L."""
    spec = LAYER_MODELS[model]
    pairs = [(0, 0)] + [(2 + i, 1 + len(spec.channels) + i) for i in range(rank)]
    return pairs + ([(1, 2)] if spec.per_label else [])


def layer_shapes(
    unary_shape: tuple[int, ...], embeddings_shape: tuple[int, ...], model: str
) -> LayerShapes:
    """Check the (channels-first) shapes of a ``DenseGCRF`` call; errors name the layout."""
    unary_shape, embeddings_shape = tuple(unary_shape), tuple(embeddings_shape)
    rank = spatial_rank(len(unary_shape))
    batch, labels, *spatial = unary_shape
    expected = embeddings_layout(model, rank)
    if len(embeddings_shape) != 1 + len(LAYER_MODELS[model].channels) + rank:
        raise GCRFError(
            f"embeddings must have shape {expected} to go with unary of shape "
            f"{unary_shape} {layout(('L',), rank)}, got {embeddings_shape}"
        )
    pairs = sorted(paired_axes(model, rank))
    names = ("B", "L", *SPATIAL_NAMES[rank])
    if any(unary_shape[i] != embeddings_shape[j] for i, j in pairs):
        sizes = ", ".join(f"{names[i]}={unary_shape[i]}" for i, _ in pairs)
        raise GCRFError(
            f"embeddings of shape {embeddings_shape} do not match unary of shape "
            f"{unary_shape}: expected {expected} with {sizes}"
        )
    return LayerShapes(batch, labels, tuple(spatial), int(embeddings_shape[1]), model)


# -- heads ----------------------------------------------------------------------------------------


def positive_size(value: Any, name: str) -> int:
    """``value`` as an int, or a GCRFError unless it is a positive integer."""
    if not _is_positive_int(value):
        raise GCRFError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class HeadSizes:
    """The validated sizes of a ``GCRFHead``: its branches are 1×1 convolutions giving L
    unary channels and D embedding channels per pixel, or D·L with one embedding per pixel
    and label (reshaped to ``(B, D, L, *spatial)``; channel ``d·L + l`` holds ``A[d, l]``)."""

    num_labels: int
    embed_dim: int
    model: str

    @property
    def per_label(self) -> bool:
        """Whether the embedding branch's channels split into (D, L)."""
        return LAYER_MODELS[self.model].per_label

    @property
    def embedding_channels(self) -> int:
        """Output channels of the embedding branch: D·L per pixel and label, else D."""
        return self.embed_dim * (self.num_labels if self.per_label else 1)


def head_sizes(num_labels: Any, embed_dim: Any, model: Any) -> HeadSizes:
    """Check a head's label count, embedding dimension and model."""
    names = [name for name, spec in LAYER_MODELS.items() if spec.in_heads]
    if model not in names:
        raise GCRFError(
            f"a GCRFHead's model must be one of {', '.join(map(repr, names))}, "
            f"got {model!r}; build other models from DenseGCRF"
        )
    return HeadSizes(
        positive_size(num_labels, "num_labels"), positive_size(embed_dim, "embed_dim"), model
    )
