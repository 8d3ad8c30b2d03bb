"""Everything a ``DenseGCRF`` layer decides that is not a tensor operation, shared by the
PyTorch and Keras versions: the per-model table, the validated settings and the solve plan of
a call (the shape contract is :mod:`~lowrank_gcrf.adapters.layer_shapes`, a head's sizes
:mod:`~lowrank_gcrf.adapters.head_plan`).

The per-model table (:data:`LAYER_MODELS`) is the only place that knows how a model's layer
inputs look and which solve runs: the framework files ask it and hold no model branches.

The pairwise term's size is learnt (``strength=``): each embedding block is normalised to
``‖block‖₂² ≤ ρ·λ`` with ``ρ = max_strength·sigmoid(r)`` and r a parameter, so the embeddings
give the affinities' shape and ρ their size (``docs/guide/lambda.md``).
"""

from __future__ import annotations

import inspect
import math
import numbers
import warnings
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
    blocks : tuple of str
        The embedding blocks, by their name in messages, that each get a learnt strength
        (``strength=``): ``("Ahat",)`` (Potts), ``("A",)`` (general), ``("A", "Gamma")``
        (signed: the repulsive then the attractive channels).
    definite : str or None
        The block whose ``‖·‖₂² < λ`` keeps the system positive definite: ``"Ahat"`` (Potts),
        ``"Gamma"`` (signed; sufficient whatever A is), None (general: PD for any A). Its
        strength ceiling must be < 1, and ``strength=None`` clamps it at ``max_strength``.
    in_heads : bool
        ``GCRFHead`` builds it (its embeddings branch is one convolution, split by channel).
    attractive_split : bool
        The last ``attractive_dim`` embedding channels are attractive embeddings, solved as
        the signed model on stacked ``[A; Γ]``; the layer then requires ``attractive_dim``.
    """

    name: str
    channels: tuple[str, ...]
    per_label: bool
    blocks: tuple[str, ...]
    definite: str | None
    in_heads: bool
    attractive_split: bool = False


#: The per-model table, one row per name of the core's registry.
LAYER_MODELS = {
    "general": LayerModel(
        "general", ("D", "L"), per_label=True, blocks=("A",), definite=None, in_heads=True
    ),
    "potts": LayerModel(
        "potts", ("D",), per_label=False, blocks=("Ahat",), definite="Ahat", in_heads=True
    ),
    "signed": LayerModel(
        "signed",
        ("D+E", "L"),
        per_label=True,
        blocks=("A", "Gamma"),
        definite="Gamma",
        in_heads=True,
        attractive_split=True,
    ),
}
assert tuple(LAYER_MODELS) == MODEL_NAMES, "every registered model needs a row here"

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
    strength: float | None
    learn_strength: bool
    max_strength: float | None
    method: str
    rtol: float | None
    atol: float
    maxiter: int | None
    on_failure: str
    traceable: bool | str = "auto"
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


class _Unset:
    """The default of a deprecated keyword, told apart from every value a user can pass."""

    def __repr__(self) -> str:
        return "<unset>"


#: ``pd_bound``'s default: not given.
UNSET: Any = _Unset()

#: The layers' default initial strength: the pairwise term starts at 0.3 of λ, so a fresh
#: layer amplifies the unary's label deviations by at most 1/(1 − 0.3) ≈ 1.4 (Potts).
DEFAULT_STRENGTH = 0.3

#: The layers' default ceiling of the strength: the Potts layer's κ stays below
#: (1 + (L − 1)·0.9)/(1 − 0.9), 190 at L = 21.
DEFAULT_MAX_STRENGTH = 0.9


def layer_settings(
    lam: Any = 1.0,
    model: str | None = None,
    *,
    potts: bool | None = None,
    learn_lam: bool = False,
    strength: float | None = DEFAULT_STRENGTH,
    learn_strength: bool = True,
    max_strength: float | None = DEFAULT_MAX_STRENGTH,
    pd_bound: Any = UNSET,
    method: str = "auto",
    rtol: float | None = None,
    atol: float = 0.0,
    maxiter: int | None = None,
    on_failure: str = "warn",
    traceable: bool | str = "auto",
    attractive_dim: int | None = None,
) -> LayerSettings:
    """Validate a layer's arguments (the ``DenseGCRF`` docstrings describe them)."""
    name = layer_model(model, potts)
    splits = [n for n, spec in LAYER_MODELS.items() if spec.attractive_split]
    if (name in splits) != (attractive_dim is not None) or not (
        attractive_dim is None or is_positive_int(attractive_dim)
    ):
        raise GCRFError(
            "attractive_dim (E ≥ 1, the last E embedding channels are the attractive "
            f"embeddings Γ) goes with model={' or '.join(map(repr, splits))} and only with it; "
            f"got model={name!r}, attractive_dim={attractive_dim!r}"
        )
    if pd_bound is not UNSET:
        if (strength, max_strength) != (DEFAULT_STRENGTH, DEFAULT_MAX_STRENGTH):
            raise GCRFError(
                "pd_bound (deprecated) stands for strength=None, max_strength=pd_bound: pass "
                "it or strength/max_strength, not both"
            )
        # A FutureWarning, not a DeprecationWarning: the call that passes pd_bound is often
        # a head's, inside this library, where Python's filters would hide the latter.
        warnings.warn(
            "pd_bound is deprecated: the layers now learn the pairwise term's strength "
            "(strength=0.3 initially, at most max_strength). pd_bound=x keeps the old "
            "behaviour, raw embeddings clamped at ‖·‖₂² ≤ x·λ: spell it strength=None, "
            "max_strength=x",
            FutureWarning,
            stacklevel=3,
        )
        strength, max_strength = None, pd_bound
    definite = LAYER_MODELS[name].definite
    ceiling = 1.0 if definite else math.inf
    if max_strength is None:
        if strength is not None:
            raise GCRFError(
                "max_strength=None (no bound on raw embeddings) goes with strength=None only"
            )
    elif not (_is_real(max_strength) and 0 < max_strength < ceiling):
        interval = "(0, 1)" if definite else "(0, inf)"
        raise GCRFError(
            f"max_strength must be a number in {interval}"
            + (
                f" (‖{definite}‖₂² < λ keeps the {name} model positive definite)"
                if definite
                else ""
            )
            + f", got {max_strength!r}"
        )
    if strength is not None and not (_is_real(strength) and 0 < strength < max_strength):
        raise GCRFError(
            f"strength (the pairwise term's initial size, a fraction of λ) must be a number in "
            f"(0, max_strength={max_strength}) or None, got {strength!r}"
        )
    if traceable not in ("auto", True, False):
        raise GCRFError(f"traceable must be 'auto', True or False, got {traceable!r}")
    if traceable is True and strength is None:
        raise GCRFError(
            "traceable=True needs a learnt strength (strength=None guarantees no bound on the "
            "conditioning to derive the traceable solve's iteration count from)"
        )
    return LayerSettings(
        lam=initial_lam(lam),
        model=name,
        learn_lam=bool(learn_lam),
        strength=None if strength is None else float(strength),
        learn_strength=bool(learn_strength),
        max_strength=None if max_strength is None else float(max_strength),
        method=method,
        rtol=rtol,
        atol=atol,
        maxiter=maxiter,
        on_failure=on_failure,
        traceable=traceable,
        attractive_dim=None if attractive_dim is None else int(attractive_dim),
    )


def strength_logit(settings: LayerSettings) -> float:
    """The initial ``raw_strength``: r with ``max_strength·sigmoid(r) = strength``."""
    fraction = settings.strength / settings.max_strength
    return math.log(fraction / (1.0 - fraction))


#: The keywords of :func:`layer_settings`: the constructor arguments the layers and heads
#: pass on.
SETTING_KEYWORDS = tuple(inspect.signature(layer_settings).parameters)


def setting_arguments(arguments: dict[str, Any]) -> dict[str, Any]:
    """The :data:`SETTING_KEYWORDS` among a constructor's arguments (its ``locals()``), so
    that a layer or head passes them on without listing them again."""
    return {name: arguments[name] for name in SETTING_KEYWORDS if name in arguments}


def is_positive_int(value: Any) -> bool:
    """Whether ``value`` is an integer ≥ 1 (not a bool)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


# -- the solve plan of a call --------------------------------------------------------------------


#: Squarings of the normalised Gram in the layers' bound on ``‖A‖₂²``: the bound
#: ``(tr G^(2^k))^(1/2^k)`` is never below ``‖A‖₂²`` and exceeds it by at most ``D^(1/2^k)``
#: (k = 5: 1.09 at D = 16, 1.24 at D = 1024), in matrix products only.
GRAM_SQUARINGS = 5


@dataclass(frozen=True)
class Block:
    """A block of embedding channels ``start:stop``, named as in messages."""

    name: str
    start: int
    stop: int


@dataclass(frozen=True)
class SolvePlan:
    """What a layer call solves, decided from the settings and the embedding channels.

    Attributes
    ----------
    solve_as : SolveAs
        The core model the bridge solves (the signed model on stacked ``[A; Γ]``).
    blocks : tuple of Block
        With a learnt strength: the blocks normalised to ``‖block‖₂² ≤ ρ·λ``, one strength
        ρ each (the framework's ``strength_scaled``); empty with ``strength=None``.
    clamped : Block or None
        With ``strength=None`` and a ``max_strength``: the block rescaled, only where it
        exceeds it, to ``‖block‖₂² ≤ max_strength·λ`` (the framework's ``pd_scaled``).
    strength_bounds : tuple of float or None
        The ceiling of each block's ``‖·‖₂²/λ`` that the layer guarantees (with a learnt
        strength), which bounds the system's conditioning: what a traced solve derives its
        iteration count from. None where the layer guarantees none.
    options : SolverOptions
    """

    solve_as: SolveAs
    blocks: tuple[Block, ...]
    clamped: Block | None
    strength_bounds: tuple[float, ...] | None
    options: SolverOptions


def solve_plan(settings: LayerSettings, channels: int, compute_dtype: str) -> SolvePlan:
    """The plan of a call with ``channels`` embedding channels (D, or D + E for signed),
    solved in ``compute_dtype``."""
    spec = settings.spec
    solve_as: SolveAs = spec.name
    bounds = (0, channels)
    if settings.attractive_dim is not None:
        if settings.attractive_dim > channels:
            raise GCRFError(
                f"attractive_dim={settings.attractive_dim} exceeds the {channels} embedding "
                "channels (D + E) of the signed model: the last attractive_dim channels are "
                "the attractive embeddings"
            )
        first_attractive = channels - settings.attractive_dim
        solve_as = SignedStack(first_attractive)
        bounds = (0, first_attractive, channels)
    blocks = tuple(
        Block(name, start, stop)
        for name, start, stop in zip(spec.blocks, bounds[:-1], bounds[1:], strict=True)
    )
    options = settings.options(compute_dtype)
    if settings.strength is not None:
        ceiling = (settings.max_strength,) * len(blocks)
        return SolvePlan(solve_as, blocks, None, ceiling, options)
    clamped = None
    if settings.max_strength is not None and spec.definite is not None:
        clamped = next(block for block in blocks if block.name == spec.definite)
    return SolvePlan(solve_as, (), clamped, None, options)


def runs_traceable_solve(settings: LayerSettings, plan: SolvePlan, *, traced: bool) -> bool:
    """Whether a layer call runs the traceable solve rather than the core's (``traceable=``):
    with "auto", where the framework traces the call for deployment and does not train
    (``traced``, the framework's to tell) and the plan bounds the conditioning (the settings
    refuse ``traceable=True`` without a bound)."""
    if settings.traceable == "auto":
        return traced and plan.strength_bounds is not None
    return bool(settings.traceable)


def strength_report(settings: LayerSettings, values: list[float]) -> dict[str, float]:
    """The strengths ρ, one per embedding block, by block name, rounded to 6 decimals for
    logs (``effective_strength``)."""
    return {
        name: round(float(v), 6) for name, v in zip(settings.spec.blocks, values, strict=True)
    }
