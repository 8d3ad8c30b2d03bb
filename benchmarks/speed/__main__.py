"""``python -m benchmarks.speed``: see :mod:`benchmarks.speed.cli`."""

import sys

from .cli import main

sys.exit(main())
