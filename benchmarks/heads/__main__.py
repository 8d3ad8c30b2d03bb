"""``python -m benchmarks.heads``: see :mod:`benchmarks.heads`."""

from .cli import main

if __name__ == "__main__":
    main()
