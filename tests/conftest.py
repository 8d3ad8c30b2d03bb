"""Shared fixtures: the array libraries the core runs under, and hypothesis settings."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default",
    max_examples=int(os.environ.get("GCRF_HYPOTHESIS_EXAMPLES", "20")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.differing_executors],
)
settings.load_profile("default")


class Namespace:
    """Converts NumPy test data into one array library and results back to NumPy."""

    def __init__(self, name: str):
        self.name = name
        if name == "numpy":
            self.xp = np
        else:
            self.xp = pytest.importorskip(name)

    def __call__(self, a):
        """``a`` (NumPy array, or a pass-through scalar) in this library."""
        if isinstance(a, np.ndarray):
            return a if self.xp is np else self.xp.asarray(a)
        return a

    def numpy(self, a) -> np.ndarray:
        if isinstance(a, (np.ndarray, np.generic)):
            return np.asarray(a)
        return np.from_dlpack(a)

    def __repr__(self) -> str:
        return self.name


@pytest.fixture(params=["numpy", "array_api_strict"])
def ns(request) -> Namespace:
    """Run a core test under NumPy and under array-api-strict (the portable subset)."""
    return Namespace(request.param)
