"""The dense G-CRF as a PyTorch module, :class:`DenseGCRF`: unary scores and embeddings in,
MAP scores out, for every model of the per-model table
(:data:`~lowrank_gcrf.adapters.layer_plan.LAYER_MODELS`)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lowrank_gcrf.adapters.bridge import softplus_inverse
from lowrank_gcrf.adapters.layer_plan import (
    layer_settings,
    layer_shapes,
    setting_arguments,
    solve_plan,
)
from lowrank_gcrf.adapters.torch.autograd import dtype_plan, solve_tensors
from lowrank_gcrf.adapters.torch.functional import pd_rescaled
from lowrank_gcrf.dtypes import dtype_name


class DenseGCRF(nn.Module):
    """The dense low-rank G-CRF as a layer: unary scores and embeddings in, MAP scores out.

    Parameters
    ----------
    lam : float, default 1.0
        λ > 0, the weight of the identity (a float or a one-element tensor).
    model : {"general", "potts", "signed"}, default "general"
        General model (one embedding per pixel and label), Potts (one per pixel, shared by
        the labels) or signed (``λI + AᵀA − ΓᵀΓ``: repulsive and attractive embeddings per
        pixel and label, :func:`~lowrank_gcrf.adapters.torch.solve_signed`).
    potts : bool, optional
        Alias of ``model``: ``potts=True`` is ``model="potts"``.
    learn_lam : bool, default False
        Make λ a parameter, kept positive as ``softplus(raw_lam)`` and initialised to ``lam``.
    pd_bound : float in (0, 1) or None, default 0.9
        Potts only: the embeddings are rescaled, differentiably, so that
        ``‖Â‖₂² ≤ pd_bound·λ`` — positive definite by construction, whatever the network
        outputs (:func:`~lowrank_gcrf.adapters.torch.pd_scaled`); the identity when the
        bound already holds. ``None`` turns it off (then λ ≤ ‖Â‖₂² raises
        :class:`lowrank_gcrf.IndefiniteSystemError`).
        Signed: the attractive embeddings are rescaled so that ``‖Γ‖₂² ≤ pd_bound·λ``,
        sufficient for definiteness whatever A is.
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
    attractive_dim : int, optional
        Signed model only (and required there): E ≥ 1, the number of trailing embedding
        channels that are the attractive embeddings Γ; the first D channels are A.

    Attributes
    ----------
    settings : LayerSettings
        The validated arguments (``settings.model``, ``settings.lam``, ...).
    raw_lam : nn.Parameter
        The unconstrained λ parameter (only with ``learn_lam=True``).

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
    >>> crf = DenseGCRF(lam=1.0, model="potts", learn_lam=True)
    >>> unary = torch.randn(2, 3, 8, 8)                 # (B, L, H, W)
    >>> embeddings = torch.randn(2, 4, 8, 8)            # (B, D, H, W)
    >>> crf(unary, embeddings).shape
    torch.Size([2, 3, 8, 8])
    """

    def __init__(
        self,
        lam: float = 1.0,
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
    ):
        super().__init__()
        self.settings = layer_settings(**setting_arguments(locals()))
        if self.settings.learn_lam:
            self.raw_lam = nn.Parameter(torch.tensor(softplus_inverse(self.settings.lam)))

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

    def forward(self, unary: Tensor, embeddings: Tensor) -> Tensor:
        """MAP scores (B, L, *spatial) of the G-CRF with the given unaries and embeddings."""
        dtypes = dtype_plan(embeddings, unary)
        shapes = layer_shapes(tuple(unary.shape), tuple(embeddings.shape), self.model)
        plan = solve_plan(self.settings, shapes.dim, dtype_name(dtypes[0]))
        lam = self.lam
        A = embeddings.reshape(shapes.core_embeddings)
        A = pd_rescaled(
            A, plan.rescaled_from, lam, self.settings.pd_bound, self.settings.spec.rescaled
        )
        b = unary.reshape(shapes.core_unary)
        return solve_tensors(plan.solve_as, A, b, lam, plan.options, dtypes).reshape(shapes.output)

    def extra_repr(self) -> str:
        with torch.no_grad():
            lam = float(self.lam)
        changed = self.settings.changed()
        changed.pop("lam", None)
        return ", ".join([f"lam={lam:.6g}", *(f"{k}={v!r}" for k, v in changed.items())])
