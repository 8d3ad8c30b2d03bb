"""What a reproduction run depends on: its configuration and the compared variants."""

from __future__ import annotations

from dataclasses import dataclass

from .scenes import KINDS

#: the datasets' names in tables and figures
DATASET_NAMES = {"digits": "DigitScenes", "consensus": "ConsensusScenes", "tied": "TiedScenes"}
#: output stride of both networks and of the G-CRF (justified in
#: :class:`~benchmarks.reproduce.networks.SegmentationNet`)
STRIDE = 2
#: initial scale of the embedding layer's weights (see
#: :func:`~benchmarks.reproduce.networks.shrink_last_layer`)
EMBEDDING_INIT = 0.1
#: the variants every G-CRF variant is compared with
BASELINES = ("unary", "control")
#: the G-CRF models compared: the paper's two, the attractive model λI − ΓᵀΓ (label-dependent
#: embeddings that amplify) and the signed model λI + AᵀA − ΓᵀΓ that contains them all
GCRF_KINDS = ("general", "potts", "attractive", "signed")


@dataclass(frozen=True)
class Config:
    """Everything a run depends on (with the seeds, it determines the results).

    Attributes
    ----------
    seeds : tuple of int
        Training seeds (network initialisation and batch order); the scenes are fixed.
    datasets : tuple of str
        Subset of :data:`benchmarks.reproduce.scenes.KINDS`.
    train_scenes, test_scenes : int
        Scenes generated per dataset (test scenes use unseen digit sprites).
    scene_seed : int
        Seed of the scene generator.
    steps : tuple of int
        Optimiser steps of the three phases (unary; pairwise; joint).
    batch : int
        Scenes per step.
    lr : float
        Adam learning rate of phases 1–2 (polynomially decayed, power 0.9, as in the paper).
    joint_lr_factor : float
        Phase-3 learning rate relative to ``lr`` (the paper: 2.5e-4 / 1e-3).
    width : int
        Channels of the unary and embedding networks.
    general_dims, potts_dims : tuple of int
        Embedding dimensions D swept for the general and the Potts G-CRF.
    attractive_dims : tuple of int
        Dimensions E of the attractive embeddings Γ (E, L, h, w) swept.
    signed_dims : tuple of int
        The signed model's dimensions, D = E (repulsive and attractive alike).
    lam : float
        λ of the G-CRF.
    potts_margin : float
        ρ < 1: Potts (and attractive) embeddings are rescaled so that ‖Â‖₂² < ρλ
        (‖Γ‖₂² < ρλ): positive definite.
    general_kappa : float
        General embeddings are rescaled so that κ = 1 + ‖A‖₂²/λ < ``general_kappa``.
    signed_kappa : float
        The same bound on the signed model's repulsive embeddings A. Tighter than the
        general model's: λI + AᵀA can outweigh the attractive term, whose gain is capped by
        ‖Γ‖₂² < ρλ, wherever both act (docs/reproduction.md).
    solver_rtol : float
        Relative residual of the G-CRF solves; float32 certifies no less than about ε·κ
        (docs/maths.md, accuracy), so 1e-4 with κ ≤ 100, ample for training.
    background_weight : float
        Cross-entropy weight of the background class (the digit classes have weight 1):
        mIoU weighs every class equally while 95% of the pixels are background.
    timing_repeats : int
        Repeats of each per-image timing (the median is reported).
    figure_scenes : int
        Test scenes shown in the qualitative figure, per dataset.
    """

    seeds: tuple[int, ...] = (0, 1, 2)
    datasets: tuple[str, ...] = KINDS
    train_scenes: int = 2000
    test_scenes: int = 400
    scene_seed: int = 0
    steps: tuple[int, int, int] = (1600, 300, 200)
    batch: int = 8
    lr: float = 1e-2
    joint_lr_factor: float = 0.25
    width: int = 32
    general_dims: tuple[int, ...] = (16,)
    potts_dims: tuple[int, ...] = (16,)
    attractive_dims: tuple[int, ...] = (4, 16)
    signed_dims: tuple[int, ...] = (16,)
    lam: float = 1.0
    potts_margin: float = 0.9
    general_kappa: float = 100.0
    signed_kappa: float = 2.0
    solver_rtol: float = 1e-4
    background_weight: float = 0.1
    timing_repeats: int = 20
    figure_scenes: int = 4


#: the configuration of the published results
DEFAULT = Config()

#: the ``--quick`` smoke configuration: tiny, one seed, every variant end to end
QUICK = Config(
    seeds=(0,),
    train_scenes=48,
    test_scenes=16,
    steps=(6, 3, 3),
    batch=8,
    width=8,
    general_dims=(2,),
    potts_dims=(4,),
    attractive_dims=(2,),
    signed_dims=(2,),
    timing_repeats=2,
    figure_scenes=2,
)


@dataclass(frozen=True)
class Variant:
    """One compared model: ``kind`` in {"unary", "control"} or :data:`GCRF_KINDS`."""

    kind: str
    dim: int = 0

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.dim}" if self.dim else self.kind


def variants(config: Config) -> list[Variant]:
    """The compared models, baselines first."""
    return [
        Variant("unary"),
        Variant("control"),
        *(Variant("general", d) for d in config.general_dims),
        *(Variant("potts", d) for d in config.potts_dims),
        *(Variant("attractive", d) for d in config.attractive_dims),
        *(Variant("signed", d) for d in config.signed_dims),
    ]
