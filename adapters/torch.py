"""PyTorch adapter: the dense G-CRF solve as an autograd function and an ``nn.Module``.

Tensors reach the core through DLPack without copying (CPU → NumPy, CUDA → CuPy, run on
torch's current CUDA stream) and the results come back the same way; the backward pass
reuses the forward's operator and factorization (:class:`~lowrank_gcrf.adapters.bridge.
CoreSolve`). The adapter holds no maths of its own, and core errors propagate unchanged.

Precision: float32 and float64 are solved natively; float16/bfloat16 inputs (for example
from convolutions under ``torch.autocast``) are solved in float32 and the result is cast
back to their dtype. Double backward is not supported (the backward is ``once_differentiable``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from lowrank_gcrf.adapters.bridge import (
    CoreSolve,
    SignedStack,
    check_lam,
    check_solver_kwargs,
    layer_settings,
    signed_stack,
    softplus_inverse,
    solve_dtype_names,
    to_core,
)
from lowrank_gcrf.adapters.heads import check_spatial_dims, head_sizes, positive_size
from lowrank_gcrf.adapters.layout import layer_shapes, layout, repulsive_channels
from lowrank_gcrf.dtypes import dtype_name, overflow_message
from lowrank_gcrf.errors import GCRFError, GCRFTypeError
from lowrank_gcrf.options import SolverOptions

__all__ = [
    "DenseGCRF",
    "GCRFHead",
    "gcrf_solve",
    "pd_scaled",
    "potts_solve",
    "refine",
    "signed_solve",
]


def _cupy() -> Any:
    """CuPy, or None where it is missing (to_core then raises the GCRFTypeError that says
    which extra to install)."""
    try:
        import cupy
    except ImportError:
        return None
    return cupy


@contextlib.contextmanager
def _core_stream(device: torch.device) -> Iterator[None]:
    """Make torch's current CUDA stream on ``device`` CuPy's current stream (no-op on CPU).

    With the core's kernels queued on the same stream as the torch ops before and after
    them, the DLPack hand-over in both directions needs no synchronisation.
    """
    cupy = _cupy() if device.type == "cuda" else None
    if cupy is None:
        yield
        return
    stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream)
    with cupy.cuda.Device(device.index), stream:
        yield


def _to_core(tensor: Tensor) -> Any:
    # DLPack refuses tensors that require grad, and the core wants plain strides.
    return to_core(tensor.detach().contiguous())


def _lam_to_core(lam: Tensor | float) -> Any:
    return _to_core(lam) if isinstance(lam, Tensor) else lam


class _SolveFunction(torch.autograd.Function):
    """``x = M⁻¹ b`` for a model of the core's registry, on core-layout tensors.

    The forward's :class:`CoreSolve` is kept on ``ctx`` so that the backward reuses its
    factorization; the embeddings and x are also saved so that autograd reports in-place
    changes to them (the core holds views of both).
    """

    @staticmethod
    def forward(
        ctx: Any,
        model: str,
        embeddings: Tensor,
        b: Tensor,
        lam: Tensor | float,
        options: SolverOptions,
    ) -> Tensor:
        with _core_stream(embeddings.device):
            core = CoreSolve(model, _to_core(embeddings), _to_core(b), _lam_to_core(lam), options)
            x = torch.from_dlpack(core.x)
        ctx.core = core
        ctx.save_for_backward(embeddings, x)
        return x

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, gx: Tensor) -> tuple[Tensor | None, ...]:
        _ = ctx.saved_tensors  # raises if x or the embeddings were modified in place
        with _core_stream(gx.device):
            grads = ctx.core.backward(_to_core(gx))
            g_embeddings, g_b, g_lam = (torch.from_dlpack(g) for g in grads)
        _, needs_embeddings, needs_b, needs_lam, _ = ctx.needs_input_grad
        return (
            None,
            g_embeddings if needs_embeddings else None,
            g_b if needs_b else None,
            g_lam if needs_lam else None,
            None,
        )


@torch.compiler.disable
def _solve(
    model: str | SignedStack,
    embeddings: Tensor,
    b: Tensor,
    lam: Tensor | float,
    options: SolverOptions,
) -> Tensor:
    # Dynamo cannot trace DLPack and NumPy: a compiled model graph-breaks around the solve.
    if not (isinstance(embeddings, Tensor) and isinstance(b, Tensor)):
        raise GCRFTypeError(
            f"expected torch tensors, got {type(embeddings).__name__} and {type(b).__name__}; "
            "use lowrank_gcrf.solve / solve_potts for NumPy or CuPy arrays"
        )
    check_lam(lam)
    # Half precision is solved in float32 (bfloat16 has no NumPy dtype to cross DLPack with)
    # and returned in its own dtype, under autocast too.
    compute, output = (getattr(torch, n) for n in solve_dtype_names(embeddings.dtype, b.dtype))
    # The casts are autograd ops, so gradients return to the callers' dtypes and devices.
    if isinstance(lam, Tensor):
        lam = lam.to(device=embeddings.device, dtype=compute)
    x = _SolveFunction.apply(
        model, embeddings.to(compute).contiguous(), b.to(compute).contiguous(), lam, options
    )
    result = x.to(output)
    if output != compute and not bool(torch.isfinite(result).all()):
        raise GCRFError(overflow_message(dtype_name(output), "x"))
    return result


def gcrf_solve(A: Tensor, b: Tensor, lam: Tensor | float, **solver_kwargs: Any) -> Tensor:
    """Solve the general dense G-CRF ``(AᵀA + λI) x = b``, differentiably.

    Parameters
    ----------
    A : Tensor (..., D, N)
        Embeddings of the N = L·P variables, label-major (n = l·P + p).
    b : Tensor (..., N)
        Unary scores; leading batch dimensions equal A's.
    lam : float or Tensor
        λ > 0: a float, a 0-d tensor or a tensor of the batch shape (...,). A tensor that
        requires grad receives ``∂L/∂λ`` (summed over the batch for a 0-d λ).
    **solver_kwargs
        ``method`` ("auto", "cg", "direct"), ``rtol``, ``atol``, ``maxiter``,
        ``on_failure``, as for :func:`lowrank_gcrf.solve`; used by the forward and the
        backward solve.

    Returns
    -------
    Tensor (..., N)
        x, on the device of A, in the promoted dtype of A and b.

    Raises
    ------
    lowrank_gcrf.GCRFError
        The core's errors, unchanged (bad shapes, λ ≤ 0, non-convergence, ...).

    Examples
    --------
    >>> import torch
    >>> from lowrank_gcrf.adapters.torch import gcrf_solve
    >>> A = (torch.randn(4, 30, dtype=torch.float64) / 4).requires_grad_()
    >>> b = torch.randn(30, dtype=torch.float64)
    >>> x = gcrf_solve(A, b, 1.0)
    >>> x.sum().backward()
    >>> A.grad.shape
    torch.Size([4, 30])
    """
    return _solve("general", A, b, lam, check_solver_kwargs(solver_kwargs))


def potts_solve(Ahat: Tensor, b: Tensor, lam: Tensor | float, **solver_kwargs: Any) -> Tensor:
    """Solve the Potts dense G-CRF ``(λI + (J − I) ⊗ ÂᵀÂ) x = b``, differentiably.

    Parameters
    ----------
    Ahat : Tensor (..., D, P)
        One embedding per pixel, shared by the L labels.
    b : Tensor (..., L, P)
        Unary scores; leading batch dimensions equal Ahat's.
    lam : float or Tensor
        λ > ‖Â‖₂² (else :class:`lowrank_gcrf.IndefiniteSystemError`): a float, a 0-d tensor
        or a tensor of the batch shape; a tensor that requires grad receives ``∂L/∂λ``.
    **solver_kwargs
        ``method``, ``rtol``, ``atol``, ``maxiter``, ``on_failure``, as for
        :func:`lowrank_gcrf.solve_potts`.

    Returns
    -------
    Tensor (..., L, P)
        x, on the device of Ahat, in the promoted dtype of Ahat and b.

    Raises
    ------
    lowrank_gcrf.GCRFError
        The core's errors, unchanged.

    Examples
    --------
    >>> import torch
    >>> from lowrank_gcrf.adapters.torch import potts_solve
    >>> Ahat = torch.randn(4, 20) / 10
    >>> lam = torch.tensor(1.0, requires_grad=True)
    >>> x = potts_solve(Ahat, torch.randn(3, 20), lam)
    >>> x.sum().backward()
    >>> x.shape, lam.grad is not None
    (torch.Size([3, 20]), True)
    """
    return _solve("potts", Ahat, b, lam, check_solver_kwargs(solver_kwargs))


def signed_solve(
    A: Tensor | None, Gamma: Tensor | None, b: Tensor, lam: Tensor | float, **solver_kwargs: Any
) -> Tensor:
    """Solve the signed dense G-CRF ``(λI + AᵀA − ΓᵀΓ) x = b``, differentiably.

    Parameters
    ----------
    A : Tensor (..., D, N) or None
        Repulsive embeddings of the N = L·P variables, label-major (n = l·P + p).
    Gamma : Tensor (..., E, N) or None
        Attractive embeddings; not both None. An absent factor gets no gradient.
    b : Tensor (..., N)
    lam : float or Tensor
        λ > 0 with M positive definite (``λ > ‖Γ‖₂²`` suffices; otherwise
        :class:`lowrank_gcrf.IndefiniteSystemError`); a tensor that requires grad receives
        ``∂L/∂λ``.
    **solver_kwargs
        ``method``, ``rtol``, ``atol``, ``maxiter``, ``on_failure``, as for
        :func:`lowrank_gcrf.solve_signed`.

    Returns
    -------
    Tensor (..., N)
        x, in the promoted dtype of A, Gamma and b.

    Raises
    ------
    lowrank_gcrf.GCRFError
        The core's errors, unchanged.

    Examples
    --------
    >>> import torch
    >>> from lowrank_gcrf.adapters.torch import signed_solve
    >>> A, Gamma = torch.randn(4, 30) / 4, torch.randn(2, 30) / 10
    >>> signed_solve(A, Gamma, torch.randn(30), 1.0).shape
    torch.Size([30])
    """
    parts = [t for t in (A, Gamma) if t is not None]
    if not all(isinstance(t, Tensor) for t in parts):
        raise GCRFTypeError(
            "expected torch tensors (or None) for A and Gamma; use lowrank_gcrf.solve_signed "
            "for NumPy or CuPy arrays"
        )
    stack = signed_stack(*(None if t is None else t.shape for t in (A, Gamma)))
    U = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-2)
    # One tensor carries both factors: torch.cat splits its gradient between them.
    return _solve(stack, U, b, lam, check_solver_kwargs(solver_kwargs))


def pd_scaled(Ahat: Tensor, lam: Tensor | float, bound: float) -> Tensor:
    """Â rescaled, differentiably, so that ``‖Â‖₂² ≤ bound·λ`` (the Potts condition with margin).

    ``‖Â‖₂²`` is the largest eigenvalue of the D×D Gram ``ÂÂᵀ``, exact (``eigvalsh``, in
    float64); the factor is ``sqrt(bound·λ / max(‖Â‖₂², bound·λ))``, the identity (with zero
    gradient) where the bound already holds.

    Examples
    --------
    >>> import torch
    >>> from lowrank_gcrf.adapters.torch import pd_scaled
    >>> Ahat = pd_scaled(torch.randn(4, 20), 1.0, 0.9)
    >>> bool(torch.linalg.matrix_norm(Ahat, ord=2) ** 2 <= 0.9 + 1e-6)
    True
    """
    wide = Ahat.double()  # a half-precision or huge float32 Gram would overflow
    gram = wide @ wide.mT
    mu = torch.linalg.eigvalsh(gram)[..., -1]
    target = bound * (lam.double() if isinstance(lam, Tensor) else lam)
    factor = torch.sqrt(target / torch.maximum(mu, torch.as_tensor(target, dtype=mu.dtype)))
    return Ahat * factor.to(Ahat.dtype)[..., None, None]


class DenseGCRF(nn.Module):
    """The dense low-rank G-CRF as a layer: unary scores and embeddings in, MAP scores out.

    Parameters
    ----------
    lam : float, default 1.0
        λ > 0, the weight of the identity (a float or a one-element tensor).
    model : {"general", "potts", "signed"}, default "general"
        General model (one embedding per pixel and label), Potts (one per pixel, shared by
        the labels) or signed (``λI + AᵀA − ΓᵀΓ``: repulsive and attractive embeddings per
        pixel and label, :func:`signed_solve`).
    potts : bool, optional
        Alias of ``model``: ``potts=True`` is ``model="potts"``.
    learn_lam : bool, default False
        Make λ a parameter, kept positive as ``softplus(raw_lam)`` and initialised to ``lam``.
    pd_bound : float in (0, 1) or None, default 0.9
        Potts only: the embeddings are rescaled, differentiably, so that
        ``‖Â‖₂² ≤ pd_bound·λ`` — positive definite by construction, whatever the network
        outputs (:func:`pd_scaled`); the identity when the bound already holds. ``None``
        turns it off (then λ ≤ ‖Â‖₂² raises :class:`lowrank_gcrf.IndefiniteSystemError`).
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
        self.settings = layer_settings(
            lam,
            model,
            potts=potts,
            learn_lam=learn_lam,
            pd_bound=pd_bound,
            method=method,
            rtol=rtol,
            atol=atol,
            maxiter=maxiter,
            on_failure=on_failure,
            attractive_dim=attractive_dim,
        )
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
        shapes = layer_shapes(tuple(unary.shape), tuple(embeddings.shape), self.model)
        lam = self.lam
        A = embeddings.reshape(shapes.core_embeddings)
        model: str | SignedStack = self.model
        bound = self.settings.pd_bound
        if model == "potts" and bound is not None:
            A = pd_scaled(A, lam, bound)
        elif model == "signed":
            d = repulsive_channels(shapes.dim, self.settings.attractive_dim)
            model = SignedStack(d)
            if bound is not None:
                A = torch.cat([A[:, :d], pd_scaled(A[:, d:], lam, bound)], dim=1)
        compute, _ = solve_dtype_names(embeddings.dtype, unary.dtype)
        options = self.settings.options(compute)
        x = _solve(model, A, unary.reshape(shapes.core_unary), lam, options)
        return x.reshape(shapes.output)

    def extra_repr(self) -> str:
        with torch.no_grad():
            lam = float(self.lam)
        changed = self.settings.changed()
        changed.pop("lam", None)
        return ", ".join([f"lam={lam:.6g}", *(f"{k}={v!r}" for k, v in changed.items())])


class GCRFHead(nn.Module):
    """A segmentation head in one line: unary and embedding branches (1×1 convolutions) on
    backbone features, then :class:`DenseGCRF`.

    Parameters
    ----------
    in_channels : int
        Channels C of the features.
    num_labels : int
        Labels L.
    embed_dim : int, default 16
        Embedding dimension D (the rank of the pairwise term).
    model : {"potts", "general"}, default "potts"
        Potts: one embedding per pixel, shared by the labels (D channels); general: one per
        pixel and label (D·L channels, reshaped to (B, D, L, *spatial)).
    spatial_dims : {1, 2, 3}, default 2
        Spatial dimensions of the features: the branches are ``Conv1d``, ``Conv2d`` or
        ``Conv3d``.
    lam : float, default 1.0
        Initial λ.
    learn_lam : bool, default True
        λ is a parameter of the head (``crf.raw_lam``); with Potts the bound on the
        embeddings follows it.
    pd_bound, method, rtol, atol, maxiter, on_failure
        As for :class:`DenseGCRF`: the Potts head rescales the embeddings so that
        ``‖Â‖₂² ≤ pd_bound·λ`` and trains on raw convolution outputs.

    Attributes
    ----------
    unary, embed : nn.Module
        The unary (L channels) and embedding branches.
    crf : DenseGCRF

    Notes
    -----
    Features (B, C, *spatial) in, MAP scores (B, L, *spatial) out.

    Examples
    --------
    >>> import torch
    >>> from lowrank_gcrf.adapters.torch import GCRFHead
    >>> head = GCRFHead(16, num_labels=3, embed_dim=4)
    >>> scores = head(torch.randn(2, 16, 8, 8))        # features (B, C, H, W)
    >>> scores.sum().backward()
    >>> scores.shape, head.crf.raw_lam.grad is not None
    (torch.Size([2, 3, 8, 8]), True)
    """

    def __init__(
        self,
        in_channels: int,
        num_labels: int,
        *,
        embed_dim: int = 16,
        model: str = "potts",
        spatial_dims: int = 2,
        lam: float = 1.0,
        learn_lam: bool = True,
        pd_bound: float | None = 0.9,
        method: str = "auto",
        rtol: float | None = None,
        atol: float = 0.0,
        maxiter: int | None = None,
        on_failure: str = "warn",
    ):
        super().__init__()
        self.sizes = head_sizes(num_labels, embed_dim, model)
        self.in_channels = positive_size(in_channels, "in_channels")
        self.spatial_dims = check_spatial_dims(spatial_dims)
        conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[self.spatial_dims - 1]
        self.unary = conv(self.in_channels, self.sizes.num_labels, 1)
        self.embed = conv(self.in_channels, self.sizes.embedding_channels, 1)
        self.crf = DenseGCRF(
            lam,
            model,
            learn_lam=learn_lam,
            pd_bound=pd_bound,
            method=method,
            rtol=rtol,
            atol=atol,
            maxiter=maxiter,
            on_failure=on_failure,
        )

    def forward(self, features: Tensor) -> Tensor:
        """MAP scores (B, L, *spatial) of the G-CRF on ``features`` (B, C, *spatial)."""
        expected = layout(("C",), self.spatial_dims)
        if features.ndim != 2 + self.spatial_dims or features.shape[1] != self.in_channels:
            raise GCRFError(
                f"GCRFHead expects features of shape {expected} with C={self.in_channels}, "
                f"got {tuple(features.shape)}"
            )
        embeddings = self.embed(features)
        if self.sizes.model == "general":
            batch, _, *spatial = embeddings.shape
            embeddings = embeddings.reshape(
                batch, self.sizes.embed_dim, self.sizes.num_labels, *spatial
            )
        return self.crf(self.unary(features), embeddings)


# --- refine: class probabilities refined with the image (lowrank_gcrf.refine) --------------


def refine(
    probs: Tensor,
    image: Tensor,
    *,
    logits: bool = False,
    spatial_dims: int = 2,
    method: str = "direct",
    **parameters: Any,
) -> Tensor:
    """:func:`lowrank_gcrf.refine` on tensors, differentiable with respect to ``probs``.

    The embeddings Â come from the image through the core, without gradient (the image is
    data); the solve is :func:`potts_solve`, so ``∂L/∂probs`` flows through the exact Potts
    solve and the softmax.

    Parameters
    ----------
    probs : Tensor (..., L, *spatial)
        Class probabilities, or scores with ``logits=True``.
    image : Tensor (..., C, *spatial)
        uint8, or floating on the 0–255 scale; the batch and spatial shape of ``probs``, on
        its device.
    logits, spatial_dims, method
        As for :func:`lowrank_gcrf.refine`.
    **parameters
        Its kernel, approximation and strength keywords (``sxy``, ``srgb``, ``sxy_smooth``,
        ``w_appearance``, ``w_smooth``, ``strength``, ``rank``, ``landmarks``, ``seed``,
        ``lam``, ``approximation``, ``normalization``).

    Returns
    -------
    Tensor like ``probs``
        Refined probabilities, ``softmax`` of the Potts MAP scores over the label axis.

    Examples
    --------
    >>> import torch
    >>> from lowrank_gcrf.adapters.torch import refine
    >>> probs = torch.softmax(torch.randn(4, 32, 32), dim=0).requires_grad_()   # (L, H, W)
    >>> image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)           # (C, H, W)
    >>> refined = refine(probs, image)
    >>> refined[0].sum().backward()                    # gradients reach the probabilities
    >>> refined.shape, probs.grad.shape
    (torch.Size([4, 32, 32]), torch.Size([4, 32, 32]))
    """
    from lowrank_gcrf.refine import (
        PROB_FLOOR,
        SOLVE_RTOL,
        RefineParameters,
        check_refine_inputs,
        refine_embeddings,
    )

    params = RefineParameters(**parameters)
    with _core_stream(probs.device):
        core_probs, core_image = _to_core(probs), _to_core(image)
        shape = check_refine_inputs(
            core_probs, core_image, spatial_dims=spatial_dims, logits=logits
        )
        Ahat = torch.from_dlpack(
            refine_embeddings(core_image, params, spatial_dims=spatial_dims, dtype=shape.compute)
        )
    scores = probs.to(torch.float64 if probs.dtype == torch.float64 else torch.float32)
    if not logits:
        scores = torch.log(scores.clamp_min(PROB_FLOOR))
    b = scores.reshape(Ahat.shape[0], shape.num_labels, Ahat.shape[-1])
    x = potts_solve(Ahat, b, params.lam, method=method, rtol=SOLVE_RTOL)
    return torch.softmax(x, dim=1).reshape(probs.shape).to(probs.dtype)
