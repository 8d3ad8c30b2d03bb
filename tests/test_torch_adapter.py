"""The PyTorch adapter: autograd against finite differences and the core, zero-copy DLPack,
the ``DenseGCRF`` module, mixed precision, ``torch.compile``, DDP, CUDA and error surfacing.

Sizes are tiny so that the whole module runs in well under a minute on two cores.
"""

from __future__ import annotations

import functools
import math
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from model_cases import INDEFINITE_CASES, REGISTRY, each_model  # noqa: E402
from torch import nn  # noqa: E402

import lowrank_gcrf as lg  # noqa: E402
import lowrank_gcrf.adapters.torch as adapter  # noqa: E402
from lowrank_gcrf.adapters.torch import DenseGCRF, gcrf_solve, potts_solve  # noqa: E402
from lowrank_gcrf.adapters.torch import autograd as torch_autograd  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
METHODS = ["cg", "direct"]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny tensors gain nothing from threads, and on a busy 2-core runner spinning OpenMP
    workers starve the core's NumPy/SciPy calls (steps ran 50× slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def system(case, *, dtype=np.float64, per_batch_lam: bool = True):
    """A well-conditioned (κ = 10) batch of 2 systems as NumPy arrays, D = 3 and N = 18
    (general; signed with E = 2 more rows) or P = 6, L = 3 (Potts); λ of the batch shape (2,)
    or a float."""
    return case.make(
        0, rank=3, pixels=6, labels=3, kappa=10.0, batch_shape=(2,), dtype=dtype,
        per_batch_lam=per_batch_lam,
    )  # fmt: skip


def leaves(*arrays):
    """Float64 tensors that require grad, copied from NumPy arrays."""
    return [torch.tensor(np.asarray(a), dtype=torch.float64, requires_grad=True) for a in arrays]


def solver(case):
    """The adapter's function of ``case``'s model, on stacked embeddings."""
    return functools.partial(case.adapter_solve, adapter)


# -- gradients -------------------------------------------------------------------------------


@each_model
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("lam_shape", ["0-d", "batch"])
def test_gradcheck_functions(case, method, lam_shape):
    s = system(case)
    lam = s.lam if lam_shape == "batch" else np.max(s.lam)  # the largest keeps all definite
    U, b, lam_t = leaves(s.embeddings, s.b, lam)
    solve = solver(case)
    torch.autograd.gradcheck(
        lambda U, b, lam: solve(U, b, lam, method=method, rtol=1e-12), (U, b, lam_t)
    )


@each_model
def test_gradcheck_module(case):
    """Through the module, with a learnt λ: unaries, embeddings and the raw λ parameter."""
    torch.manual_seed(0)
    layer = DenseGCRF(lam=2.0, learn_lam=True, method="direct", rtol=1e-12, **case.layer_kwargs())
    layer = layer.double()
    shape = (2, *case.embedding_channels(3, 2), 3, 2)  # D=3, L=2, H=3, W=2
    unary = torch.randn(2, 2, 3, 2, dtype=torch.float64, requires_grad=True)
    embeddings = (0.2 * torch.randn(shape, dtype=torch.float64)).requires_grad_()
    raw_lam = layer.raw_lam.detach().clone().requires_grad_()

    def forward(unary, embeddings, raw_lam):
        return torch.func.functional_call(layer, {"raw_lam": raw_lam}, (unary, embeddings))

    torch.autograd.gradcheck(forward, (unary, embeddings, raw_lam))


@each_model
@pytest.mark.parametrize("method", METHODS)
def test_results_and_gradients_equal_the_core(case, method):
    s = system(case)
    U, b, lam = leaves(s.embeddings, s.b, s.lam)
    x = solver(case)(U, b, lam, method=method)
    gx = np.random.default_rng(1).standard_normal(x.shape)
    x.backward(torch.from_numpy(gx))
    x_core = case.solve(s.embeddings, s.b, s.lam, method=method)
    np.testing.assert_allclose(x.detach().numpy(), x_core, rtol=1e-12)
    grads = case.vjp(s.embeddings, x_core, gx, s.lam, method=method)
    for got, want in zip((U, b, lam), grads, strict=True):
        np.testing.assert_allclose(got.grad.numpy(), want, rtol=1e-10, atol=1e-14)


@each_model
def test_gradient_of_a_0d_lam_is_the_sum_over_the_batch(case):
    s = system(case, per_batch_lam=False)
    U, b, lam = leaves(s.embeddings, s.b, s.lam)
    solver(case)(U, b, lam).sum().backward()
    x = case.solve(s.embeddings, s.b, s.lam)
    _, _, g_lam = case.vjp(s.embeddings, x, np.ones_like(x), s.lam)
    assert lam.grad.shape == ()
    np.testing.assert_allclose(lam.grad.numpy(), g_lam.sum(), rtol=1e-10)


def test_float_lam_and_inputs_without_grad():
    s = system(REGISTRY["general"], per_batch_lam=False)
    A, b = torch.from_numpy(s.embeddings), torch.from_numpy(s.b)
    x = gcrf_solve(A, b, s.lam)
    assert x.grad_fn is None
    A.requires_grad_()
    gcrf_solve(A, b, s.lam).sum().backward()
    assert b.grad is None and torch.isfinite(A.grad).all()


def test_backward_reuses_the_forward_factorization(monkeypatch):
    calls = []
    factorize = lg.PottsOperator._factorize
    monkeypatch.setattr(lg.PottsOperator, "_factorize", lambda op: calls.append(1) or factorize(op))
    s = system(REGISTRY["potts"])
    U, b, lam = leaves(s.embeddings, s.b, s.lam)
    potts_solve(U, b, lam, method="direct").sum().backward()
    assert len(calls) == 1


def test_in_place_change_of_the_output_is_detected():
    s = system(REGISTRY["general"])
    U, b, lam = leaves(s.embeddings, s.b, s.lam)
    x = gcrf_solve(U, b, lam)
    x.mul_(2.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        x.sum().backward()


def test_double_backward_is_not_supported():
    s = system(REGISTRY["general"])
    U, b, lam = leaves(s.embeddings, s.b, s.lam)
    (g,) = torch.autograd.grad(gcrf_solve(U, b, lam).square().sum(), b, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        g.sum().backward()


# -- DLPack ----------------------------------------------------------------------------------


def test_cpu_hand_over_is_zero_copy(monkeypatch):
    handed = []
    solves = []
    to_core = torch_autograd.to_core

    def spy_to_core(tensor):
        array = to_core(tensor)
        handed.append((tensor, array))
        return array

    class SpyCoreSolve(torch_autograd.CoreSolve):
        def __init__(self, *args):
            super().__init__(*args)
            solves.append(self)

    monkeypatch.setattr(torch_autograd, "to_core", spy_to_core)
    monkeypatch.setattr(torch_autograd, "CoreSolve", SpyCoreSolve)
    s = system(REGISTRY["general"])
    U, b, lam = leaves(s.embeddings, s.b, s.lam)
    x = gcrf_solve(U, b, lam)
    for tensor, array in handed:
        assert isinstance(array, np.ndarray)
        assert array.ctypes.data == tensor.data_ptr()
    assert [t.data_ptr() for t, _ in handed] == [U.data_ptr(), b.data_ptr(), lam.data_ptr()]
    assert x.data_ptr() == solves[0].x.ctypes.data
    x.backward(torch.ones_like(x))
    assert handed[-1][1].ctypes.data == handed[-1][0].data_ptr()  # the cotangent


def test_non_contiguous_inputs():
    s = system(REGISTRY["general"])
    A = torch.from_numpy(np.ascontiguousarray(np.swapaxes(s.embeddings, -1, -2))).mT
    b = torch.from_numpy(np.stack([s.b, s.b], axis=-1))[..., 0]
    assert not A.is_contiguous() and not b.is_contiguous()
    np.testing.assert_allclose(gcrf_solve(A, b, 1.0).numpy(), lg.solve(s.embeddings, s.b, 1.0))


# -- the module ------------------------------------------------------------------------------


@each_model
def test_module_matches_the_functions(case):
    torch.manual_seed(0)
    B, D, L, H, W = 2, 3, 4, 3, 5
    unary = torch.randn(B, L, H, W, dtype=torch.float64)
    channels = case.embedding_channels(D, L)
    # Small enough that no bound is active (then the layer solves its inputs as they are).
    embeddings = 0.05 * torch.randn((B, *channels, H, W), dtype=torch.float64)
    layer = DenseGCRF(lam=1.5, **case.layer_kwargs())
    out = layer(unary, embeddings)
    assert out.shape == (B, L, H, W)
    core_unary = unary.flatten(2) if len(channels) == 1 else unary.flatten(1)
    want = solver(case)(embeddings.flatten(2), core_unary, 1.5)
    torch.testing.assert_close(out, want.reshape(B, L, H, W), rtol=0, atol=0)


def test_learnt_lam_is_positive_and_starts_at_the_given_value():
    layer = DenseGCRF(lam=0.3, potts=True, learn_lam=True)
    assert [name for name, _ in layer.named_parameters()] == ["raw_lam", "raw_strength"]
    torch.testing.assert_close(layer.lam, torch.tensor(0.3))
    with torch.no_grad():
        layer.raw_lam.fill_(-30.0)
    assert layer.lam > 0
    assert not list(DenseGCRF(lam=0.3, strength=None).parameters())
    fixed = DenseGCRF(lam=0.3, learn_strength=False)
    assert not list(fixed.parameters()) and [n for n, _ in fixed.named_buffers()] == [
        "raw_strength"
    ]
    assert DenseGCRF(lam=50.0, learn_lam=True).lam.item() == pytest.approx(50.0)


def test_extra_repr():
    text = repr(DenseGCRF(lam=0.25, potts=True, method="cg", learn_lam=True, rtol=1e-6))
    assert text == (
        "DenseGCRF(lam=0.25, strength[Ahat]=0.3, model='potts', learn_lam=True, "
        "method='cg', rtol=1e-06)"
    )
    text = repr(DenseGCRF(model="signed", attractive_dim=2, strength=None))
    assert text == "DenseGCRF(lam=1, model='signed', strength=None, attractive_dim=2)"


def long_range_batch(n: int = 16, size: int = 8):
    """Every pixel takes the class of an image that shows it at two random pixels only
    (+1 or −1 on a noisy background): most pixels lie outside any local receptive field."""
    generator = torch.Generator().manual_seed(1)
    classes = torch.randint(2, (n,), generator=generator)
    images = 0.1 * torch.randn(n, 1, size, size, generator=generator)
    for image, label in zip(images, classes, strict=True):
        markers = torch.randperm(size * size, generator=generator)[:2]
        image.view(-1)[markers] = 2.0 * label - 1.0
    return images, classes[:, None, None].expand(n, size, size)


class MarkerNet(nn.Module):
    """A 3×3 conv net for the unaries and the embeddings, then a Potts G-CRF (or nothing):
    the default layer on the raw embeddings, or a raw layer on embeddings the net scales."""

    def __init__(self, crf: str | None):
        super().__init__()
        self.unary = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 2, 1))
        self.embed = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))
        self.scaled = crf == "raw"
        self.crf = (
            None if crf is None else DenseGCRF(potts=True, strength=None if self.scaled else 0.3)
        )

    def forward(self, images):
        unary = self.unary(images)
        if self.crf is None:
            return unary
        embeddings = self.embed(images)
        if self.scaled:
            # Frobenius norm 0.9 per image bounds ‖Â‖₂² by 0.81 < λ: the system stays PD.
            embeddings = 0.9 * embeddings / embeddings.flatten(1).norm(dim=1)[:, None, None, None]
        return self.crf(unary, embeddings)


def train_marker_net(crf: str | None, steps: int = 40) -> tuple[list[float], MarkerNet]:
    images, targets = long_range_batch()
    torch.manual_seed(0)
    net = MarkerNet(crf)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.03)
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(net(images), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, net


@pytest.mark.parametrize("crf", ["raw", "default"])
def test_training_uses_long_range_context(crf):
    # The default layer starts at strength 0.3 and learns to pool: it takes longer.
    steps = 40 if crf == "raw" else 80
    losses, net = train_marker_net(crf, steps)
    baseline, _ = train_marker_net(None, steps)
    assert losses[-1] < 0.25 * losses[0], losses
    # the unaries alone cannot see the markers from most pixels
    assert losses[-1] < 0.5 * baseline[-1], (losses[-1], baseline[-1])
    for p in net.embed.parameters():
        assert torch.isfinite(p.grad).all() and p.grad.abs().max() > 0
    if crf == "default":  # pooling helps here: the strength grows from 0.3
        assert net.crf.effective_strength["Ahat"] > 0.5


# -- precision -------------------------------------------------------------------------------


@each_model
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_is_solved_in_float32(case, dtype):
    s = system(case, dtype=np.float32)
    U, b = (torch.from_numpy(a).to(dtype).requires_grad_() for a in (s.embeddings, s.b))
    x = solver(case)(U, b, torch.tensor(s.lam))
    assert x.dtype == dtype
    want = solver(case)(U.detach().float(), b.detach().float(), torch.tensor(s.lam))
    torch.testing.assert_close(x, want.to(dtype))
    x.float().square().sum().backward()
    assert U.grad.dtype == dtype and b.grad.dtype == dtype
    assert torch.isfinite(U.grad).all() and torch.isfinite(b.grad).all()


def test_mixed_float_dtypes_promote():
    s = system(REGISTRY["general"])
    A = torch.from_numpy(s.embeddings).float().requires_grad_()
    b = torch.from_numpy(s.b).requires_grad_()
    x = gcrf_solve(A, b, s.lam)
    assert x.dtype == torch.float64
    np.testing.assert_allclose(
        x.detach().numpy(), lg.solve(A.detach().double().numpy(), s.b, s.lam), rtol=1e-12
    )
    x.sum().backward()
    assert A.grad.dtype == torch.float32 and b.grad.dtype == torch.float64


@each_model
def test_autocast_bfloat16(case):
    """Under autocast bfloat16 inputs are solved in float32 and returned as bfloat16."""
    torch.manual_seed(0)
    channels = case.embedding_channels(2, 3)
    conv = nn.Conv2d(2, 3 + math.prod(channels), 1)
    layer = DenseGCRF(lam=1.0, learn_lam=True, **case.layer_kwargs())
    images = torch.randn(2, 2, 3, 3)

    def run():
        features = conv(images)
        unary, embeddings = features[:, :3], 0.1 * features[:, 3:]
        embeddings = embeddings.unflatten(1, channels)
        return unary, embeddings, layer(unary, embeddings)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        unary, embeddings, out = run()
    assert unary.dtype == torch.bfloat16 and out.dtype == torch.bfloat16
    expected = layer(unary.float(), embeddings.float())
    torch.testing.assert_close(out, expected.to(torch.bfloat16))
    out.sum().backward()
    assert torch.isfinite(conv.weight.grad).all() and layer.raw_lam.grad.isfinite()


# -- torch.compile ---------------------------------------------------------------------------


class TinySegmenter(nn.Module):
    def __init__(self, potts: bool, learn_lam: bool):
        super().__init__()
        self.potts = potts
        self.unary = nn.Conv2d(2, 3, 1)
        self.embed = nn.Conv2d(2, 4 if potts else 12, 1)
        self.crf = DenseGCRF(lam=1.0, potts=potts, learn_lam=learn_lam)

    def forward(self, images):
        embeddings = self.embed(images)
        if self.potts:
            embeddings = 0.5 * F.normalize(embeddings.flatten(1), dim=1).view_as(embeddings)
        else:
            embeddings = embeddings.unflatten(1, (4, 3))
        return self.crf(self.unary(images), embeddings)


def assert_compiled_matches_eager(model, compiled, images):
    out = compiled(images)
    out.square().sum().backward()
    compiled_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    want = model(images)
    want.square().sum().backward()
    torch.testing.assert_close(out, want)
    for got, p in zip(compiled_grads, model.parameters(), strict=True):
        torch.testing.assert_close(got, p.grad, rtol=1e-4, atol=1e-5)
    model.zero_grad()


@pytest.fixture
def fresh_compiler():
    torch.compiler.reset()
    yield
    torch.compiler.reset()


@pytest.mark.usefixtures("fresh_compiler")
def test_torch_compile_default_backend():
    """``torch.compile`` with inductor compiles a training step in one graph: the solve is the
    custom op ``lowrank_gcrf::solve`` (``fullgraph=True`` fails at any graph break)."""
    torch.manual_seed(0)
    model = TinySegmenter(potts=False, learn_lam=False)
    compiled = torch.compile(model, fullgraph=True)
    assert_compiled_matches_eager(model, compiled, torch.randn(2, 2, 4, 4))


@pytest.mark.usefixtures("fresh_compiler")
def test_torch_compile_learnt_lam_and_new_shapes():
    """Dynamo and AOTAutograd (without inductor's slow C++ codegen) on the Potts model with
    a learnt λ, recompiled with dynamic shapes for a second image size."""
    torch.manual_seed(0)
    model = TinySegmenter(potts=True, learn_lam=True)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    for shape in [(2, 2, 4, 4), (1, 2, 3, 5)]:
        assert_compiled_matches_eager(model, compiled, torch.randn(shape))


# -- DistributedDataParallel -----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_ddp_gradients_equal_single_process_gradients(tmp_path):
    """Two gloo processes on CPU, launched as torchrun would: after DDP's all-reduce, every
    step's gradients equal those of one process on the full batch."""
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "WORLD_SIZE": "2",
        "OMP_NUM_THREADS": "1",
    }
    worker = [sys.executable, str(Path(__file__).with_name("torch_ddp_worker.py")), str(tmp_path)]
    # Output to files, not pipes: a rank blocked on a full pipe would stall the other one
    # inside a collective until the timeout.
    logs = [tmp_path / f"rank{rank}.log" for rank in range(2)]
    ranks = [
        subprocess.Popen(
            worker,
            env={**env, "RANK": str(rank)},
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
        for rank, log in enumerate(logs)
    ]
    try:
        for rank in ranks:
            rank.wait(timeout=300)
    finally:
        for rank in ranks:
            rank.kill()
    outputs = [log.read_text() for log in logs]
    assert [rank.returncode for rank in ranks] == [0, 0], "\n".join(outputs)
    runs = torch.load(tmp_path / "grads.pt")
    assert len(runs["ddp"]) == len(runs["single"]) == 3  # two steps' gradients, final weights
    for ddp_step, single_step in zip(runs["ddp"], runs["single"], strict=True):
        assert ddp_step.keys() == single_step.keys() and "crf.raw_lam" in ddp_step
        for name, value in ddp_step.items():
            assert value.dtype == torch.float64
            torch.testing.assert_close(value, single_step[name], rtol=1e-10, atol=1e-12)


# -- CUDA ------------------------------------------------------------------------------------


def cupy_or_skip():
    return pytest.importorskip("cupy", reason="CUDA tensors need CuPy (extra cuda12/cuda13)")


@needs_cuda
@pytest.mark.gpu
@each_model
@pytest.mark.parametrize("method", METHODS)
def test_cuda_matches_cpu(case, method):
    cupy_or_skip()
    s = system(case)
    cpu = leaves(s.embeddings, s.b, s.lam)
    gpu = [t.detach().cuda().requires_grad_() for t in cpu]
    for tensors in (cpu, gpu):
        x = solver(case)(*tensors, method=method, rtol=1e-10)
        x.square().sum().backward()
    assert x.is_cuda and all(t.grad.is_cuda for t in gpu)
    torch.testing.assert_close(x.cpu(), solver(case)(*cpu, method=method, rtol=1e-10))
    for c, g in zip(cpu, gpu, strict=True):
        torch.testing.assert_close(g.grad.cpu(), c.grad, rtol=1e-7, atol=1e-9)


@needs_cuda
@pytest.mark.gpu
def test_cuda_runs_on_the_current_stream(monkeypatch):
    cupy = cupy_or_skip()
    streams = []

    class SpyCoreSolve(torch_autograd.CoreSolve):
        def __init__(self, *args):
            streams.append(cupy.cuda.get_current_stream().ptr)
            super().__init__(*args)

        def backward(self, gx):
            streams.append(cupy.cuda.get_current_stream().ptr)
            return super().backward(gx)

    monkeypatch.setattr(torch_autograd, "CoreSolve", SpyCoreSolve)
    torch.manual_seed(0)
    layer = DenseGCRF(lam=1.0, potts=True, learn_lam=True).cuda()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        # work queued just before the solve on the same stream must be complete when it runs
        unary = torch.randn(2, 4, 64, 64, device="cuda").mul_(3.0)
        embeddings = 0.5 * F.normalize(torch.randn(2, 8, 64 * 64, device="cuda"), dim=(1, 2))
        embeddings = embeddings.view(2, 8, 64, 64).requires_grad_()
        out = layer(unary, embeddings)
        out.square().sum().backward()
    torch.cuda.synchronize()
    assert streams == [side.cuda_stream, side.cuda_stream]
    want = DenseGCRF(lam=1.0, potts=True)(unary.cpu(), embeddings.detach().cpu())
    torch.testing.assert_close(out.cpu(), want, rtol=1e-4, atol=1e-5)


@needs_cuda
@pytest.mark.gpu
def test_cuda_refine_lattice_matches_cpu():
    """refine's default passes on CUDA tensors (the lattice built on the host, applied on the
    device by cuSPARSE products) against the same call on the CPU, with gradients."""
    cupy_or_skip()
    from lowrank_gcrf.adapters.torch import refine

    rng = np.random.default_rng(3)
    scores = torch.from_numpy(rng.normal(0.0, 2.0, (2, 4, 24, 32)).astype(np.float32))
    image = torch.from_numpy(rng.integers(0, 256, (2, 3, 24, 32), dtype=np.uint8))
    weights = torch.from_numpy(rng.normal(size=(2, 4, 24, 32)).astype(np.float32))
    results = []
    for device in ("cpu", "cuda"):
        s = scores.to(device).requires_grad_()
        out = refine(s, image.to(device), logits=True, appearance_kernel="lattice")
        (out * weights.to(device)).sum().backward()
        assert out.device.type == s.grad.device.type == device
        results.append((out.detach().cpu(), s.grad.cpu()))
    # float32 on both, in another order of operations (the device's sparse products): on the
    # CPU, float32 and float64 differ by 4e-6 in the output and 1e-4 in gradients up to 13.
    torch.testing.assert_close(results[1][0], results[0][0], rtol=0, atol=1e-5)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=0, atol=1e-3)


@needs_cuda
@pytest.mark.gpu
def test_cuda_half_precision():
    cupy_or_skip()
    s = system(REGISTRY["potts"], dtype=np.float32)
    U, b = (torch.from_numpy(a).cuda().half() for a in (s.embeddings, s.b))
    x = potts_solve(U, b, torch.tensor(s.lam))
    assert x.dtype == torch.float16 and x.is_cuda
    want = potts_solve(U.cpu(), b.cpu(), torch.tensor(s.lam))
    # float32 solves on either device round differently before the cast to float16
    torch.testing.assert_close(x.cpu(), want, rtol=1e-2, atol=1e-3)


# -- errors ----------------------------------------------------------------------------------


def core_message(error, call):
    with pytest.raises(error) as info:
        call()
    return str(info.value)


#: The embeddings layout each model's layer names in its errors.
LAYOUTS = {"potts": "(B, D, H, W)", "general": "(B, D, L, H, W)", "signed": "(B, D+E, L, H, W)"}


@each_model
def test_bad_layer_shapes_name_the_layout(case):
    layer = DenseGCRF(**case.layer_kwargs())
    embeddings = torch.zeros(2, *case.embedding_channels(3, 4), 5, 4)
    with pytest.raises(lg.GCRFError, match=re.escape("(B, L, H, W)")):
        layer(torch.zeros(2, 4), embeddings)  # 1 to 3 spatial dimensions are accepted
    layout = LAYOUTS[case.name]
    with pytest.raises(lg.GCRFError, match=re.escape(layout)):
        layer(torch.zeros(2, 4, 5, 4), torch.zeros(2, 3, 5, 4, 1, 1))
    with pytest.raises(lg.GCRFError, match=re.escape(f"expected {layout}")):
        layer(torch.zeros(2, 4, 5, 3), embeddings)


@each_model
def test_core_shape_errors_surface_unchanged(case):
    s = system(case)
    b = s.b[..., :-1]
    want = core_message(lg.GCRFError, lambda: case.solve(s.embeddings, b, s.lam))
    with pytest.raises(lg.GCRFError) as info:
        solver(case)(torch.from_numpy(s.embeddings), torch.from_numpy(b), s.lam)
    assert type(info.value) is lg.GCRFError and str(info.value) == want


@pytest.mark.parametrize("lam", [0.0, -1.0, float("nan")])
def test_non_positive_lam(lam):
    s = system(REGISTRY["general"], per_batch_lam=False)
    want = core_message(lg.GCRFError, lambda: lg.solve(s.embeddings, s.b, lam))
    A, b = torch.from_numpy(s.embeddings), torch.from_numpy(s.b)
    for bad in (lam, torch.tensor(lam, dtype=torch.float64)):
        with pytest.raises(lg.GCRFError) as info:
            gcrf_solve(A, b, bad)
        assert str(info.value) == want
    # the layer checks its scalar λ when built, as the core checks an unbatched system's
    want = core_message(lg.GCRFError, lambda: lg.solve(s.embeddings[0], s.b[0], lam))
    for learn_lam in (False, True):
        with pytest.raises(lg.GCRFError) as info:
            DenseGCRF(lam=lam, learn_lam=learn_lam)
        assert str(info.value) == want


@pytest.mark.parametrize("case", INDEFINITE_CASES, ids=str)
def test_indefinite_system_surfaces_unchanged(case):
    s = system(case)
    lam = case.indefinite_lam(s)
    with pytest.raises(lg.IndefiniteSystemError) as core:
        case.solve(s.embeddings, s.b, lam)
    U, b, lam_t = leaves(s.embeddings, s.b, lam)
    with pytest.raises(lg.IndefiniteSystemError) as info:
        solver(case)(U, b, lam_t)
    assert str(info.value) == str(core.value)
    assert (info.value.lam, info.value.mu_max) == (core.value.lam, core.value.mu_max)


def test_convergence_error_surfaces_unchanged():
    s = system(REGISTRY["general"])
    kwargs = {"method": "cg", "rtol": 1e-12, "maxiter": 1}
    want = core_message(lg.ConvergenceError, lambda: lg.solve(s.embeddings, s.b, s.lam, **kwargs))
    with pytest.raises(lg.ConvergenceError) as info:
        gcrf_solve(*leaves(s.embeddings, s.b, s.lam), **kwargs)
    assert str(info.value) == want


def test_unknown_keywords_and_non_tensors():
    s = system(REGISTRY["general"])
    A, b = torch.from_numpy(s.embeddings), torch.from_numpy(s.b)
    with pytest.raises(lg.GCRFError, match=r"unknown solver keyword.*tol"):
        gcrf_solve(A, b, 1.0, tol=1e-3)
    with pytest.raises(TypeError, match="x0"):  # the layer's keywords are explicit
        DenseGCRF(x0=None)
    with pytest.raises(lg.GCRFTypeError, match="torch tensors"):
        gcrf_solve(s.embeddings, b, 1.0)


def test_integer_inputs_surface_the_core_type_error():
    A = torch.ones(3, 6, dtype=torch.int64)
    with pytest.raises(lg.GCRFTypeError, match="real floating"):
        gcrf_solve(A, torch.ones(6, dtype=torch.int64), 1.0)


# -- README ----------------------------------------------------------------------------------


def readme_snippet() -> str:
    """The PyTorch example of README.md."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    for block in re.findall(r"```python\n(.*?)```", text, re.S):
        if "from lowrank_gcrf.adapters.torch import" in block:
            return block
    raise AssertionError("no PyTorch example found in README.md")


def test_readme_example_runs(capsys):
    namespace: dict = {}
    exec(compile(readme_snippet(), "README (PyTorch)", "exec"), namespace)
    losses = [float(line.split()[-1]) for line in capsys.readouterr().out.splitlines()]
    assert len(losses) >= 3 and all(np.isfinite(losses)) and losses[-1] < losses[0]
