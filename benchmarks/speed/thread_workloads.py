"""What :mod:`benchmarks.speed.threads` times: each case as a call ready to repeat, its
inputs made beforehand (forward+backward solves at the paper's size, ``refine`` of the
refine benchmark's first test scene in the core and the PyTorch adapter, and the PyTorch
and Keras heads' training steps)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from lowrank_gcrf.models import make_operator

from ..paper_sizes import PAPER_LABELS, PAPER_SIDE
from .problems import make_problem

KAPPA = 1e3
RTOL = 1e-5


def solve_call(
    model: str,
    rank: int,
    batch: int,
    method: str,
    side: int = PAPER_SIDE,
    labels: int = PAPER_LABELS,
    dtype: str = "float32",
) -> Callable[[], Any]:
    """A forward+backward solve of the case (the backward reusing the forward's state)."""
    problem = make_problem(
        model,
        pixels=side * side,
        labels=labels,
        rank=rank,
        kappa=KAPPA,
        batch=batch,
        dtype=np.dtype(dtype),
    )

    def call() -> None:
        op = make_operator(
            problem.model, problem.embeddings, problem.lam, num_labels=problem.labels
        )
        x, info = op.solve(problem.b, method=method, rtol=RTOL)
        op.vjp(x, problem.gx, method=method, rtol=RTOL, factorization=info.factorization)

    return call


def refine_call(labels: int, **params: Any) -> Callable[[], Any]:
    """``lowrank_gcrf.refine`` of the refine benchmark's first 300×400 test scene (its coarse
    unary widened to ``labels``), with its defaults or ``params``."""
    from lowrank_gcrf import refine

    from ..refine.job import timing_probs
    from ..refine.scenes import make_scenes

    scene = make_scenes("test", (300, 400), 1)[0]
    probs = timing_probs(scene, labels)
    return functools.partial(refine, probs, scene.image, **params)


def torch_refine_call(labels: int) -> Callable[[], Any]:
    """The PyTorch adapter's ``refine`` (defaults: the lattice's passes) of the same scene
    as :func:`refine_call`, forward and backward to the probabilities, as in training."""
    import torch

    from lowrank_gcrf.adapters.torch import refine

    from ..refine.job import timing_probs
    from ..refine.scenes import make_scenes

    scene = make_scenes("test", (300, 400), 1)[0]
    probs = torch.from_numpy(timing_probs(scene, labels))
    image = torch.from_numpy(scene.image)
    weights = torch.randn(probs.shape, generator=torch.Generator().manual_seed(0))

    def call() -> None:
        p = probs.clone().requires_grad_()
        (refine(p, image) * weights).sum().backward()

    return call


def torch_step_call(crf: bool = True) -> Callable[[], Any]:
    """One SGD step of a Potts ``GCRFHead`` on fixed features (batch 4, 41×41, L = 21), or
    with ``crf=False`` of its unary branch alone: torch's own share of the step."""
    import torch

    from lowrank_gcrf.adapters.torch import GCRFHead

    torch.manual_seed(0)
    head = GCRFHead(32, PAPER_LABELS, embed_dim=16)
    model = head if crf else head.unary
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    features = torch.randn(4, 32, PAPER_SIDE, PAPER_SIDE)
    labels = torch.randint(PAPER_LABELS, (4, PAPER_SIDE, PAPER_SIDE))

    def call() -> None:
        loss = torch.nn.functional.cross_entropy(model(features), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return call


def keras_step_call() -> Callable[[], Any]:
    """One SGD step of a Keras Potts ``GCRFHead`` on fixed features (batch 4, 41×41,
    L = 21), eagerly; TensorFlow's own pools cannot change once it runs, so its ``one
    thread`` limits the BLAS pools only."""
    import keras
    import tensorflow as tf

    from lowrank_gcrf.adapters.tensorflow import GCRFHead

    keras.utils.set_random_seed(0)
    head = GCRFHead(PAPER_LABELS, embed_dim=16, data_format="channels_last")
    optimizer = keras.optimizers.SGD(1e-3)
    features = tf.random.normal((4, PAPER_SIDE, PAPER_SIDE, 32))
    labels = tf.random.uniform((4, PAPER_SIDE, PAPER_SIDE), maxval=PAPER_LABELS, dtype=tf.int32)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    head(features)

    def call() -> None:
        with tf.GradientTape() as tape:
            loss = loss_fn(labels, head(features))
        grads = tape.gradient(loss, head.trainable_variables)
        optimizer.apply_gradients(zip(grads, head.trainable_variables, strict=True))

    return call
