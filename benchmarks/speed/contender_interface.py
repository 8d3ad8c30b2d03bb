"""What every contender of the speed benchmark implements, and what a timed call returns.

Each :class:`Contender` turns a :class:`~benchmarks.speed.problems.Problem` into its own
inputs (:meth:`~Contender.prepare`, not timed) and then solves ``M x = b`` (``forward``) or
solves and back-propagates the cotangent ``gx`` to the embeddings, b and λ
(``forward_backward``). Results come back as :class:`Run` objects, converted to NumPy only
after the clock has stopped (:meth:`Run.outcome`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .measure import Device
from .problems import Problem


@dataclass
class Outcome:
    """A contender's result in NumPy: solution, gradients and solver statistics."""

    x: np.ndarray
    grads: tuple[np.ndarray, np.ndarray, np.ndarray] | None
    iterations: list[int]
    method: str | None
    converged: bool


@dataclass
class Run:
    """What a timed call returns: arrays still on the device, statistics unconverted."""

    x: Any
    grads: tuple[Any, Any, Any] | None = None
    iterations: list[Any] = field(default_factory=list)
    method: str | None = None
    converged: list[Any] = field(default_factory=list)

    def outcome(self, device: Device) -> Outcome:
        """Convert to NumPy (after timing: on a GPU this synchronises)."""
        grads = None
        if self.grads is not None:
            grads = tuple(device.to_numpy(g) for g in self.grads)
        return Outcome(
            x=device.to_numpy(self.x),
            grads=grads,
            iterations=[int(np.max(device.to_numpy(i))) for i in self.iterations],
            method=self.method,
            converged=all(bool(np.all(device.to_numpy(c))) for c in self.converged),
        )


class Contender:
    """Interface of a benchmarked implementation (not used directly).

    Attributes
    ----------
    name : str
    library : {"array", "torch"}
        Which allocator its memory comes from (picks the memory meter).
    """

    name = ""
    library = "array"

    def skip_reason(self, problem: Problem, device: Device, context: dict[str, Any]) -> str | None:
        """Why this contender cannot run ``problem`` (``None`` when it can).

        ``context`` holds ``rtol`` and what earlier contenders learned about the case
        (``cg_iterations``: the forward iterations ``scipy-cg`` needed, CG on the unknowns).
        """
        return None

    def prepare(self, problem: Problem, device: Device, context: dict[str, Any]) -> Any:
        """Inputs in the contender's own form (not timed)."""
        raise NotImplementedError

    def forward(self, inputs: Any) -> Run:
        """Solve ``M x = b`` for every system."""
        raise NotImplementedError

    def forward_backward(self, inputs: Any) -> Run:
        """Solve, then back-propagate ``gx`` to (embeddings, b, λ)."""
        raise NotImplementedError
