"""Explicit device→host reads.

:func:`to_host` is the one place where the solver reads a value back from the device (a
convergence flag, an iteration count), explicitly, so that CuPy's transfer guard can forbid
every implicit transfer.
"""

from __future__ import annotations

from typing import Any

import array_api_compat


def to_host(xp: Any, a: Any) -> Any:
    """``a`` readable by ``bool``, ``int`` and ``float`` (or by NumPy) without an implicit
    transfer: on CuPy an explicit copy to a NumPy array, elsewhere ``a`` itself. Mostly a
    small array; ``refine`` copies a CuPy image with it to build its lattice, as the
    adapters' refine copies a device tensor's."""
    if array_api_compat.is_cupy_namespace(xp):
        return a.get()
    return a
