"""Does ``GCRFHead`` with its defaults make a real segmentation network better?

    python -m benchmarks.heads            # full run, about 25 minutes on 2 cores; publishes
    python -m benchmarks.heads --quick    # smoke run of every network and variant, < 1 minute

Networks (``weights=None``, trained from scratch): torchvision's LR-ASPP MobileNetV3-Large
and DeepLabV3 MobileNetV3-Large, the CRF on their stride-8 features, and a Keras
MobileNetV3Small trunk with the Keras head. Variants: the network as is, the control (the
head's unary 1×1 convolution alone), the null (the control initialised from another seed:
the noise floor) and ``GCRFHead`` with every default for the Potts, general and signed
models. Optimizers: SGD (momentum 0.9) at two learning rates and Adam; three seeds. Data:
composites of real photographs with exact masks (:mod:`.scenes`), test content unseen in
training. Evaluation: BatchNorm statistics re-estimated on training scenes, then test mIoU.

Budget of the full run (one thread per run, two runs side by side). One training step
of 8 scenes of 64×64 took 0.13 s (LR-ASPP), 0.30 s (DeepLabV3) and 0.035 s (Keras, after
about 8 s of tracing per run) on the reference machine with its other load low; building,
re-estimating BatchNorm and testing add about 1.5 s (3 s for DeepLabV3) per run. The steps
per network (120, 60, 240) give each network a similar share: LR-ASPP 54 runs × 120 ×
0.13 s ≈ 840 s, DeepLabV3 54 × 60 × 0.30 s ≈ 970 s, Keras 45 × (240 × 0.035 s + 8 s) ≈
740 s, plus about 310 s of building and testing: about 2860 CPU-seconds, 24 minutes on two
cores. Other load on the machine stretches this (one seed took 10 minutes with other jobs
keeping the load average near 2): each run reports its median step time and the RESULTS.md
section the wall time.

Modules, one idea each: :mod:`.config` (configuration, networks, variants, optimizers,
jobs), :mod:`.scenes`, :mod:`.torch_networks`, :mod:`.torch_job` and :mod:`.keras_job` (one
run each), :mod:`.head_state` (λ and strength as floats), :mod:`.records` (what a run
reports), :mod:`.jobs` (worker processes), :mod:`.summary` (over seeds, noise floor,
targets), :mod:`.oracles` (what ground-truth embeddings on the control's unaries would add),
:mod:`.figures` (loss curves), :mod:`.report` (tables) and :mod:`.cli` (the driver);
:mod:`.torchvision_import` imports torchvision next to a CPU-only torch.

Results are written on purpose only: the full default run replaces the ``heads`` section
of ``benchmarks/RESULTS.md``, ``benchmarks/results/heads.json`` and
``heads_losses.png``; ``--quick`` and every other configuration write to ``--out DIR`` or a
new temporary folder (:mod:`benchmarks.results_writer`).
"""
