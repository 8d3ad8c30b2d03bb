"""Importing torchvision next to a torch it was not built for.

PyPI's torchvision wheels are built against the CUDA torch; next to a CPU-only torch their
C++ operators fail to load and ``import torchvision`` stops while registering a fake kernel
for ``torchvision::nms``, the one registration it makes without checking that the operators
loaded. The segmentation models are plain Python and call none of those operators, so
declaring the two schemas it registers lets the import finish.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

import torch

#: torch.library fragments that must outlive the import: a fragment's schemas are
#: unregistered when it is garbage collected
_SCHEMAS: list[torch.library.Library] = []


def import_torchvision() -> ModuleType:
    """torchvision, also where its compiled operators were built for another torch.

    Returns
    -------
    module
        ``torchvision``.

    Raises
    ------
    ImportError
        torchvision is not installed.
    """
    try:
        return importlib.import_module("torchvision")
    except RuntimeError as error:
        if "torchvision::nms" not in str(error):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    if not _SCHEMAS:
        schemas = torch.library.Library("torchvision", "DEF")
        for op in ("nms", "qnms"):
            schemas.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _SCHEMAS.append(schemas)
    return importlib.import_module("torchvision")
