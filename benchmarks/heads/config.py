"""What a run of the head benchmark depends on: the configuration, the compared networks,
variants and optimizers, and the jobs they make."""

from __future__ import annotations

from dataclasses import dataclass

#: the networks: two torchvision segmentation networks and a Keras one
NETWORKS = ("lraspp", "deeplabv3", "keras")
NETWORK_NAMES = {
    "lraspp": "LR-ASPP MobileNetV3-Large (torchvision)",
    "deeplabv3": "DeepLabV3 MobileNetV3-Large (torchvision)",
    "keras": "MobileNetV3Small trunk (keras.applications)",
}
#: ``as-is``: the network's own segmentation head; ``control``: the head's unary branch
#: alone (a 1×1 convolution, no CRF); ``null``: the control with another initialisation of
#: that convolution (the noise floor); the others: ``GCRFHead`` with every default but the
#: model
VARIANTS = ("as-is", "control", "null", "potts", "general", "signed")
#: the variants that are a ``GCRFHead``, and its ``model`` argument
HEAD_MODELS = ("potts", "general", "signed")
#: optimizer name → (kind, learning rate); SGD has momentum 0.9, nothing has weight decay
OPTIMIZERS = {
    "sgd-0.05": ("sgd", 0.05),
    "sgd-0.01": ("sgd", 0.01),
    "adam-1e-3": ("adam", 1e-3),
}


@dataclass(frozen=True)
class Config:
    """Everything a run depends on (with the library's code, it determines the results).

    Attributes
    ----------
    networks, variants, optimizers : tuple of str
        Subsets of :data:`NETWORKS`, :data:`VARIANTS` and :data:`OPTIMIZERS`.
    seeds : tuple of int
        Training seeds: a seed fixes the network's initialisation (the same trunk for every
        variant, the same unary convolution for the control and every head) and the batch
        order; the scenes do not depend on it.
    side : int
        Side of the square scenes in pixels (the CRF runs on (side / 8)² nodes).
    train_images, test_images : int
        Scenes per split (disjoint content, :mod:`.scenes`).
    steps : tuple of (str, int)
        Optimizer steps per network: each network gets a similar share of the time budget
        (:mod:`benchmarks.heads`), comparisons are within a network.
    batch : int
        Scenes per step.
    bn_images : int
        Training scenes over which the BatchNorm statistics are re-estimated before testing.
    workers : int
        Worker processes, one torch (and TensorFlow) thread each.
    keras_graph : bool
        Keras steps run as a ``tf.function``: about 35 ms a step instead of several times
        that eagerly, after a tracing of about 8 s per run (one thread) that a smoke run
        of two steps cannot repay.
    scene_seed : int
        Seed of the scene generator.
    """

    networks: tuple[str, ...] = NETWORKS
    variants: tuple[str, ...] = VARIANTS
    optimizers: tuple[str, ...] = tuple(OPTIMIZERS)
    seeds: tuple[int, ...] = (0, 1, 2)
    side: int = 64
    train_images: int = 256
    test_images: int = 256
    steps: tuple[tuple[str, int], ...] = (("lraspp", 120), ("deeplabv3", 60), ("keras", 240))
    batch: int = 8
    bn_images: int = 128
    workers: int = 2
    keras_graph: bool = True
    scene_seed: int = 0

    def steps_of(self, network: str) -> int:
        """The optimizer steps of ``network``'s runs."""
        return dict(self.steps)[network]


#: the configuration of the published results (budget: benchmarks/heads/__init__.py)
DEFAULT = Config()

#: the ``--quick`` smoke configuration: every network and variant end to end, one optimizer
#: (the others differ by a constructor only)
QUICK = Config(
    optimizers=("sgd-0.05",),
    seeds=(0,),
    side=32,
    train_images=16,
    test_images=8,
    steps=tuple((network, 2) for network in NETWORKS),
    batch=4,
    bn_images=8,
    keras_graph=False,
)


@dataclass(frozen=True)
class Job:
    """One training run: a network, a variant, an optimizer and a seed."""

    network: str
    variant: str
    optimizer: str
    seed: int


def jobs(config: Config) -> list[Job]:
    """Every run of ``config``; the Keras network has no ``as-is`` variant
    (keras.applications ships classifiers, not segmentation networks)."""
    return [
        Job(network, variant, optimizer, seed)
        for network in config.networks
        for optimizer in config.optimizers
        for seed in config.seeds
        for variant in config.variants
        if not (network == "keras" and variant == "as-is")
    ]
