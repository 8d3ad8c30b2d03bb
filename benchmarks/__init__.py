"""The benchmark jobs and what they share.

Jobs: :mod:`benchmarks.speed` (with :mod:`benchmarks.speed.iteration`),
:mod:`benchmarks.reproduce` and :mod:`benchmarks.refine`. Shared by them:
:mod:`benchmarks.machine` (where a run ran), :mod:`benchmarks.timing`,
:mod:`benchmarks.memory` (peak memory meters), :mod:`benchmarks.metrics` (segmentation
quality), :mod:`benchmarks.densecrf` (the pydensecrf2 contender),
:mod:`benchmarks.paper_sizes` and :mod:`benchmarks.results_writer` (where results go; the
one writer of ``benchmarks/RESULTS.md``, the home of every measured figure).
"""
