"""Speed benchmark: ours vs SciPy CG, dense Cholesky, linear_operator, unrolled torch CG and
dense-CRF mean field, at the paper's sizes and in scaling sweeps; on a GPU, the paper's cases
and a batch sweep as time per image and achieved memory bandwidth.

    python -m benchmarks.speed                  # full CPU run, about 15 minutes on 2 cores
    python -m benchmarks.speed --quick          # a subset, under 2 minutes
    python -m benchmarks.speed --device cuda    # the GPU suite (CuPy and an NVIDIA GPU)

Results are written on purpose only. A full run publishes: the CPU run replaces
``benchmarks/results/speed.json``, the ``speed_*.png`` plots and the ``speed`` section of
``benchmarks/RESULTS.md``; the GPU run ``benchmarks/results/speed_cuda.json`` and the
``speed-cuda`` section. ``--quick`` and ``--report-only`` write to ``--out DIR`` (as
``DIR/RESULTS.md`` and ``DIR/results/``) or, without it, to a new temporary folder; so does
any run given ``--out``. The rest of RESULTS.md is kept.

Modules: :mod:`.cases` (suites and plans), :mod:`.problems` (systems with a controlled κ),
:mod:`.contenders`, :mod:`.measure` (devices, thread pools),
:mod:`.meanfield`, :mod:`.runner` (measuring a plan), :mod:`.records` (queries over the
results), :mod:`.targets` (the targets as data), :mod:`.tables`, :mod:`.plots`,
:mod:`.report` (the section and summary), :mod:`.cuda` (the GPU suite) and :mod:`.cli`;
timing, peak-memory meters and the machine's description come from :mod:`benchmarks`.
"""
