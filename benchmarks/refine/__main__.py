"""``python -m benchmarks.refine``: see :mod:`benchmarks.refine.job`."""

from .job import main

main()
