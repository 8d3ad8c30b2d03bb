"""The dense G-CRF as a PyTorch module, :class:`DenseGCRF`: unary scores and embeddings in,
MAP scores out, for every model of the per-model table
(:data:`~lowrank_gcrf.adapters.layer_plan.LAYER_MODELS`)."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from lowrank_gcrf.adapters.bridge import softplus_inverse
from lowrank_gcrf.adapters.layer_plan import (
    DEFAULT_MAX_STRENGTH,
    DEFAULT_STRENGTH,
    UNSET,
    layer_settings,
    runs_traceable_solve,
    setting_arguments,
    solve_plan,
    strength_logit,
    strength_report,
)
from lowrank_gcrf.adapters.layer_shapes import layer_shapes
from lowrank_gcrf.adapters.torch.autograd import dtype_plan, solve_tensors
from lowrank_gcrf.adapters.torch.custom_op import exact_solve
from lowrank_gcrf.adapters.torch.functional import pd_rescaled, strength_scaled
from lowrank_gcrf.adapters.torch.traceable_solve import traceable_solve
from lowrank_gcrf.dtypes import dtype_name


class DenseGCRF(nn.Module):
    """The dense low-rank G-CRF as a layer: unary scores and embeddings in, MAP scores out.

    Parameters
    ----------
    lam : float, default 1.0
        λ > 0, the weight of the identity (a float or a one-element tensor). With a learnt
        strength it only scales the output (the pairwise term is a fraction of λ).
    model : {"general", "potts", "signed"}, default "general"
        General model (one embedding per pixel and label), Potts (one per pixel, shared by
        the labels) or signed (``λI + AᵀA − ΓᵀΓ``: repulsive and attractive embeddings per
        pixel and label, :func:`~lowrank_gcrf.adapters.torch.solve_signed`).
    potts : bool, optional
        Alias of ``model``: ``potts=True`` is ``model="potts"``.
    learn_lam : bool, default False
        Make λ a parameter, kept positive as ``softplus(raw_lam)`` and initialised to ``lam``.
    strength : float in (0, max_strength) or None, default 0.3
        The pairwise term's initial size: each embedding block (Â; A; A and Γ for signed)
        is scaled to ``‖block‖₂² ≤ ρ·λ`` with ``ρ = max_strength·sigmoid(raw_strength)``
        (:func:`~lowrank_gcrf.adapters.torch.strength_scaled`), so the embeddings give the
        affinities' shape and ρ their size, whatever the network's scale. Positive definite
        by construction. ``None``: the embeddings are used as given (with the clamp below).
    learn_strength : bool, default True
        ρ is a parameter (``raw_strength``, one per block); else fixed at ``strength``.
    max_strength : float or None, default 0.9
        The ceiling of ρ, < 1 for Potts and signed (``‖Â‖₂² < λ`` or ``‖Γ‖₂² < λ`` keeps
        them positive definite; the signed model's A shares Γ's ceiling, one setting for
        both blocks); it bounds the conditioning, so a traced solve knows its
        iteration count. With ``strength=None``: Potts and signed embeddings are rescaled,
        differentiably, only where ``‖Â‖₂²`` (or ``‖Γ‖₂²``) exceeds ``max_strength·λ``
        (:func:`~lowrank_gcrf.adapters.torch.pd_scaled`); None turns that off (then an
        indefinite system raises :class:`lowrank_gcrf.IndefiniteSystemError`).
    pd_bound : float or None, optional
        Deprecated (a FutureWarning): ``pd_bound=x`` is ``strength=None,
        max_strength=x``, the layers' behaviour before the learnt strength.
    method : {"auto", "cg", "direct"}, default "auto"
        Solver for the forward and backward passes.
    rtol : float, optional
        Default: 1000 × the compute dtype's machine epsilon (1.2e-4 in float32, 2.2e-13 in
        float64), what the dtype can certify on the conditioning a layer sees
        (``docs/maths.md#accuracy``).
    atol, maxiter
        As for :func:`lowrank_gcrf.solve`.
    on_failure : {"raise", "warn", "ignore"}, default "warn"
        A batch above tolerance warns (:class:`lowrank_gcrf.ConvergenceWarning`) and the
        best iterate is used, so that one hard batch does not stop a training run.
    traceable : {"auto", True, False}, default "auto"
        Which solve runs: the core's exact, checked solve, or the solve in PyTorch
        operations only, certified by the strength's ceiling, that ``torch.export``, ONNX
        and ``torch.compile(fullgraph=True)`` can trace
        (:func:`~lowrank_gcrf.adapters.torch.traceable_solve.traceable_solve`,
        ``docs/guide/deploying.md``). "auto": the traceable solve in eval mode while
        compiled, exported or traced, else the core's; True: always the traceable one (it
        needs a learnt strength); False: always the core's.
    attractive_dim : int, optional
        Signed model only (and required there): E ≥ 1, the number of trailing embedding
        channels that are the attractive embeddings Γ; the first D channels are A.

    Attributes
    ----------
    settings : LayerSettings
        The validated arguments (``settings.model``, ``settings.lam``, ...).
    raw_lam : nn.Parameter
        The unconstrained λ parameter (only with ``learn_lam=True``).
    raw_strength : nn.Parameter or buffer
        One unconstrained strength per embedding block (with a strength); a buffer when
        ``learn_strength=False``.

    Notes
    -----
    Shapes, channels first with 1 to 3 spatial dimensions: unary (B, L, *spatial);
    embeddings (B, D, *spatial) for Potts, (B, D, L, *spatial) general or
    (B, D + E, L, *spatial) signed (A then Γ along the channels); output
    (B, L, *spatial). The embeddings reshape to the core's label-major layout without a copy.

    Examples
    --------
    >>> import torch
    >>> from lowrank_gcrf.adapters.torch import DenseGCRF
    >>> crf = DenseGCRF(model="potts")
    >>> unary = torch.randn(2, 3, 8, 8)                 # (B, L, H, W)
    >>> embeddings = torch.randn(2, 4, 8, 8)            # (B, D, H, W)
    >>> crf(unary, embeddings).shape
    torch.Size([2, 3, 8, 8])
    >>> crf.effective_strength, crf.effective_lam
    ({'Ahat': 0.3}, 1.0)
    """

    def __init__(
        self,
        lam: float = 1.0,
        model: str | None = None,
        *,
        potts: bool | None = None,
        learn_lam: bool = False,
        strength: float | None = DEFAULT_STRENGTH,
        learn_strength: bool = True,
        max_strength: float | None = DEFAULT_MAX_STRENGTH,
        pd_bound: float | None = UNSET,
        method: str = "auto",
        rtol: float | None = None,
        atol: float = 0.0,
        maxiter: int | None = None,
        on_failure: str = "warn",
        traceable: bool | str = "auto",
        attractive_dim: int | None = None,
    ):
        super().__init__()
        self.settings = layer_settings(**setting_arguments(locals()))
        if self.settings.learn_lam:
            self.raw_lam = nn.Parameter(torch.tensor(softplus_inverse(self.settings.lam)))
        if self.settings.strength is not None:
            raw = torch.full((len(self.settings.spec.blocks),), strength_logit(self.settings))
            if self.settings.learn_strength:
                self.raw_strength = nn.Parameter(raw)
            else:
                self.register_buffer("raw_strength", raw)

    @property
    def model(self) -> str:
        """The model name."""
        return self.settings.model

    @property
    def lam(self) -> Tensor | float:
        """λ: ``softplus(raw_lam)`` when learnt, else the fixed float."""
        if self.settings.learn_lam:
            return nn.functional.softplus(self.raw_lam)
        return self.settings.lam

    @property
    def strengths(self) -> Tensor | None:
        """ρ per embedding block, ``max_strength·sigmoid(raw_strength)``; None without."""
        if self.settings.strength is None:
            return None
        return self.settings.max_strength * torch.sigmoid(self.raw_strength)

    @property
    def effective_lam(self) -> float:
        """λ as a plain float, for logging."""
        with torch.no_grad():
            return float(self.lam)

    @property
    def effective_strength(self) -> dict[str, float]:
        """ρ of each embedding block as plain floats, by block name, for logging (empty with
        ``strength=None``)."""
        strengths = self.strengths
        if strengths is None:
            return {}
        return strength_report(self.settings, strengths.detach().cpu().tolist())

    def forward(self, unary: Tensor, embeddings: Tensor) -> Tensor:
        """MAP scores (B, L, *spatial) of the G-CRF with the given unaries and embeddings."""
        dtypes = dtype_plan(embeddings, unary)
        shapes = layer_shapes(tuple(unary.shape), tuple(embeddings.shape), self.model)
        plan = solve_plan(self.settings, shapes.dim, dtype_name(dtypes[0]))
        lam = self.lam
        A = embeddings.reshape(shapes.core_embeddings)
        if plan.blocks:
            A = strength_scaled(A, plan.blocks, self.strengths, lam)
        else:
            A = pd_rescaled(A, plan.clamped, lam, self.settings.max_strength)
        b = unary.reshape(shapes.core_unary)
        if runs_traceable_solve(self.settings, plan, traced=self._traced()):
            x = traceable_solve(
                plan.solve_as, A.to(dtypes[0]), b.to(dtypes[0]), lam, plan.strength_bounds
            )
            return x.to(dtypes[1]).reshape(shapes.output)
        if torch.compiler.is_compiling():
            # The core's solve as one opaque custom op: a compiled training step keeps one
            # graph (its backward factorizes again, which the eager path avoids).
            if torch.compiler.is_exporting():
                warnings.warn(
                    "exporting a DenseGCRF that runs the core's solve (train mode, "
                    "strength=None or traceable=False): the program holds the custom op "
                    "lowrank_gcrf::solve, which needs lowrank_gcrf where it is loaded and has "
                    "no ONNX form; export in eval mode with a learnt strength for a "
                    "self-contained program (docs/guide/deploying.md)",
                    UserWarning,
                    stacklevel=2,
                )
            x = exact_solve(plan.solve_as, A, b, lam, plan.options)
        else:
            x = solve_tensors(plan.solve_as, A, b, lam, plan.options, dtypes)
        return x.reshape(shapes.output)

    def _traced(self) -> bool:
        """Whether this call is traced for deployment (compiled, exported, JIT-traced or
        exported to ONNX) in eval mode."""
        tracing = (
            torch.compiler.is_compiling()
            or torch.jit.is_tracing()
            or torch.onnx.is_in_onnx_export()
        )
        return tracing and not self.training

    def extra_repr(self) -> str:
        changed = self.settings.changed()
        changed.pop("lam", None)
        items = [f"lam={self.effective_lam:.6g}"]
        strengths = self.effective_strength
        items += [f"strength[{k}]={v:.4g}" for k, v in strengths.items()]
        if strengths:
            changed.pop("strength", None)
        return ", ".join([*items, *(f"{k}={v!r}" for k, v in changed.items())])
