"""Bad input to the core: every input gets a correct answer or a clear error, never a silent
zero or inf.

Organised by category: shapes, dtypes, λ, values, keywords, mutation, operators, mixed
libraries. The adapters and layers are in ``test_bad_input_adapters.py``. Every error test
asserts the exception type and a fragment of its message.

Decisions these tests pin down (the same for the core, PyTorch and TensorFlow):

* integer, boolean and complex arrays or tensors are refused with ``GCRFTypeError``: no
  silent cast;
* λ is a real number or a real array: ``bool`` in every form (Python ``bool``, ``np.bool_``,
  boolean arrays and tensors) and complex in every form are refused with ``GCRFTypeError``;
* ``rtol`` and ``atol`` must be finite (``GCRFError``); ``maxiter`` must be an integer in the
  sense of ``operator.index`` (``2.0`` is refused with ``GCRFTypeError``);
* big-endian arrays are computed in their own precision and returned in native byte order;
* a result that overflows its output dtype raises a ``GCRFError`` naming the overflow;
* an ``x0`` that already meets the tolerance gives a new array, never a view of ``x0``;
* a right-hand side of any finite magnitude is solved: it is scaled exactly by a power of two
  per system, so that ``‖b‖²`` neither overflows nor underflows.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lowrank_gcrf as lg
from lowrank_gcrf.testing import (
    dense_matrix,
    make_general_system,
    make_potts_system,
    potts_dense_matrix,
    reference_solve,
)
from lowrank_gcrf.validation import check_finite

MODELS = ["general", "potts"]
METHODS = ["direct", "cg"]
BATCHES = [(), (2,)]
SOLVE = {"general": lg.solve, "potts": lg.solve_potts}
VJP = {"general": lg.solve_vjp, "potts": lg.solve_potts_vjp}
KAPPA = 10.0
# Overflow tests overflow on purpose; the error, not NumPy's warning, is what they check.
pytestmark = pytest.mark.filterwarnings(
    "ignore:overflow encountered:RuntimeWarning", "ignore:invalid value encountered:RuntimeWarning"
)


def system(model: str, dtype=np.float64, batch=(), seed=0):
    """(embeddings, b, λ) with κ = 10: D = 3 and N = 12 (general) or P = 6, L = 3 (Potts)."""
    if model == "potts":
        s = make_potts_system(
            seed, rank=3, pixels=6, labels=3, kappa=KAPPA, batch_shape=batch, dtype=dtype
        )
    else:
        s = make_general_system(seed, rank=3, n=12, kappa=KAPPA, batch_shape=batch, dtype=dtype)
    return s.embeddings, s.b, s.lam


def dense(model: str, U, lam, b):
    U = np.asarray(U, np.float64)
    return potts_dense_matrix(U, lam, b.shape[-2]) if model == "potts" else dense_matrix(U, lam)


def flat(model: str, v):
    """Potts right-hand sides (..., L, P) as the dense matrices' vectors (..., L·P)."""
    return v.reshape(*v.shape[:-2], -1) if model == "potts" else v


# -- shapes ------------------------------------------------------------------------------


def test_shape_errors():
    A, b, lam = system("general", batch=(2,))
    Ah, bp, lp = system("potts")
    cases = [
        (lambda: lg.solve(np.ones(3), np.ones(3), 1.0), "at least 2 dimensions"),
        (lambda: lg.solve(A, b[..., :-1], lam), "but the embeddings imply"),
        (lambda: lg.solve(A, b[:1], lam), "leading batch dimensions"),
        (lambda: lg.solve(np.ones((0, 4)), np.ones(4), 1.0), "empty dimension"),
        (lambda: lg.solve_potts(Ah, bp[0], lp), "must have shape (..., L, P)"),
        (lambda: lg.solve(A, b, np.ones(3)), "lam has shape (3,)"),
        (lambda: lg.solve(A, b, lam, x0=b[0]), "x0 has shape"),
        (lambda: lg.solve_vjp(A, b, b[..., 1:], lam), "gx has shape"),
    ]
    for call, fragment in cases:
        with pytest.raises(lg.GCRFError) as exc:
            call()
        assert fragment in str(exc.value)


# -- dtypes ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["int32", "int64", "uint8", "bool", "complex64", "complex128"])
@pytest.mark.parametrize("where", ["A", "b", "x0"])
@pytest.mark.parametrize("model", MODELS)
def test_non_floating_arrays_refused(model, where, dtype):
    U, b, lam = system(model)
    args = {"A": U, "b": b, "x0": np.zeros_like(b)}
    args[where] = args[where].astype(dtype)
    name = "Ahat" if (model, where) == ("potts", "A") else where
    with pytest.raises(lg.GCRFTypeError, match=f"{name} has dtype {dtype}.*real floating"):
        SOLVE[model](args["A"], args["b"], lam, x0=args["x0"])


@pytest.mark.parametrize(
    ("u_dtype", "b_dtype", "expected"),
    [(">f8", ">f8", "f8"), (">f8", "<f4", "f8"), ("<f4", ">f8", "f8"), (">f4", ">f4", "f4")],
)
@pytest.mark.parametrize("model", MODELS)
def test_big_endian_computed_in_its_precision(model, u_dtype, b_dtype, expected):
    """D3: '>f8' is float64 in another byte order; results come back native."""
    U, b, lam = system(model)
    rtol = 1e-12 if expected == "f8" else 1e-5
    x = SOLVE[model](U.astype(u_dtype), b.astype(b_dtype), lam, rtol=rtol)
    assert x.dtype == np.dtype(expected) and x.dtype.isnative
    native = SOLVE[model](U.astype(u_dtype[1:]), b.astype(b_dtype[1:]), lam, rtol=rtol)
    np.testing.assert_allclose(x, native, rtol=100 * np.finfo(expected).eps)
    grads = VJP[model](U.astype(u_dtype), x.astype(b_dtype), b.astype(b_dtype), lam, rtol=rtol)
    assert all(g.dtype == np.dtype(expected) and g.dtype.isnative for g in grads)


# -- λ -----------------------------------------------------------------------------------

TYPE, VALUE = lg.GCRFTypeError, lg.GCRFError
LAM_ERRORS = [
    (True, TYPE, "lam must be real and positive, got bool"),
    (np.bool_(True), TYPE, "lam must be real and positive, got bool"),
    (np.array([True, True]), TYPE, "lam must be real and positive, got bool"),
    (1 + 5j, TYPE, "lam must be real and positive, got complex"),
    (np.complex128(1 + 5j), TYPE, "lam must be real and positive, got complex128"),
    (np.array([1 + 1j, 1.0]), TYPE, "lam must be real and positive, got complex128"),
    (None, TYPE, "lam must be a positive float or an array"),
    ("1.0", TYPE, "lam must be a positive float or an array"),
    ([1.0, 2.0], TYPE, "lam must be a positive float or an array"),
    (0.0, VALUE, "lam must be finite and > 0"),
    (-1.0, VALUE, "lam must be finite and > 0"),
    (float("nan"), VALUE, "lam must be finite and > 0"),
    (float("inf"), VALUE, "lam must be finite and > 0"),
    (np.array([1.0, -1.0]), VALUE, "lam must be finite and > 0"),
    (np.array([1.0, 2.0, 3.0]), VALUE, "lam has shape (3,)"),
]


@pytest.mark.parametrize(("lam", "error", "fragment"), LAM_ERRORS, ids=repr)
@pytest.mark.parametrize("model", MODELS)
def test_bad_lam(model, lam, error, fragment):
    """D6: a complex λ lost its imaginary part; np.bool_ was taken as 1.0."""
    U, b, _ = system(model, batch=(2,))
    with pytest.raises(error) as exc:
        SOLVE[model](U, b, lam)
    assert fragment in str(exc.value)


@pytest.mark.parametrize("lam", [1e39, 1e-50, np.array([1.0, 1e39])], ids=repr)
@pytest.mark.parametrize("model", MODELS)
def test_lam_outside_float32_names_the_range(model, lam):
    """D9: a λ that float32 cannot hold is reported as such, not as "got inf"."""
    U, b, _ = system(model, dtype=np.float32, batch=(2,))
    with pytest.raises(lg.GCRFError, match="out of the range of float32"):
        SOLVE[model](U, b, lam)


# -- values ------------------------------------------------------------------------------


@settings(max_examples=12)
@given(data=st.data())
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("model", MODELS)
def test_any_magnitude_of_b_is_solved(model, method, batch, dtype, data):
    """D1: |b| from 1e-37 to 1e36 (float32) or 1e-300 to 1e300 (float64), one magnitude per
    system, against the float64 reference solve of the unit-scaled system."""
    top, bottom = (36, -37) if dtype == np.float32 else (300, -300)
    exponent = np.asarray(data.draw(st.lists(st.integers(bottom, top), min_size=2, max_size=2)))
    scale = 10.0**exponent if batch else 10.0 ** exponent[0]
    U, unit, lam = system(model, dtype, batch, seed=data.draw(st.integers(0, 99)))
    column = np.reshape(scale, (*batch, *(1,) * (unit.ndim - len(batch))))
    b = (unit.astype(np.float64) * column).astype(dtype)
    rtol = 1e-5 if dtype == np.float32 else 1e-10
    x = SOLVE[model](U, b, lam, method=method, rtol=rtol)
    assert x.dtype == dtype
    M = dense(model, U, lam, b)
    ref = reference_solve(M, flat(model, b.astype(np.float64) / column))
    got = flat(model, x.astype(np.float64) / column)
    error = np.linalg.norm(got - ref, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert np.all(error <= 10 * KAPPA * rtol), error


@settings(max_examples=8)
@given(exponent=st.integers(-37, 33))
@pytest.mark.parametrize("model", MODELS)
def test_any_magnitude_of_cotangent(model, exponent):
    """The backward solve at any float32 magnitude: ∂L/∂b = M⁻¹ gx."""
    U, x, lam = system(model, np.float32)
    gx = (x.astype(np.float64) * 10.0**exponent).astype(np.float32)
    gb = VJP[model](U, x, gx, lam)[1]
    M = dense(model, U, lam, x)
    ref = reference_solve(M, flat(model, x.astype(np.float64)))
    error = np.linalg.norm(flat(model, gb / 10.0**exponent) - ref) / np.linalg.norm(ref)
    assert error <= 10 * KAPPA * 1e-5


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("model", MODELS)
def test_result_overflowing_float16_raises(model, method, batch):
    """D4: float16 is computed in float32; a solution above 65504 cannot be returned."""
    U, b, _ = system(model, np.float16, batch)
    b = np.full_like(b, 6e4)
    with pytest.raises(lg.GCRFError, match="x overflows float16"):
        SOLVE[model](np.zeros_like(U), b, 0.5, method=method)


@pytest.mark.parametrize("model", MODELS)
def test_gradient_overflowing_float32_raises(model):
    """D4: a large cotangent gave inf/NaN gradients."""
    U, b, lam = system(model, np.float32)
    x = SOLVE[model](U, b, lam)
    with pytest.raises(lg.GCRFError, match=r"the gradient of \w+ overflows float32"):
        VJP[model](U, x, np.full_like(x, 3e38), lam)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("model", MODELS)
def test_embeddings_too_large_for_float32_name_the_overflow(model, method):
    """D9: a float32 Gram that overflows was reported as "lam is too small" (direct) or as
    "not positive definite" (cg)."""
    U, b, lam = system(model, np.float32)
    name = "Ahat" if model == "potts" else "A"
    with pytest.raises(lg.GCRFError, match=f"Gram matrix of {name} overflows float32") as exc:
        SOLVE[model](U * np.float32(1e30), b, lam, method=method)
    assert not isinstance(exc.value, lg.IndefiniteSystemError)


def test_matvec_overflow_named_by_cg_on_the_unknowns():
    """D9: CG without a Gram (general, D ≥ N) names the overflowing matrix-vector product."""
    s = make_general_system(0, rank=12, n=6, kappa=KAPPA, dtype=np.float32)
    with pytest.raises(lg.GCRFError, match="matrix-vector product overflowed float32") as exc:
        lg.solve(s.embeddings * np.float32(1e30), s.b, s.lam, method="cg")
    assert not isinstance(exc.value, lg.IndefiniteSystemError)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("method", METHODS)
def test_potts_lam_at_the_spectral_norm_is_indefinite(method, batch):
    """D9: λ = ‖Â‖₂² is singular; it was reported as a ConvergenceError ("too ill-conditioned")."""
    Ah, b, lam = system("potts", batch=batch)
    mu = np.linalg.eigvalsh(Ah @ np.swapaxes(Ah, -1, -2))[..., -1]
    lam = mu if not batch else np.where(np.arange(2) == 0, mu, np.broadcast_to(lam, batch))
    with pytest.raises(lg.IndefiniteSystemError, match="not positive definite") as exc:
        lg.solve_potts(Ah, b, lam, method=method)
    assert "in 1 system(s)" in str(exc.value)


def test_potts_convergence_error_quotes_the_potts_condition_number():
    """D9: the Potts message quoted the general model's κ = 1 + ‖A‖₂²/λ."""
    Ah, b, lam = system("potts", np.float32)
    with pytest.raises(lg.ConvergenceError, match=r"λ − ‖Ahat‖₂²") as exc:
        lg.solve_potts(Ah, b, lam, method="cg", maxiter=1)
    assert "1 + ‖A‖₂²/λ" not in str(exc.value)


@pytest.mark.parametrize("where", ["A", "b", "x0", "gx"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_inputs(where, bad):
    A, b, lam = system("general")
    args = {"A": A.copy(), "b": b.copy(), "x0": np.zeros_like(b), "gx": b.copy()}
    args[where][..., 0] = bad
    with pytest.raises(lg.GCRFError, match=f"{where} contains NaN or Inf"):
        if where == "gx":
            lg.solve_vjp(args["A"], b, args["gx"], lam)
        else:
            lg.solve(args["A"], args["b"], lam, x0=args["x0"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
def test_check_finite_finds_every_non_finite_entry(dtype, bad, contiguous):
    """NumPy's fast path squares and sums: NaN and ±Inf must still show, anywhere."""
    a = np.ones((6, 40), dtype=dtype)
    a[4, 37] = bad
    view = a if contiguous else a[:, 1::2]
    with pytest.raises(lg.GCRFError, match="contains NaN or Inf"):
        check_finite(np, view, "A")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_check_finite_accepts_entries_whose_squares_overflow(dtype):
    """A finite array whose ‖a‖² overflows is finite: the exact test decides."""
    a = np.full((3, 5), np.finfo(dtype).max / 2, dtype=dtype)
    a[0, 0] = -a[0, 0]
    check_finite(np, a, "A")


# -- keywords ----------------------------------------------------------------------------

KEYWORD_ERRORS = [
    ({"maxiter": 2.0}, lg.GCRFTypeError, "maxiter must be an integer or None"),
    ({"maxiter": float("inf")}, lg.GCRFTypeError, "maxiter must be an integer or None"),
    ({"maxiter": float("nan")}, lg.GCRFTypeError, "maxiter must be an integer or None"),
    ({"maxiter": "5"}, lg.GCRFTypeError, "maxiter must be an integer or None"),
    ({"maxiter": True}, lg.GCRFTypeError, "maxiter must be an integer or None"),
    ({"maxiter": -1}, lg.GCRFError, "maxiter must be ≥ 0"),
    ({"rtol": "abc"}, lg.GCRFTypeError, "rtol must be a real number"),
    ({"rtol": None}, lg.GCRFTypeError, "rtol must be a real number"),
    ({"rtol": np.ones(2)}, lg.GCRFTypeError, "rtol must be a real number"),
    ({"atol": 1j}, lg.GCRFTypeError, "atol must be a real number"),
    ({"rtol": float("inf")}, lg.GCRFError, "both finite; got rtol=inf"),
    ({"rtol": float("nan")}, lg.GCRFError, "both finite; got rtol=nan"),
    ({"atol": float("inf")}, lg.GCRFError, "both finite; got atol=inf"),
    ({"rtol": -1e-3}, lg.GCRFError, "need rtol ≥ 0 and atol ≥ 0"),
    ({"rtol": 0.0, "atol": 0.0}, lg.GCRFError, "not both zero"),
    ({"method": "lu"}, lg.GCRFError, "method must be one of 'auto', 'cg', 'direct'"),
    ({"on_failure": "explode"}, lg.GCRFError, "on_failure must be one of"),
]


@pytest.mark.parametrize(("kwargs", "error", "fragment"), KEYWORD_ERRORS, ids=str)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("model", MODELS)
def test_bad_keywords(model, method, kwargs, error, fragment):
    """D5: bad keyword values leaked raw Python errors, or (rtol=inf) returned zeros."""
    U, b, lam = system(model)
    kwargs = {"method": method, **kwargs}
    for call in (
        lambda: SOLVE[model](U, b, lam, **kwargs),
        lambda: SOLVE[model](U, np.zeros_like(b), lam, **kwargs),
        lambda: VJP[model](U, b, b, lam, **kwargs),
    ):
        with pytest.raises(error) as exc:
            call()
        assert fragment in str(exc.value)


def test_integer_like_keywords_accepted():
    A, b, lam = system("general")
    x = lg.solve(A, b, lam, method="cg", maxiter=np.int64(50), rtol=np.float32(1e-6))
    ref = reference_solve(dense_matrix(A, lam), b)
    np.testing.assert_allclose(x, ref, rtol=1e-4)


# -- mutation ----------------------------------------------------------------------------


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("model", MODELS)
def test_inputs_never_modified(model, method, batch):
    U, b, lam = system(model, batch=batch)
    lam = np.asarray(lam)
    x0 = np.ones_like(b)
    inputs = [U, b, lam, x0]
    copies = [a.copy() for a in inputs]
    x = SOLVE[model](U, b, lam, method=method, x0=x0)
    VJP[model](U, x, b, lam, method=method)
    for a, c in zip(inputs, copies, strict=True):
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("model", MODELS)
def test_converged_x0_gives_a_new_array(model, method, batch):
    """D7: an x0 that already met the tolerance came back as a view of x0."""
    U, b, lam = system(model, batch=batch)
    x0 = SOLVE[model](U, b, lam, method=method, rtol=1e-12)
    kept = x0.copy()
    x, info = SOLVE[model](U, b, lam, method=method, x0=x0, return_info=True)
    assert np.all(np.asarray(info.iterations) == 0)
    assert not np.shares_memory(x, x0)
    x *= 2
    np.testing.assert_array_equal(x0, kept)


# -- operators ---------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
def test_operator_promotes_to_float64_as_solve_does(model):
    """D8: a float32 operator solved a float64 b in float32 and returned float64."""
    U, b, lam = system(model, np.float32)
    if model == "potts":
        op = lg.PottsOperator(U, lam, num_labels=b.shape[-2])
    else:
        op = lg.GeneralOperator(U, lam)
    b64 = b.astype(np.float64)
    x, _ = op.solve(b64, rtol=1e-10)
    assert x.dtype == np.float64
    np.testing.assert_allclose(x, SOLVE[model](U, b64, lam, rtol=1e-10), rtol=1e-8)
    big, _ = op.solve(b64 * 1e300)
    np.testing.assert_allclose(big / 1e300, x, rtol=1e-4)
    g_b = op.vjp(x, b64, rtol=1e-10)[1]
    np.testing.assert_allclose(g_b, x, rtol=1e-8)


@pytest.mark.parametrize("model", MODELS)
def test_unbatched_gradients_are_arrays(model):
    """The cause of D2: an unbatched ∂L/∂λ came back as a NumPy scalar (the negation of a
    0-d array), which DLPack cannot export."""
    U, b, lam = system(model)
    grads = VJP[model](U, b, b, lam)
    assert all(isinstance(g, np.ndarray) for g in grads), [type(g) for g in grads]
    assert grads[2].shape == ()


@pytest.mark.parametrize("method", ["direct", "cg"])
def test_unbatched_info_fields_are_arrays(method):
    """SolveInfo documents its fields as arrays of the batch shape: 0-d for one system."""
    U, b, lam = system("general")
    _, info = lg.solve(U, b, lam, method=method, return_info=True)
    fields = (info.iterations, info.residual, info.converged)
    assert all(isinstance(f, np.ndarray) and f.shape == () for f in fields), fields


# -- mixed libraries ---------------------------------------------------------------------


def test_mixed_and_foreign_arrays():
    strict = pytest.importorskip("array_api_strict")
    A, b, lam = system("general", batch=(2,))
    cases = [
        (lambda: lg.solve(A, strict.asarray(b), lam), "different array libraries"),
        (lambda: lg.solve(A.tolist(), b, lam), "expected arrays"),
        (lambda: lg.solve(A, b, strict.asarray(lam)), "different library than the embeddings"),
        (lambda: lg.solve(A, b, lam, x0=strict.asarray(b)), "different array libraries"),
    ]
    for call, fragment in cases:
        with pytest.raises(lg.GCRFTypeError) as exc:
            call()
        assert fragment in str(exc.value)
