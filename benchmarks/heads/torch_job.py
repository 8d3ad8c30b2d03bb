"""One PyTorch training run: train from scratch, re-estimate BatchNorm, test; a control run
then measures the ground-truth oracles on its unaries (:mod:`.oracles`).

The evaluation re-estimates every BatchNorm's statistics before the test: one forward pass
in training mode over ``bn_images`` training scenes at once, whose batch statistics become
the running ones (the population statistics of those scenes). MobileNetV3's BatchNorm
momentum is 0.01, so after a few hundred steps its running statistics still mostly hold
their initial values and eval mode predicts background everywhere, with or without a CRF.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import OPTIMIZERS, Config, Job
from .head_state import head_state
from .oracles import oracle_mious
from .records import library_warnings, miou_percent, run_record, unavailable_record
from .scenes import NUM_LABELS, Split, make_split
from .torch_networks import HeadNet, build, upsample

#: scenes per forward pass when testing
EVAL_BATCH = 32


def optimizer(name: str, parameters: list[nn.Parameter]) -> torch.optim.Optimizer:
    """SGD with momentum 0.9 or Adam, at the learning rate of :data:`OPTIMIZERS`."""
    kind, lr = OPTIMIZERS[name]
    if kind == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=0.9)
    return torch.optim.Adam(parameters, lr=lr)


def grad_norm(parameters: list[nn.Parameter]) -> float:
    """The 2-norm of every parameter's gradient together."""
    norms = [p.grad.detach().norm() for p in parameters if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(norms)))


def reestimate_batchnorm(net: nn.Module, images: Tensor) -> None:
    """Replace every BatchNorm's running statistics by the statistics of ``images``."""
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = 1.0  # the running statistics become the batch's
    net.train()
    with torch.no_grad():
        net(images)
    net.eval()


def predict(net: nn.Module, images: Tensor) -> np.ndarray:
    """Label maps of ``images``, the network in eval mode."""
    net.eval()
    with torch.no_grad():
        chunks = [
            net(images[s : s + EVAL_BATCH]).argmax(1) for s in range(0, len(images), EVAL_BATCH)
        ]
    return torch.cat(chunks).numpy()


def unary_oracles(net: HeadNet, test: Split) -> dict[str, float]:
    """:func:`~benchmarks.heads.oracles.oracle_mious` of the control ``net`` on ``test``."""
    images = torch.from_numpy(test.images)
    net.eval()
    with torch.no_grad():
        scores = torch.cat(
            [net.low_res(images[s : s + EVAL_BATCH]) for s in range(0, len(images), EVAL_BATCH)]
        )
    size = images.shape[-2:]
    return oracle_mious(
        scores.double().numpy(), test.labels, lambda x: upsample(torch.from_numpy(x), size).numpy()
    )


def train(net: nn.Module, job: Job, config: Config, images: Tensor, labels: Tensor) -> dict:
    """Train ``net`` in place; its losses, gradient norms and step times (lists).

    A run stops at its first non-finite loss: what follows would train on NaNs.
    """
    parameters = [p for p in net.parameters() if p.requires_grad]
    opt = optimizer(job.optimizer, parameters)
    # one batch order per seed: every variant and optimizer sees the same batches
    generator = torch.Generator().manual_seed(job.seed)
    trace: dict[str, list[float]] = {"losses": [], "grad_norms": [], "step_seconds": []}
    net.train()
    for _ in range(config.steps_of(job.network)):
        index = torch.randint(len(images), (config.batch,), generator=generator)
        start = time.perf_counter()
        loss = F.cross_entropy(net(images[index]), labels[index])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        trace["grad_norms"].append(grad_norm(parameters))
        opt.step()
        trace["step_seconds"].append(time.perf_counter() - start)
        trace["losses"].append(float(loss))
        if not np.isfinite(trace["losses"][-1]):
            break
    return trace


def run(job: Job, config: Config) -> dict[str, Any]:
    """Train ``job`` for its network's steps and test it; its :func:`run_record`."""
    train_split = make_split("train", config.train_images, config.side, config.scene_seed)
    test = make_split("test", config.test_images, config.side, config.scene_seed)
    try:
        net, head = build(job.network, job.variant, job.seed, NUM_LABELS)
    except ValueError as error:
        return unavailable_record(job, str(error))
    images = torch.from_numpy(train_split.images)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trace = train(net, job, config, images, torch.from_numpy(train_split.labels))
        reestimate_batchnorm(net, images[: config.bn_images])
        predicted = predict(net, torch.from_numpy(test.images))
    return run_record(
        job,
        **trace,
        miou=miou_percent(predicted, test.labels),
        state=head_state(head),
        warnings=library_warnings(caught),
        oracles=unary_oracles(net, test) if job.variant == "control" else None,
    )
