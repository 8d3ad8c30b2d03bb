"""What the speed benchmark measures: its cases, grouped in suites, and the plan of a run.

Suites, all with controlled conditioning (:mod:`benchmarks.speed.problems`):

* ``paper``: the paper's size (:mod:`benchmarks.paper_sizes`: 41×41 pixels, L = 21;
  general D = 128, Potts D = 128 and 1024), float32/float64, batch 1/8,
  κ ∈ {10, 10³, 10⁵}; every contender.
* ``pixels``: P ∈ {21², 41², 65², 129²} at D = 128, L = 21 (κ = 10³, float32, batch 1).
* ``rank``: D from 16 to 1024 at the paper's P and L, κ ∈ {10, 10³}, both dtypes — the
  ``cg``/``direct`` crossover that sets ``method="auto"``; competitors at κ = 10³ float32.
* ``labels``: L from 2 to 64 at the paper's P, D = 128.
* ``meanfield``: pydensecrf2 at 41×41 and 321×321, 21 labels, 5 and 10 iterations.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..paper_sizes import PAPER_LABELS, PAPER_MODELS, PAPER_PIXELS, PAPER_SIDE
from .contenders import CONTENDER_NAMES

KAPPAS = (10.0, 1e3, 1e5)
PHASES = ("forward", "forward_backward")
OURS = ("ours-auto", "ours-direct", "ours-cg")


def tolerance(dtype: Any, kappa: float) -> float:
    """The rtol every contender gets: 1e-5, or 1e-3 where ε·κ > 1e-3.

    A float32 system at κ = 10⁵ cannot reach 1e-5: the residual of the correctly rounded
    solution is already about 3e-5 and float32 arithmetic cannot evaluate it better than
    ε·κ ≈ 1e-2 (measured: ours direct and cg stall near 3e-4).
    """
    return 1e-3 if np.finfo(dtype).eps * kappa > 1e-3 else 1e-5


@dataclass(frozen=True)
class Case:
    """One benchmark configuration, the suites it belongs to and the contenders that run it."""

    suites: tuple[str, ...]
    model: str
    pixels: int
    labels: int
    rank: int
    kappa: float
    dtype: str
    batch: int
    contenders: tuple[str, ...]
    memory: bool = True

    @property
    def rtol(self) -> float:
        """The tolerance of this case (:func:`tolerance`)."""
        return tolerance(np.dtype(self.dtype), self.kappa)


@dataclass
class Plan:
    """What a run measures and how hard it tries."""

    cases: list[Case]
    repeats: int
    budget_s: float
    meanfield: list[tuple[int, int]] = field(default_factory=list)
    meanfield_labels: int = PAPER_LABELS


def _merged(cases: list[Case]) -> list[Case]:
    """One case per configuration: the union of its suites and contenders (in the order of
    :data:`~benchmarks.speed.contenders.CONTENDER_NAMES`), memory if any asks for it."""
    merged: dict[tuple, Case] = {}
    for case in cases:
        seen = merged.get(case_key(case))
        if seen is not None:
            wanted = set(seen.contenders) | set(case.contenders)
            case = replace(
                seen,
                suites=seen.suites + tuple(s for s in case.suites if s not in seen.suites),
                contenders=tuple(n for n in CONTENDER_NAMES if n in wanted),
                memory=seen.memory or case.memory,
            )
        merged[case_key(case)] = case
    return list(merged.values())


def plan(quick: bool) -> Plan:
    """The full benchmark, or the ``--quick`` subset: the targets' cases (paper size,
    κ = 10³, float32, batch 1) with every contender, small sweeps, fewer repeats."""
    everyone = CONTENDER_NAMES
    # Unrolled CG is there for the memory of an autograd backward: paper size, batch 1,
    # float32, κ ≤ 10³ only (at 10⁵ it costs more than the rest of the case). Batched CG at
    # κ = 10⁵ (tens of seconds, 10× slower than direct already at batch 1) is skipped too.
    # Memory is measured at batch 1 (batch 8 scales it by 8) and where the sweeps'
    # competitors run.
    sweepers = tuple(n for n in everyone if n != "torch-unrolled-cg")
    paper = dict(pixels=PAPER_PIXELS, labels=PAPER_LABELS)
    cases: list[Case] = []
    dtypes = ("float32",) if quick else ("float32", "float64")
    for model, rank in PAPER_MODELS:
        for dtype in dtypes:
            for batch in (1,) if quick else (1, 8):
                for kappa in (1e3,) if quick else KAPPAS:
                    # Per-system loops gain nothing from a batch: batch 8 is 8× batch 1.
                    who = everyone if batch == 1 else (*OURS, "linear-operator")
                    if kappa > 1e3 or dtype == "float64":
                        who = tuple(n for n in who if n != "torch-unrolled-cg")
                    if kappa > 1e3 and batch > 1:
                        who = tuple(n for n in who if n != "ours-cg")
                    cases.append(
                        Case(
                            ("paper",),
                            model,
                            rank=rank,
                            kappa=kappa,
                            dtype=dtype,
                            batch=batch,
                            contenders=who,
                            memory=batch == 1,
                            **paper,
                        )
                    )
    for model in ("general", "potts"):
        for side in (21, PAPER_SIDE) if quick else (21, PAPER_SIDE, 65, 129):
            cases.append(
                Case(
                    ("pixels",),
                    model,
                    pixels=side * side,
                    labels=PAPER_LABELS,
                    rank=128,
                    kappa=1e3,
                    dtype="float32",
                    batch=1,
                    contenders=sweepers,
                )
            )
        for rank in (32, 128) if quick else (16, 32, 64, 128, 256, 512, 1024):
            for dtype in dtypes:
                for kappa in (10.0, 1e3):
                    full = kappa == 1e3 and dtype == "float32"
                    who = sweepers if full else ("ours-direct", "ours-cg")
                    cases.append(
                        Case(
                            ("rank",),
                            model,
                            rank=rank,
                            kappa=kappa,
                            dtype=dtype,
                            batch=1,
                            contenders=who,
                            memory=full,
                            **paper,
                        )
                    )
        for labels in (2, 21) if quick else (2, 4, 8, 16, 21, 32, 64):
            cases.append(
                Case(
                    ("labels",),
                    model,
                    pixels=PAPER_PIXELS,
                    labels=labels,
                    rank=128,
                    kappa=1e3,
                    dtype="float32",
                    batch=1,
                    contenders=sweepers,
                )
            )
    return Plan(
        cases=_merged(cases),
        repeats=3 if quick else 5,
        budget_s=0.5 if quick else 1.0,
        meanfield=[(PAPER_SIDE, 5), (PAPER_SIDE, 10)] + ([] if quick else [(321, 5), (321, 10)]),
    )


def case_key(case: Case) -> tuple:
    """The configuration of a case: what the systems are, not who solves them."""
    return (case.model, case.pixels, case.labels, case.rank, case.kappa, case.dtype, case.batch)
