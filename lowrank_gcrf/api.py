"""The public functions: ``solve``, ``solve_potts``, ``solve_signed`` and their vector-Jacobian
products.

Thin wrappers that build a model's operator through the registry
(:func:`lowrank_gcrf.models.make_operator`) and call it; use the operators directly to keep
a factorization between a forward solve and its backward pass.
"""

from __future__ import annotations

from typing import Any

from .errors import GCRFError
from .models import make_operator
from .operators import GCRFOperator
from .validation import check_array

_COMMON_DOC = """
    method : {"auto", "cg", "direct"}, default "auto"
        ``"cg"``: the paper's Algorithm 1, matrix-free and batched; ``"direct"``: exact
        low-rank (Woodbury) solve with iterative refinement; ``"auto"``: chosen from shapes
        and dtype alone (:func:`lowrank_gcrf.method.choose_method`).
    rtol, atol : float, default 1e-5 and 0
        Each system stops when ``‖b − Mx‖ ≤ max(rtol·‖b‖, atol)``.
    maxiter : int, optional
        CG iterations (default 4 × the exact-arithmetic bound), or exact solves for
        ``"direct"`` (the solve plus refinement steps; default 10).
    on_failure : {"raise", "warn", "ignore"}, default "raise"
        A system above tolerance raises :class:`ConvergenceError`, or warns with
        :class:`ConvergenceWarning` and returns the best iterate, or returns it silently
        (``info.converged`` tells which systems missed).
"""


def _solver_parameters(f: Any) -> Any:
    """Insert the shared keyword documentation before the Returns section of ``f``."""
    head, sep, tail = (f.__doc__ or "").partition("\n    Returns\n")
    f.__doc__ = head.rstrip() + "\n" + _COMMON_DOC + sep + tail
    return f


def _potts_labels(v: Any, name: str) -> int:
    check_array(v, name)
    if v.ndim < 2:
        raise GCRFError(
            f"{name} must have shape (..., L, P) for the Potts model, got shape {tuple(v.shape)}"
        )
    return int(v.shape[-2])


def _finish(op: GCRFOperator, b: Any, return_info: bool, kw: dict) -> Any:
    x, info = op.solve(b, **kw)
    return (x, info) if return_info else x


@_solver_parameters
def solve(
    A: Any,
    b: Any,
    lam: Any,
    *,
    method: str = "auto",
    rtol: float = 1e-5,
    atol: float = 0.0,
    maxiter: int | None = None,
    x0: Any = None,
    return_info: bool = False,
    on_failure: str = "raise",
) -> Any:
    """Solve the dense G-CRF system ``(AᵀA + λI) x = b`` (Eq. 4–5).

    Parameters
    ----------
    A : array (..., D, N)
        Pairwise embeddings of the N = L·P variables, label-major (n = l·P + p).
    b : array (..., N)
        Unary scores; leading batch dimensions equal A's.
    lam : float, 0-d array or array (...,)
        λ > 0, scalar or one per system.
    x0 : array (..., N), optional
        Starting point.
    return_info : bool
        Also return a :class:`SolveInfo`.

    Returns
    -------
    x : array (..., N), in the promoted dtype of A and b
    info : SolveInfo, only with ``return_info=True``

    Raises
    ------
    GCRFError
        Bad shapes, λ ≤ 0, non-finite inputs; ``ConvergenceError`` above tolerance.
    GCRFTypeError
        Non-floating arrays, or arrays from different libraries.

    Examples
    --------
    >>> import numpy as np
    >>> import lowrank_gcrf as lg
    >>> rng = np.random.default_rng(0)
    >>> A = rng.standard_normal((4, 30)) / 4           # D = 4 embeddings of N = 30 variables
    >>> b = rng.standard_normal(30)
    >>> x, info = lg.solve(A, b, 1.0, return_info=True)
    >>> x.shape, info.method, bool(info.converged)
    ((30,), 'direct', True)
    >>> bool(np.allclose(A.T @ (A @ x) + x, b))         # (AᵀA + λI) x = b
    True
    """
    op = make_operator("general", A, lam)
    kw = dict(method=method, rtol=rtol, atol=atol, maxiter=maxiter, x0=x0, on_failure=on_failure)
    return _finish(op, b, return_info, kw)


@_solver_parameters
def solve_potts(
    Ahat: Any,
    b: Any,
    lam: Any,
    *,
    method: str = "auto",
    rtol: float = 1e-5,
    atol: float = 0.0,
    maxiter: int | None = None,
    x0: Any = None,
    return_info: bool = False,
    on_failure: str = "raise",
) -> Any:
    """Solve the Potts G-CRF system ``(λI + (J_L − I_L) ⊗ ÂᵀÂ) x = b`` (Eq. 11–12).

    Parameters
    ----------
    Ahat : array (..., D, P)
        One embedding per pixel, shared across labels.
    b : array (..., L, P)
        Unary scores, one row per label.
    lam : float, 0-d array or array (...,)
        λ > ‖Â‖₂² (the system is positive definite only then; otherwise
        :class:`IndefiniteSystemError`).
    x0 : array (..., L, P), optional
    return_info : bool

    Returns
    -------
    x : array (..., L, P)
    info : SolveInfo, only with ``return_info=True``

    Raises
    ------
    IndefiniteSystemError
        λ ≤ ‖Â‖₂², for every method.
    GCRFError, GCRFTypeError
        As for :func:`solve`.

    Examples
    --------
    >>> import numpy as np
    >>> import lowrank_gcrf as lg
    >>> rng = np.random.default_rng(0)
    >>> Ahat = rng.standard_normal((4, 20)) / 10         # one embedding per pixel, P = 20
    >>> b = rng.standard_normal((3, 20))                 # L = 3 labels
    >>> bool(np.linalg.norm(Ahat, 2) ** 2 < 1.0)          # λ = 1 > ‖Â‖₂²: positive definite
    True
    >>> lg.solve_potts(Ahat, b, 1.0).shape
    (3, 20)
    """
    op = make_operator("potts", Ahat, lam, num_labels=_potts_labels(b, "b"))
    kw = dict(method=method, rtol=rtol, atol=atol, maxiter=maxiter, x0=x0, on_failure=on_failure)
    return _finish(op, b, return_info, kw)


@_solver_parameters
def solve_vjp(
    A: Any,
    x: Any,
    gx: Any,
    lam: Any,
    *,
    method: str = "auto",
    rtol: float = 1e-5,
    atol: float = 0.0,
    maxiter: int | None = None,
    on_failure: str = "raise",
) -> tuple[Any, Any, Any]:
    """Gradients of a loss through ``x = (AᵀA + λI)⁻¹ b`` (Eq. 2–3, 6, 10).

    With ``g = (AᵀA + λI)⁻¹ gx`` (Eq. 6): ``∂L/∂A = −[(Ag)xᵀ + (Ax)gᵀ]`` (Eq. 10,
    matrix-free), ``∂L/∂b = g`` and ``∂L/∂λ = −gᵀx``.

    Parameters
    ----------
    A : array (..., D, N)
    x : array (..., N)
        The solution of the forward solve.
    gx : array (..., N)
        ``∂L/∂x``.
    lam : float or array (...,)

    Returns
    -------
    gA : array (..., D, N)
    gb : array (..., N)
    glam : array (...,)

    Examples
    --------
    >>> import numpy as np
    >>> import lowrank_gcrf as lg
    >>> rng = np.random.default_rng(0)
    >>> A, b = rng.standard_normal((4, 30)) / 4, rng.standard_normal(30)
    >>> x = lg.solve(A, b, 1.0)
    >>> gA, gb, glam = lg.solve_vjp(A, x, np.ones(30), 1.0)   # gradients of Σx
    >>> gA.shape, gb.shape, glam.shape
    ((4, 30), (30,), ())
    """
    op = make_operator("general", A, lam)
    kw = dict(method=method, rtol=rtol, atol=atol, maxiter=maxiter, on_failure=on_failure)
    return op.vjp(x, gx, **kw)[:3]


@_solver_parameters
def solve_potts_vjp(
    Ahat: Any,
    x: Any,
    gx: Any,
    lam: Any,
    *,
    method: str = "auto",
    rtol: float = 1e-5,
    atol: float = 0.0,
    maxiter: int | None = None,
    on_failure: str = "raise",
) -> tuple[Any, Any, Any]:
    """Gradients of a loss through the Potts solve ``x = M⁻¹ b`` (Eq. 12, docs/maths.md).

    With ``g = M⁻¹ gx``, ``S_x = Σₖ xₖ``, ``S_g = Σₖ gₖ``:
    ``∂L/∂Â = −[(ÂS_g)S_xᵀ + (ÂS_x)S_gᵀ − Σₖ((Âgₖ)xₖᵀ + (Âxₖ)gₖᵀ)]``,
    ``∂L/∂b = g`` and ``∂L/∂λ = −Σₖ gₖᵀxₖ``.

    Parameters
    ----------
    Ahat : array (..., D, P)
    x, gx : arrays (..., L, P)
    lam : float or array (...,)

    Returns
    -------
    gAhat : array (..., D, P)
    gb : array (..., L, P)
    glam : array (...,)

    Examples
    --------
    >>> import numpy as np
    >>> import lowrank_gcrf as lg
    >>> rng = np.random.default_rng(0)
    >>> Ahat, b = rng.standard_normal((4, 20)) / 10, rng.standard_normal((3, 20))
    >>> x = lg.solve_potts(Ahat, b, 1.0)
    >>> gAhat, gb, glam = lg.solve_potts_vjp(Ahat, x, np.ones_like(x), 1.0)
    >>> gAhat.shape, gb.shape
    ((4, 20), (3, 20))
    """
    op = make_operator("potts", Ahat, lam, num_labels=_potts_labels(x, "x"))
    kw = dict(method=method, rtol=rtol, atol=atol, maxiter=maxiter, on_failure=on_failure)
    return op.vjp(x, gx, **kw)[:3]


@_solver_parameters
def solve_signed(
    A: Any,
    Gamma: Any,
    b: Any,
    lam: Any,
    *,
    method: str = "auto",
    rtol: float = 1e-5,
    atol: float = 0.0,
    maxiter: int | None = None,
    x0: Any = None,
    return_info: bool = False,
    on_failure: str = "raise",
) -> Any:
    """Solve the signed G-CRF system ``(λI + AᵀA − ΓᵀΓ) x = b`` (``docs/maths.md``).

    A repels (as in the general model), Γ attracts: ``−ΓᵀΓ`` amplifies the directions Γ
    spans, which is how the Potts model pools evidence, here with label-dependent embeddings.
    ``A = 1_Lᵀ ⊗ Â``, ``Γ = I_L ⊗ Â`` is the Potts model; ``Gamma=None`` the general one.

    Parameters
    ----------
    A : array (..., D, N) or None
        Repulsive embeddings of the N variables (label-major, n = l·P + p).
    Gamma : array (..., E, N) or None
        Attractive embeddings, same batch shape and N; not both None.
    b : array (..., N)
    lam : float, 0-d array or array (...,)
        λ > 0 such that M is positive definite: ``I − Γ(λI + AᵀA)⁻¹Γᵀ ≻ 0`` exactly
        (``λ > ‖Γ‖₂²`` suffices); otherwise :class:`IndefiniteSystemError`.
    x0 : array (..., N), optional
    return_info : bool

    Returns
    -------
    x : array (..., N)
    info : SolveInfo, only with ``return_info=True``

    Raises
    ------
    IndefiniteSystemError
        M is not positive definite, for every method (the message gives its smallest
        eigenvalue and the λ that would make it definite).
    GCRFError, GCRFTypeError
        As for :func:`solve`.

    Examples
    --------
    >>> import numpy as np
    >>> import lowrank_gcrf as lg
    >>> rng = np.random.default_rng(0)
    >>> A = rng.standard_normal((4, 30)) / 4             # repulsive
    >>> Gamma = rng.standard_normal((2, 30)) / 10        # attractive, ‖Γ‖₂² < λ
    >>> b = rng.standard_normal(30)
    >>> x = lg.solve_signed(A, Gamma, b, 1.0)
    >>> M = np.eye(30) + A.T @ A - Gamma.T @ Gamma
    >>> bool(np.allclose(M @ x, b))
    True
    """
    op = make_operator("signed", A, lam, attractive=Gamma)
    kw = dict(method=method, rtol=rtol, atol=atol, maxiter=maxiter, x0=x0, on_failure=on_failure)
    return _finish(op, b, return_info, kw)


@_solver_parameters
def solve_signed_vjp(
    A: Any,
    Gamma: Any,
    x: Any,
    gx: Any,
    lam: Any,
    *,
    method: str = "auto",
    rtol: float = 1e-5,
    atol: float = 0.0,
    maxiter: int | None = None,
    on_failure: str = "raise",
) -> tuple[Any, Any, Any, Any]:
    """Gradients of a loss through the signed solve ``x = (λI + AᵀA − ΓᵀΓ)⁻¹ b``.

    With ``g = M⁻¹ gx``: ``∂L/∂A = −[(Ag)xᵀ + (Ax)gᵀ]``, ``∂L/∂Γ = +[(Γg)xᵀ + (Γx)gᵀ]``,
    ``∂L/∂b = g`` and ``∂L/∂λ = −gᵀx``, matrix-free in O((D + E)N).

    Parameters
    ----------
    A : array (..., D, N) or None
    Gamma : array (..., E, N) or None
    x : array (..., N)
        The solution of the forward solve.
    gx : array (..., N)
        ``∂L/∂x``.
    lam : float or array (...,)

    Returns
    -------
    gA : array (..., D, N), or None when A is None
    gGamma : array (..., E, N), or None when Gamma is None
    gb : array (..., N)
    glam : array (...,)

    Examples
    --------
    >>> import numpy as np
    >>> import lowrank_gcrf as lg
    >>> rng = np.random.default_rng(0)
    >>> A, Gamma = rng.standard_normal((4, 30)) / 4, rng.standard_normal((2, 30)) / 10
    >>> x = lg.solve_signed(A, Gamma, rng.standard_normal(30), 1.0)
    >>> gA, gGamma, gb, glam = lg.solve_signed_vjp(A, Gamma, x, np.ones(30), 1.0)
    >>> gA.shape, gGamma.shape, gb.shape
    ((4, 30), (2, 30), (30,))
    """
    op = make_operator("signed", A, lam, attractive=Gamma)
    kw = dict(method=method, rtol=rtol, atol=atol, maxiter=maxiter, on_failure=on_failure)
    g_u, g_b, g_lam, _ = op.vjp(x, gx, **kw)
    return (*op.split(g_u), g_b, g_lam)
