"""The vector updates of CG per array library.

The conjugate gradient loop (:func:`lowrank_gcrf.cg.cg_sweep`) updates three vectors per
iteration, ``x += αp``, ``r −= αq`` and ``p = r + βp``. Written as array-API expressions
each allocates temporaries and passes over memory several times; where the library allows,
they run in place instead:

* NumPy: in place with ``out=`` and one scratch vector;
* CuPy: one fused elementwise kernel for ``x, r`` and one for ``p`` (a single pass each);
* any other array-API library (torch, array-api-strict): the portable expressions.
"""

from __future__ import annotations

import functools
from typing import Any

import array_api_compat


class ArrayAPIKernels:
    """CG updates as portable array-API expressions (new arrays, inputs untouched).

    Attributes
    ----------
    xp : namespace
        The namespace for the loop's small per-system operations.
    """

    def __init__(self, xp: Any):
        self.xp = xp

    def inner(self, u: Any, v: Any) -> Any:
        """Per-system ``uᵀv`` over the trailing (k, n) axes."""
        xp = self.xp
        return xp.sum(xp.vecdot(u, v, axis=-1), axis=-1)

    def ratio(self, num: Any, den: Any, mask: Any) -> Any:
        """``num / den`` where ``mask``, else 0; a masked-out ``den`` may be 0 (a frozen
        system) without a division warning."""
        xp = self.xp
        zero = xp.zeros_like(num)
        return xp.where(mask, num / xp.where(mask, den, xp.ones_like(den)), zero)

    def own(self, a: Any) -> Any:
        """An array the updates may overwrite (here: ``a`` itself, never overwritten)."""
        return a

    def step(self, x: Any, r: Any, p: Any, q: Any, alpha: Any) -> tuple[Any, Any]:
        """``(x + αp, r − αq)``."""
        return x + alpha * p, r - alpha * q

    def direction(self, p: Any, r: Any, beta: Any) -> Any:
        """``r + βp``."""
        return r + beta * p


class NumpyKernels(ArrayAPIKernels):
    """CG updates in place on NumPy, with one scratch vector shaped like x."""

    def __init__(self, like: Any):
        import numpy as np

        # NumPy's own namespace (array-API compatible since NumPy 2) rather than the
        # array_api_compat wrapper: a few microseconds less per call, twenty calls per step.
        super().__init__(np)
        self._np = np
        self._scratch = np.empty_like(like)

    def inner(self, u: Any, v: Any) -> Any:
        return self._np.vecdot(u, v).sum(axis=-1)

    def ratio(self, num: Any, den: Any, mask: Any) -> Any:
        np = self._np
        return np.divide(num, den, out=np.zeros(np.shape(num), dtype=num.dtype), where=mask)

    def own(self, a: Any) -> Any:
        return self._np.array(a, copy=True, order="C")

    def step(self, x: Any, r: Any, p: Any, q: Any, alpha: Any) -> tuple[Any, Any]:
        np, t = self._np, self._scratch
        np.multiply(alpha, p, out=t)
        x += t
        np.multiply(alpha, q, out=t)
        r -= t
        return x, r

    def direction(self, p: Any, r: Any, beta: Any) -> Any:
        p *= beta
        p += r
        return p


class CupyKernels(ArrayAPIKernels):
    """CG updates as two fused CuPy elementwise kernels, in place."""

    def __init__(self, xp: Any):
        super().__init__(xp)
        self._step, self._direction = _cupy_kernels()

    def own(self, a: Any) -> Any:
        return self.xp.asarray(a, copy=True)

    def step(self, x: Any, r: Any, p: Any, q: Any, alpha: Any) -> tuple[Any, Any]:
        self._step(p, q, alpha, x, r)
        return x, r

    def direction(self, p: Any, r: Any, beta: Any) -> Any:
        self._direction(r, beta, p)
        return p


@functools.cache
def _cupy_kernels() -> tuple[Any, Any]:
    """The two kernels, compiled once per process (CuPy caches the binaries on disk)."""
    import cupy

    step = cupy.ElementwiseKernel(
        "T p, T q, T alpha",
        "T x, T r",
        "x += alpha * p; r -= alpha * q",
        "lowrank_gcrf_cg_step",
    )
    direction = cupy.ElementwiseKernel(
        "T r, T beta", "T p", "p = r + beta * p", "lowrank_gcrf_cg_direction"
    )
    return step, direction


def cg_kernels(xp: Any, like: Any) -> ArrayAPIKernels:
    """The CG update kernels for the namespace ``xp`` and vectors shaped like ``like``."""
    if array_api_compat.is_numpy_namespace(xp):
        return NumpyKernels(like)
    if array_api_compat.is_cupy_namespace(xp):
        return CupyKernels(xp)
    return ArrayAPIKernels(xp)
