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

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from model_cases import REGISTRY, each_model

import lowrank_gcrf as lg
from lowrank_gcrf.testing import make_general_system, reference_solve
from lowrank_gcrf.validation import check_finite

METHODS = ["direct", "cg"]
BATCHES = [(), (2,)]
KAPPA = 10.0
# Overflow tests overflow on purpose; the error, not NumPy's warning, is what they check.
pytestmark = pytest.mark.filterwarnings(
    "ignore:overflow encountered:RuntimeWarning", "ignore:invalid value encountered:RuntimeWarning"
)


def system(case, dtype=np.float64, batch=(), seed=0):
    """(embeddings, b, λ) with κ = 10: D = 3 and N = 12 (general; signed with E = 2 more
    rows) or P = 4, L = 3 (Potts)."""
    s = case.make(seed, rank=3, pixels=4, labels=3, kappa=KAPPA, batch_shape=batch, dtype=dtype)
    return s.args()


# -- shapes ------------------------------------------------------------------------------


@each_model
def test_shape_errors_name_the_mismatch(case):
    U, b, lam = system(case, batch=(2,))
    cases = [
        (lambda: case.solve(U, b[..., :-1], lam), "but the embeddings imply"),
        (lambda: case.solve(U, b[:1], lam), "leading batch dimensions"),
        (lambda: case.solve(U[..., :0], b, lam), "has an empty dimension"),
        (lambda: case.solve(U, b, np.ones(3)), "lam has shape (3,)"),
        (lambda: case.solve(U, b, lam, x0=b[0]), "x0 has shape"),
        (lambda: case.vjp(U, b, b[..., 1:], lam), "gx has shape"),
    ]
    for call, fragment in cases:
        with pytest.raises(lg.GCRFError) as exc:
            call()
        assert fragment in str(exc.value)


def test_shape_errors_of_a_layout():
    """The layouts' own ranks (the signed embeddings' in test_signed.py)."""
    Ah, bp, lp = system(REGISTRY["potts"])
    with pytest.raises(lg.GCRFError, match="at least 2 dimensions"):
        lg.solve(np.ones(3), np.ones(3), 1.0)
    with pytest.raises(lg.GCRFError, match=re.escape("must have shape (..., L, P)")):
        lg.solve_potts(Ah, bp[0], lp)


# -- dtypes ------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["int32", "int64", "uint8", "bool", "complex64", "complex128"])
@pytest.mark.parametrize("where", ["A", "b", "x0"])
@each_model
def test_non_floating_arrays_refused(case, where, dtype):
    U, b, lam = system(case)
    args = {"A": U, "b": b, "x0": np.zeros_like(b)}
    args[where] = args[where].astype(dtype)
    name = case.embedding_name if where == "A" else where
    with pytest.raises(lg.GCRFTypeError, match=f"{name} has dtype {dtype}.*real floating"):
        case.solve(args["A"], args["b"], lam, x0=args["x0"])


@pytest.mark.parametrize(
    ("u_dtype", "b_dtype", "expected"),
    [(">f8", ">f8", "f8"), (">f8", "<f4", "f8"), ("<f4", ">f8", "f8"), (">f4", ">f4", "f4")],
)
@each_model
def test_big_endian_computed_in_its_precision(case, u_dtype, b_dtype, expected):
    """A big-endian '>f8' is float64 in another byte order; results come back native."""
    U, b, lam = system(case)
    rtol = 1e-12 if expected == "f8" else 1e-5
    x = case.solve(U.astype(u_dtype), b.astype(b_dtype), lam, rtol=rtol)
    assert x.dtype == np.dtype(expected) and x.dtype.isnative
    native = case.solve(U.astype(u_dtype[1:]), b.astype(b_dtype[1:]), lam, rtol=rtol)
    np.testing.assert_allclose(x, native, rtol=100 * np.finfo(expected).eps)
    grads = case.vjp(U.astype(u_dtype), x.astype(b_dtype), b.astype(b_dtype), lam, rtol=rtol)
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
@each_model
def test_bad_lam(case, lam, error, fragment):
    """A complex λ must not lose its imaginary part, nor np.bool_ be taken as 1.0."""
    U, b, _ = system(case, batch=(2,))
    with pytest.raises(error) as exc:
        case.solve(U, b, lam)
    assert fragment in str(exc.value)


@pytest.mark.parametrize("lam", [1e39, 1e-50, np.array([1.0, 1e39])], ids=repr)
@each_model
def test_lam_outside_float32_names_the_range(case, lam):
    """A λ that float32 cannot hold is reported as such, not as "got inf"."""
    U, b, _ = system(case, dtype=np.float32, batch=(2,))
    with pytest.raises(lg.GCRFError, match="out of the range of float32"):
        case.solve(U, b, lam)


# -- values ------------------------------------------------------------------------------


@settings(max_examples=12)
@given(data=st.data())
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("method", METHODS)
@each_model
def test_any_magnitude_of_b_is_solved(case, method, batch, dtype, data):
    """|b| from 1e-37 to 1e36 (float32) or 1e-300 to 1e300 (float64), one magnitude per
    system, against the float64 reference solve of the unit-scaled system."""
    top, bottom = (36, -37) if dtype == np.float32 else (300, -300)
    exponent = np.asarray(data.draw(st.lists(st.integers(bottom, top), min_size=2, max_size=2)))
    scale = 10.0**exponent if batch else 10.0 ** exponent[0]
    U, unit, lam = system(case, dtype, batch, seed=data.draw(st.integers(0, 99)))
    column = np.reshape(scale, (*batch, *(1,) * (unit.ndim - len(batch))))
    b = (unit.astype(np.float64) * column).astype(dtype)
    rtol = 1e-5 if dtype == np.float32 else 1e-10
    x = case.solve(U, b, lam, method=method, rtol=rtol)
    assert x.dtype == dtype
    M = case.dense(U, lam, case.num_labels(b))
    ref = reference_solve(M, case.flat(b.astype(np.float64) / column))
    got = case.flat(x.astype(np.float64) / column)
    error = np.linalg.norm(got - ref, axis=-1) / np.linalg.norm(ref, axis=-1)
    assert np.all(error <= 10 * KAPPA * rtol), error


@settings(max_examples=8)
@given(exponent=st.integers(-37, 33))
@each_model
def test_any_magnitude_of_cotangent(case, exponent):
    """The backward solve at any float32 magnitude: ∂L/∂b = M⁻¹ gx."""
    U, x, lam = system(case, np.float32)
    gx = (x.astype(np.float64) * 10.0**exponent).astype(np.float32)
    gb = case.vjp(U, x, gx, lam)[1]
    M = case.dense(U, lam, case.num_labels(x))
    ref = reference_solve(M, case.flat(x.astype(np.float64)))
    error = np.linalg.norm(case.flat(gb / 10.0**exponent) - ref) / np.linalg.norm(ref)
    assert error <= 10 * KAPPA * 1e-5


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("method", METHODS)
@each_model
def test_result_overflowing_float16_raises(case, method, batch):
    """float16 is computed in float32; a solution above 65504 cannot be returned."""
    U, b, _ = system(case, np.float16, batch)
    b = np.full_like(b, 6e4)
    with pytest.raises(lg.GCRFError, match="x overflows float16"):
        case.solve(np.zeros_like(U), b, 0.5, method=method)


@each_model
def test_gradient_overflowing_float32_raises(case):
    """A cotangent whose gradients overflow raises instead of returning inf/NaN."""
    U, b, lam = system(case, np.float32)
    x = case.solve(U, b, lam)
    with pytest.raises(lg.GCRFError, match=r"the gradient of \w+ overflows float32"):
        case.vjp(U, x, np.full_like(x, 3e38), lam)


@pytest.mark.parametrize("method", METHODS)
@each_model
def test_embeddings_too_large_for_float32_name_the_overflow(case, method):
    """A float32 Gram that overflows is named, not reported as "lam is too small" (direct)
    or "not positive definite" (cg)."""
    U, b, lam = system(case, np.float32)
    name = re.escape(type(case.operator(U, lam, case.num_labels(b))).embedding_name)
    with pytest.raises(lg.GCRFError, match=f"Gram matrix of {name} overflows float32") as exc:
        case.solve(U * np.float32(1e30), b, lam, method=method)
    assert not isinstance(exc.value, lg.IndefiniteSystemError)


def test_matvec_overflow_named_by_cg_on_the_unknowns():
    """CG without a Gram (general only: the other models prove definiteness from one, D ≥ N)
    names the overflowing matrix-vector product, not "not positive definite"."""
    s = make_general_system(0, rank=12, n=6, kappa=KAPPA, dtype=np.float32)
    with pytest.raises(lg.GCRFError, match="matrix-vector product overflowed float32") as exc:
        lg.solve(s.embeddings * np.float32(1e30), s.b, s.lam, method="cg")
    assert not isinstance(exc.value, lg.IndefiniteSystemError)


# Potts only below: its messages quote ‖Â‖₂²; the signed ones are tested in test_signed.py.


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("method", METHODS)
def test_potts_lam_at_the_spectral_norm_is_indefinite(method, batch):
    """λ = ‖Â‖₂² is singular: indefinite, not a ConvergenceError ("too ill-conditioned")."""
    Ah, b, lam = system(REGISTRY["potts"], batch=batch)
    mu = np.linalg.eigvalsh(Ah @ np.swapaxes(Ah, -1, -2))[..., -1]
    lam = mu if not batch else np.where(np.arange(2) == 0, mu, np.broadcast_to(lam, batch))
    with pytest.raises(lg.IndefiniteSystemError, match="not positive definite") as exc:
        lg.solve_potts(Ah, b, lam, method=method)
    assert "in 1 system(s)" in str(exc.value)


def test_potts_convergence_error_quotes_the_potts_condition_number():
    """The Potts message quotes its own κ, not the general model's 1 + ‖A‖₂²/λ."""
    Ah, b, lam = system(REGISTRY["potts"], np.float32)
    with pytest.raises(lg.ConvergenceError, match=r"λ − ‖Ahat‖₂²") as exc:
        lg.solve_potts(Ah, b, lam, method="cg", maxiter=1)
    assert "1 + ‖A‖₂²/λ" not in str(exc.value)


@pytest.mark.parametrize("where", ["A", "b", "x0", "gx"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
@each_model
def test_non_finite_inputs(case, where, bad):
    U, b, lam = system(case)
    args = {"A": U.copy(), "b": b.copy(), "x0": np.zeros_like(b), "gx": b.copy()}
    args[where][..., 0] = bad
    name = case.embedding_name if where == "A" else where
    with pytest.raises(lg.GCRFError, match=f"{name} contains NaN or Inf"):
        if where == "gx":
            case.vjp(args["A"], b, args["gx"], lam)
        else:
            case.solve(args["A"], args["b"], lam, x0=args["x0"])


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
@each_model
def test_bad_keywords(case, method, kwargs, error, fragment):
    """Bad keyword values raise the library's errors, not raw Python ones, and rtol=inf does
    not return zeros."""
    U, b, lam = system(case)
    kwargs = {"method": method, **kwargs}
    for call in (
        lambda: case.solve(U, b, lam, **kwargs),
        lambda: case.solve(U, np.zeros_like(b), lam, **kwargs),
        lambda: case.vjp(U, b, b, lam, **kwargs),
    ):
        with pytest.raises(error) as exc:
            call()
        assert fragment in str(exc.value)


@each_model
def test_integer_like_keywords_accepted(case):
    U, b, lam = system(case)
    x = case.solve(U, b, lam, method="cg", maxiter=np.int64(50), rtol=np.float32(1e-6))
    ref = reference_solve(case.dense(U, lam, case.num_labels(b)), case.flat(b))
    # rtol = 1e-6 at κ ≤ 10: the forward error is at most 1e-5.
    np.testing.assert_allclose(case.flat(x), ref, rtol=1e-4)


# -- mutation ----------------------------------------------------------------------------


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("method", METHODS)
@each_model
def test_inputs_never_modified(case, method, batch):
    U, b, lam = system(case, batch=batch)
    lam = np.asarray(lam)
    x0 = np.ones_like(b)
    inputs = [U, b, lam, x0]
    copies = [a.copy() for a in inputs]
    x = case.solve(U, b, lam, method=method, x0=x0)
    case.vjp(U, x, b, lam, method=method)
    for a, c in zip(inputs, copies, strict=True):
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("method", METHODS)
@each_model
def test_converged_x0_gives_a_new_array(case, method, batch):
    """An x0 that already meets the tolerance does not come back as a view of x0."""
    U, b, lam = system(case, batch=batch)
    x0 = case.solve(U, b, lam, method=method, rtol=1e-12)
    kept = x0.copy()
    x, info = case.solve(U, b, lam, method=method, x0=x0, return_info=True)
    assert np.all(np.asarray(info.iterations) == 0)
    assert not np.shares_memory(x, x0)
    x *= 2
    np.testing.assert_array_equal(x0, kept)


# -- operators ---------------------------------------------------------------------------


@each_model
def test_operator_promotes_to_float64_as_solve_does(case):
    """A float32 operator solves a float64 b in float64, as the functions do."""
    U, b, lam = system(case, np.float32)
    op = case.operator(U, lam, case.num_labels(b))
    b64 = b.astype(np.float64)
    x, _ = op.solve(b64, rtol=1e-10)
    assert x.dtype == np.float64
    np.testing.assert_allclose(x, case.solve(U, b64, lam, rtol=1e-10), rtol=1e-8)
    big, _ = op.solve(b64 * 1e300)
    np.testing.assert_allclose(big / 1e300, x, rtol=1e-4)
    g_b = op.vjp(x, b64, rtol=1e-10)[1]
    np.testing.assert_allclose(g_b, x, rtol=1e-8)


@each_model
def test_unbatched_gradients_are_arrays(case):
    """An unbatched ∂L/∂λ is a 0-d array, not a NumPy scalar (the negation of a 0-d array),
    which DLPack cannot export to the frameworks."""
    U, b, lam = system(case)
    grads = case.vjp(U, b, b, lam)
    assert all(isinstance(g, np.ndarray) for g in grads), [type(g) for g in grads]
    assert grads[2].shape == ()


@pytest.mark.parametrize("method", ["direct", "cg"])
@each_model
def test_unbatched_info_fields_are_arrays(case, method):
    """SolveInfo documents its fields as arrays of the batch shape: 0-d for one system."""
    U, b, lam = system(case)
    _, info = case.solve(U, b, lam, method=method, return_info=True)
    fields = (info.iterations, info.residual, info.converged)
    assert all(isinstance(f, np.ndarray) and f.shape == () for f in fields), fields


# -- mixed libraries ---------------------------------------------------------------------


@each_model
def test_mixed_and_foreign_arrays(case):
    strict = pytest.importorskip("array_api_strict")
    U, b, lam = system(case, batch=(2,))
    cases = [
        (lambda: case.solve(U, strict.asarray(b), lam), "different array libraries"),
        (lambda: case.solve(U, b, lam, x0=b.tolist()), "expected arrays"),
        (lambda: case.solve(U, b, strict.asarray(lam)), "different library than the embeddings"),
        (lambda: case.solve(U, b, lam, x0=strict.asarray(b)), "different array libraries"),
    ]
    for call, fragment in cases:
        with pytest.raises(lg.GCRFTypeError) as exc:
            call()
        assert fragment in str(exc.value)
