"""The refiners compared: ours (:func:`lowrank_gcrf.refine.refine`) and pydensecrf2's mean
field, each a function ``(probs (L, H, W) float32, image (3, H, W) uint8) → probs``.

Ours (defaults), with NumPy arrays: two mean-field passes whose appearance message is the
dense CRF's bilateral kernel filtered by the permutohedral lattice; beside it the previous
default (the same passes with the rank-D resolvent as the appearance message), the exact
Potts solve, and the exact solve with the exact smoothness kernel; and the PyTorch and
TensorFlow adapters' ``refine`` with their defaults (the lattice's passes) on CPU tensors,
for time only (their refinement is the core's, tested to float32 rounding)."""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from lowrank_gcrf.refine import refine
from lowrank_gcrf.refine_strength import expected_error, strength_from_error

from ..densecrf import mean_field

#: DeepLab's dense CRF: bilateral (appearance) sxy 80, srgb 13, weight 4; Gaussian sxy 3, w 3.
DEEPLAB = {"sxy": 80.0, "srgb": 13.0, "w_appearance": 4.0, "sxy_smooth": 3.0, "w_smooth": 3.0}
#: pydensecrf2 runs its tuning grid with 10 iterations (its better setting at DeepLab's
#: parameters); ours has no iteration count.
TUNED_MF_ITERATIONS = 10
MF5 = "pydensecrf2 MF-5 (DeepLab)"
MF10 = "pydensecrf2 MF-10 (DeepLab)"
MF_TUNED = f"pydensecrf2 MF-{TUNED_MF_ITERATIONS} (tuned)"
OURS = "ours (defaults)"
#: the passes with the appearance kernel in the rank-D embeddings (the Potts resolvent),
#: the default before the lattice's passes
LANDMARK_PASSES = {"appearance_kernel": "landmarks"}
OURS_LANDMARKS = "ours (landmarks' passes: the rank-D resolvent, the previous default)"
#: the passes with the appearance kernel by the permutohedral lattice (the default with
#: NumPy arrays, named explicitly for the validation candidates)
LATTICE_PASSES = {"appearance_kernel": "lattice"}
#: the exact Potts solve with the automatic strength
SOLVE = {"passes": 0}
OURS_SOLVE = "ours (exact solve, passes = 0)"
#: the option that holds the smoothness kernel exactly in the exact solve, DeepLab's weights
EXACT_SMOOTH = {"smooth_kernel": "exact", "w_smooth": 3.0, "passes": 0}
OURS_EXACT = "ours (exact solve, exact smoothness kernel, w_smooth = 3)"
#: our rows of the timing section, in its table's order
OURS_TIMED = (OURS, OURS_LANDMARKS, OURS_SOLVE, OURS_EXACT)
TORCH_REFINE = "ours, PyTorch adapter (defaults, CPU tensors)"
TF_REFINE = "ours, TensorFlow adapter (defaults, CPU tensors)"
#: the adapters' rows of the timing section, after ours
ADAPTERS_TIMED = (TORCH_REFINE, TF_REFINE)


def meanfield(probs: np.ndarray, image: np.ndarray, *, iterations: int, **params: Any) -> Any:
    """pydensecrf2 mean field with DeepLab's kernels, ``params`` overriding them."""
    return mean_field(probs, image.transpose(1, 2, 0), iterations=iterations, **DEEPLAB | params)


def ours(probs: np.ndarray, image: np.ndarray, **params: Any) -> Any:
    """:func:`lowrank_gcrf.refine.refine` with ``params``."""
    return refine(probs, image, **params)


#: what the machine block says of a framework that is not installed
NOT_INSTALLED = "not installed (its timing row is left out)"


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (the adapters' frameworks are optional here)."""
    return importlib.util.find_spec(module) is not None


@contextlib.contextmanager
def frameworks_at_one_thread() -> Iterator[dict[str, str]]:
    """PyTorch and TensorFlow, where installed, with one intra-op (and inter-op) thread
    inside the block; yields their versions and thread settings for the machine block.
    torch's pool is restored on exit; TensorFlow's can be set only before it first runs
    (a process where it already ran, as a test session, keeps and reports its own)."""
    info = {"torch": NOT_INSTALLED, "tensorflow": NOT_INSTALLED}
    previous = None
    if installed("torch"):
        import torch

        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        info["torch"] = f"{torch.__version__} (1 intra-op thread)"
    if installed("tensorflow"):
        import tensorflow as tf

        threading = tf.config.threading
        with contextlib.suppress(RuntimeError):
            threading.set_intra_op_parallelism_threads(1)
            threading.set_inter_op_parallelism_threads(1)
        pools = (
            threading.get_intra_op_parallelism_threads(),
            threading.get_inter_op_parallelism_threads(),
        )
        info["tensorflow"] = "{} ({} intra-op, {} inter-op thread; 0 = its default)".format(
            tf.__version__, *pools
        )
    try:
        yield info
    finally:
        if previous is not None:
            torch.set_num_threads(previous)


def adapter_calls(probs: np.ndarray, image: np.ndarray) -> dict[str, Callable[[], Any]]:
    """The installed adapters' ``refine`` with their defaults on CPU tensors made
    beforehand."""
    calls: dict[str, Callable[[], Any]] = {}
    if installed("torch"):
        import torch

        from lowrank_gcrf.adapters.torch import refine as torch_refine

        tp, ti = torch.from_numpy(probs), torch.from_numpy(image)
        calls[TORCH_REFINE] = lambda: torch_refine(tp, ti)
    if installed("tensorflow"):
        import tensorflow as tf

        from lowrank_gcrf.adapters.tensorflow import refine as tf_refine

        fp, fi = tf.constant(probs), tf.constant(image)
        calls[TF_REFINE] = lambda: tf_refine(fp, fi)
    return calls


def timed(row: dict[str, Any]) -> list[str]:
    """Our timed methods that a timing row holds (an adapter not installed has none)."""
    return [name for name in OURS_TIMED + ADAPTERS_TIMED if name in row]


def rule_strength(probs: np.ndarray, gain: float) -> float:
    """The automatic strength rule with the constant ``gain`` in place of its default
    (:mod:`lowrank_gcrf.refine_strength`), for one image's probabilities (L, H, W)."""
    scores = probs.reshape(1, probs.shape[0], -1)
    error = expected_error(np, scores, logits=False)
    return float(strength_from_error(np, error, gain=gain)[0])


def ours_rule(probs: np.ndarray, image: np.ndarray, *, gain: float, **params: Any) -> Any:
    """Ours, the exact solve, with the strength of the automatic rule at constant ``gain``."""
    return refine(probs, image, strength=rule_strength(probs, gain), **SOLVE | params)
