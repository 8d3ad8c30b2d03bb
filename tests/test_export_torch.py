"""Deploying a PyTorch model with a G-CRF head: ``torch.export`` and ``torch.jit.trace`` saved
and loaded, and ONNX run by onnxruntime, all three in a fresh process that does not import
lowrank_gcrf; ``torch.compile(fullgraph=True)``; and the exact solve carried by
``torch.export`` as the ``lowrank_gcrf::solve`` custom op (``docs/guide/deploying.md``).

Each route's output is compared with the eager model's, which runs the core's exact solve:
within 1e-4 relative (float32; the traceable solve's own error is about ε·κ, κ ≤ 190 for
the layers' strength ceiling, see ``tests/test_traceable_solve.py``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")
# The ONNX exporter and runtime: the `export` extra, which `test` includes.
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

from lowrank_gcrf.adapters.torch import DenseGCRF, GCRFHead  # noqa: E402
from lowrank_gcrf.adapters.torch.custom_op import exact_solve  # noqa: E402
from lowrank_gcrf.options import solver_options  # noqa: E402

MODELS = ["potts", "general"]
#: The issue's target for exported scores against the eager ones, float32.
RTOL = 1e-4
#: Operations that would mean the traced graph holds a factorization or a Python call.
FORBIDDEN = ("linalg", "cholesky", "solve", "inverse", "eig", "lowrank_gcrf")


def relative_error(x, reference) -> float:
    x, reference = np.asarray(x, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    return float(np.linalg.norm(x - reference) / np.linalg.norm(reference))


def head_and_features(model: str):
    """A small head in eval mode, with trained-looking (non-initial) strength, and features."""
    torch.manual_seed(0)
    head = GCRFHead(8, num_labels=3, embed_dim=4, model=model).eval()
    with torch.no_grad():
        head.crf.raw_strength.fill_(2.0)  # ρ = 0.9·sigmoid(2) ≈ 0.79, near the ceiling
    return head, torch.randn(2, 8, 5, 6)


def run_fresh(script: str, *, imports_library: bool = False) -> dict:
    """Run ``script`` in a fresh Python process; it prints one JSON line, returned here.

    Unless ``imports_library``, the script then proves it never imported lowrank_gcrf.
    """
    check = "" if imports_library else "assert 'lowrank_gcrf' not in sys.modules\n"
    code = "import json, sys\n" + textwrap.dedent(script) + check
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Each head exported by torch.export, to ONNX and by torch.jit.trace, with its eager
    output; the saved files run in one fresh process that does not import lowrank_gcrf."""
    folder = tmp_path_factory.mktemp("torch_export")
    cases = {}
    for model in MODELS:
        head, features = head_and_features(model)
        with torch.no_grad():
            eager = head(features)
        program = torch.export.export(head, (features,))
        torch.export.save(program, folder / f"{model}.pt2")
        torch.onnx.export(head, (features,), folder / f"{model}.onnx", dynamo=True, verbose=False)
        with torch.no_grad():
            torch.jit.trace(head, (features,)).save(folder / f"{model}_jit.pt")
        np.save(folder / f"{model}_features.npy", features.numpy())
        cases[model] = {"eager": eager.numpy(), "program": program, "features": features}
    served = run_fresh(
        f"""
        import numpy as np, onnxruntime, torch
        out = {{}}
        for model in {MODELS!r}:
            features = np.load(r"{folder}/" + model + "_features.npy")
            program = torch.export.load(r"{folder}/" + model + ".pt2")
            out[model + "/export"] = program.module()(torch.from_numpy(features)).tolist()
            session = onnxruntime.InferenceSession(r"{folder}/" + model + ".onnx")
            feed = {{session.get_inputs()[0].name: features}}
            out[model + "/onnx"] = session.run(None, feed)[0].tolist()
            traced = torch.jit.load(r"{folder}/" + model + "_jit.pt")
            out[model + "/jit"] = traced(torch.from_numpy(features)).tolist()
        print(json.dumps(out))
        """
    )
    for model in MODELS:
        cases[model]["export"] = served[f"{model}/export"]
        cases[model]["onnx"] = served[f"{model}/onnx"]
        cases[model]["jit"] = served[f"{model}/jit"]
    return cases


@pytest.mark.parametrize("model", MODELS)
def test_torch_export_loaded_in_fresh_process(exported, model):
    case = exported[model]
    assert relative_error(case["export"], case["eager"]) <= RTOL


@pytest.mark.parametrize("model", MODELS)
def test_exported_graph_is_plain_aten(exported, model):
    """The traced solve holds matrix products and element-wise operations only."""
    graph = exported[model]["program"].graph
    targets = {str(node.target) for node in graph.nodes if node.op == "call_function"}
    assert any("bmm" in t or "matmul" in t for t in targets)
    assert not [t for t in targets if any(word in t for word in FORBIDDEN)]


@pytest.mark.parametrize("model", MODELS)
def test_onnx_run_by_onnxruntime_without_lowrank_gcrf(exported, model):
    case = exported[model]
    assert relative_error(case["onnx"], case["eager"]) <= RTOL


@pytest.mark.parametrize("model", MODELS)
def test_jit_trace_loaded_in_fresh_process(exported, model):
    case = exported[model]
    assert relative_error(case["jit"], case["eager"]) <= RTOL


def spy_on_solves(monkeypatch) -> list[str]:
    """Record which solve each layer call runs: "traceable", "exact" (the custom op, under
    compilation) or "core" (the eager autograd function)."""
    from lowrank_gcrf.adapters.torch import modules

    calls: list[str] = []
    for name, label in [
        ("traceable_solve", "traceable"),
        ("exact_solve", "exact"),
        ("solve_tensors", "core"),
    ]:
        original = getattr(modules, name)

        def spy(*args, _original=original, _label=label, **kwargs):
            calls.append(_label)
            return _original(*args, **kwargs)

        monkeypatch.setattr(modules, name, spy)
    return calls


@pytest.mark.parametrize(("model", "backend"), [("potts", "inductor"), ("general", "aot_eager")])
def test_compile_fullgraph_inference(model, backend, monkeypatch):
    """fullgraph=True raises at any graph break: the whole head compiles as one graph.

    The default head (Potts) goes through Inductor, the route users take; the general head
    stops after graph capture and AOT functionalization (``aot_eager``), which is where a
    break would show, sparing the suite a second C++ code generation (about 15 s on two
    cores)."""
    head, features = head_and_features(model)
    calls = spy_on_solves(monkeypatch)
    with torch.no_grad():
        eager = head(features)
        compiled = torch.compile(head, fullgraph=True, backend=backend)(features)
    assert relative_error(compiled, eager) <= RTOL
    assert calls == ["core", "traceable"]  # eager: the core's; traced in eval mode: traceable


def test_training_runs_the_core_solve_eager_and_compiled(monkeypatch):
    """Training keeps the core's exact solve: the autograd function eagerly, the custom op
    under torch.compile (one graph, fullgraph=True), with the eager gradients."""
    head, features = head_and_features("potts")
    head.train()
    calls = spy_on_solves(monkeypatch)
    head(features).square().sum().backward()
    eager = [p.grad.clone() for p in head.parameters()]
    head.zero_grad()
    torch.compile(head, fullgraph=True, backend="aot_eager")(features).square().sum().backward()
    assert calls == ["core", "exact"]
    for got, want in zip([p.grad for p in head.parameters()], eager, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_exporting_the_exact_solve_warns_that_the_program_needs_the_library():
    head, features = head_and_features("potts")
    with pytest.warns(UserWarning, match="holds the custom op lowrank_gcrf::solve"):
        torch.export.export(head.train(), (features,))


def test_traceable_solve_and_bound_ignore_autocast():
    """Under autocast the products would run in bfloat16 (a 1e-3 error, a "bound" below
    ‖A‖₂²): the traceable solve and the strength's bound opt out and keep float32."""
    from lowrank_gcrf.adapters.torch.functional import spectral_bound
    from lowrank_gcrf.adapters.torch.traceable_solve import traceable_solve

    generator = torch.Generator().manual_seed(0)
    A = torch.randn(2, 8, 600, generator=generator) + 3.0  # a dominant direction
    top = torch.linalg.matrix_norm(A.double(), ord=2) ** 2
    Ahat = A * torch.sqrt(0.9 / top).float()[:, None, None]
    b = torch.randn(2, 3, 600, generator=generator)
    plain = traceable_solve("potts", Ahat, b, 1.0, (0.9,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bound = spectral_bound(A)
        cast = traceable_solve("potts", Ahat, b, 1.0, (0.9,))
    assert bound.dtype == torch.float32 and bool((bound.double() >= top * (1 - 1e-6)).all())
    assert cast.dtype == torch.float32 and relative_error(cast, plain) <= 1e-6


def test_signed_layer_exports():
    """The signed model's traceable solve (its indefinite capacitance split into two definite
    ones) traces too: torch.export of a signed DenseGCRF matches the eager layer."""
    torch.manual_seed(0)
    crf = DenseGCRF(model="signed", attractive_dim=2).eval()
    with torch.no_grad():
        crf.raw_strength.fill_(2.0)
    unary, embeddings = torch.randn(2, 3, 5, 6), torch.randn(2, 5, 3, 5, 6)  # D + E = 5
    with torch.no_grad():
        eager = crf(unary, embeddings)
        exported = torch.export.export(crf, (unary, embeddings)).module()(unary, embeddings)
    assert relative_error(exported, eager) <= RTOL


class ExactSolve(torch.nn.Module):
    """A Potts G-CRF on given embeddings through the core's exact solve, as a custom op."""

    def __init__(self):
        super().__init__()
        self.raw_lam = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, embeddings, unary):
        lam = torch.nn.functional.softplus(self.raw_lam)
        options = solver_options(method="direct", rtol=1e-6, on_failure="raise")
        return exact_solve("potts", embeddings, unary, lam, options)


def test_custom_op_carries_exact_solve_through_export(tmp_path):
    """torch.export keeps ``lowrank_gcrf::solve`` as one node; a fresh process that imports
    the op's module runs the saved program and gets the eager result."""
    torch.manual_seed(1)
    module = ExactSolve()
    embeddings, unary = torch.randn(2, 4, 30) / 8, torch.randn(2, 3, 30)
    program = torch.export.export(module, (embeddings, unary))
    targets = [str(node.target) for node in program.graph.nodes]
    assert "lowrank_gcrf.solve.default" in targets
    torch.export.save(program, tmp_path / "exact.pt2")
    np.save(tmp_path / "embeddings.npy", embeddings.numpy())
    np.save(tmp_path / "unary.npy", unary.numpy())
    served = run_fresh(
        f"""
        import numpy as np, torch
        import lowrank_gcrf.adapters.torch.custom_op  # registers lowrank_gcrf::solve
        program = torch.export.load(r"{tmp_path}/exact.pt2")
        embeddings, unary = (np.load(r"{tmp_path}/" + n + ".npy") for n in ("embeddings", "unary"))
        x = program.module()(torch.from_numpy(embeddings), torch.from_numpy(unary))
        print(json.dumps(x.tolist()))
        """,
        imports_library=True,
    )
    with torch.no_grad():
        eager = module(embeddings, unary)
    assert relative_error(served, eager) <= 1e-6


def test_custom_op_trains_under_compile_fullgraph():
    """The op is opaque to Dynamo, so a training step through the exact solve compiles as one
    graph, forward and backward, with the eager gradients (``aot_eager``: the graph capture
    and autograd are what is tested here, not Inductor's code generation)."""
    torch.manual_seed(3)
    module = ExactSolve()
    embeddings, unary = torch.randn(2, 4, 30) / 8, torch.randn(2, 3, 30)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    grads = [
        torch.autograd.grad(run(embeddings, unary).square().sum(), [module.raw_lam])[0]
        for run in (module, compiled)
    ]
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-6, atol=0)


def test_custom_op_gradients_match_autograd_function():
    """The op's registered backward gives the autograd function's gradients."""
    from lowrank_gcrf.adapters.torch.autograd import solve_tensors

    torch.manual_seed(2)
    options = solver_options(method="direct", rtol=1e-12, on_failure="raise")
    inputs = [
        (torch.randn(2, 3, 20, dtype=torch.float64) / 8).requires_grad_(),
        torch.randn(2, 4, 20, dtype=torch.float64, requires_grad=True),
        torch.tensor(0.7, dtype=torch.float64, requires_grad=True),
    ]
    grads = []
    for solve in (exact_solve, solve_tensors):
        x = solve("potts", *inputs, options)
        grads.append(torch.autograd.grad((x * x.detach().flip(-1)).sum(), inputs))
    for op_grad, function_grad in zip(*grads, strict=True):
        torch.testing.assert_close(op_grad, function_grad, rtol=1e-10, atol=0)
    args = (*(t.detach() for t in inputs), "potts", 0, "direct", 1e-12, 0.0, None, "raise")
    result = torch.library.opcheck(torch.ops.lowrank_gcrf.solve.default, args)
    assert set(result.values()) == {"SUCCESS"}, result
