"""Reproduce the paper's claims end to end on generated scenes.

    python -m benchmarks.reproduce            # full job; its RESULTS.md section gives its time
    python -m benchmarks.reproduce --quick    # smoke run of every variant, under 2 minutes

A unary network, a parameter-matched control branch and the dense general and Potts G-CRFs
(Chandra, Usunier, Kokkinos, ICCV 2017; Tables 2–3, Figs. 3–5, Sec. 3.4), with the
attractive and signed G-CRFs, are trained with the paper's three-phase schedule on
DigitScenes, ConsensusScenes and TiedScenes and compared on held-out scenes;
docs/reproduction.md explains the setup and the results.

Modules, one idea each: :mod:`.config` (the configuration and the variants), :mod:`.scenes`
(the generated datasets), :mod:`.networks`, :mod:`.training`, :mod:`.evaluation` (mIoU,
timings, the summary over seeds), :mod:`.oracles` (pooling oracles: ground-truth embeddings),
:mod:`.figures`, :mod:`.report` (the RESULTS.md section) and :mod:`.cli` (the driver).

Results are written on purpose only: the full default run replaces the ``reproduce``
section of ``benchmarks/RESULTS.md``, ``benchmarks/results/reproduce.json`` and the
``reproduce_*.png`` figures; ``--quick`` and every other configuration write to ``--out DIR``
or a new temporary folder (:mod:`benchmarks.results_writer`).
"""
