"""One process of the DistributedDataParallel test in ``test_torch_adapter.py``.

Launched like ``torchrun`` would (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``
in the environment): each rank trains a small float64 model with a ``DenseGCRF`` layer on
its shard of a fixed batch with the gloo backend, and rank 0 also trains an identical model
without DDP on the full batch. Rank 0 saves both runs' gradients and final parameters to
``OUT_DIR/grads.pt`` for the test to compare.

Usage: ``python torch_ddp_worker.py OUT_DIR``
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lowrank_gcrf.adapters.torch import DenseGCRF

STEPS = 2
BATCH, CHANNELS, LABELS, DIM, SIZE = 4, 2, 3, 2, 4


class Segmenter(nn.Module):
    """Unary and embedding branches feeding a general G-CRF with a learnt λ."""

    def __init__(self) -> None:
        super().__init__()
        self.unary = nn.Conv2d(CHANNELS, LABELS, 3, padding=1)
        self.embed = nn.Conv2d(CHANNELS, DIM * LABELS, 3, padding=1)
        self.crf = DenseGCRF(lam=0.5, learn_lam=True, method="direct", rtol=1e-12)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        embeddings = self.embed(images).unflatten(1, (DIM, LABELS))
        return self.crf(self.unary(images), embeddings)


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return Segmenter().double()


def make_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(BATCH, CHANNELS, SIZE, SIZE, generator=generator, dtype=torch.float64)
    targets = torch.randint(LABELS, (BATCH, SIZE, SIZE), generator=generator)
    return images, targets


def train(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> list:
    """Gradients of every step of a few SGD steps, and the final parameters."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trace = []
    for _ in range(STEPS):
        optimizer.zero_grad()
        F.cross_entropy(model(images), targets).backward()
        trace.append({name: p.grad.clone() for name, p in _parameters(model)})
        optimizer.step()
    trace.append({name: p.detach().clone() for name, p in _parameters(model)})
    return trace


def _parameters(model: nn.Module) -> list:
    # DDP prefixes the wrapped module's names with "module."
    return [(name.removeprefix("module."), p) for name, p in model.named_parameters()]


def main(out_dir: Path) -> None:
    # One thread per process: both ranks share a small CPU, as under torchrun.
    torch.set_num_threads(1)
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()
    images, targets = make_batch()
    shard = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    ddp = DistributedDataParallel(make_model())
    distributed = train(ddp, images[shard], targets[shard])
    if rank == 0:
        single = train(make_model(), images, targets)
        torch.save({"ddp": distributed, "single": single}, out_dir / "grads.pt")
    # Both ranks leave together: rank 0 hosts the store, and a rank still tearing down after
    # it has exited can hang.
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
