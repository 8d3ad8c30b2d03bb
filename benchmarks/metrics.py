"""Segmentation quality: the confusion matrix, mean IoU and the boundary F-score.

Mean IoU follows PASCAL VOC: per class TP / (TP + FP + FN) over every pixel of a split,
averaged over the classes present in the ground truth *or* the prediction. A class absent
from both has no IoU (0 / 0) and is left out; a class predicted where the truth has none
counts with IoU 0, so that spurious labels cost what they should.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: boundary F-score tolerance in pixels
BOUNDARY_TOLERANCE = 2


def confusion(predicted: np.ndarray, truth: np.ndarray, num_classes: int) -> np.ndarray:
    """The (truth, prediction) count matrix of label maps of any (equal) shape.

    Parameters
    ----------
    predicted, truth : ndarray of int
        Labels in ``[0, num_classes)``.
    num_classes : int

    Returns
    -------
    ndarray (num_classes, num_classes), int64
        ``counts[t, p]``: the pixels of true class t predicted as p.
    """
    index = truth.reshape(-1) * num_classes + predicted.reshape(-1)
    return np.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def mean_iou(counts: np.ndarray) -> float:
    """Mean over the classes with a non-empty union of TP / (TP + FP + FN), a fraction.

    Parameters
    ----------
    counts : ndarray (C, C)
        A :func:`confusion` matrix, usually summed over a split.
    """
    tp = np.diag(counts).astype(np.float64)
    union = counts.sum(axis=0) + counts.sum(axis=1) - tp
    present = union > 0
    return float(np.mean(tp[present] / union[present]))


def _boundary(labels: np.ndarray) -> np.ndarray:
    """Pixels whose right or lower neighbour has another label."""
    edge = np.zeros(labels.shape, dtype=bool)
    edge[:, :-1] |= labels[:, 1:] != labels[:, :-1]
    edge[:-1, :] |= labels[1:, :] != labels[:-1, :]
    return edge


def boundary_f(pred: np.ndarray, truth: np.ndarray, tol: int = BOUNDARY_TOLERANCE) -> float:
    """F-score of predicted against true boundary pixels, matched within ``tol`` pixels.

    Precision: fraction of predicted boundary pixels within ``tol`` (Euclidean) of a true
    one; recall the reverse. 1 when neither map has a boundary.
    """
    bp, bt = _boundary(pred), _boundary(truth)
    if not bp.any() and not bt.any():
        return 1.0
    if not bp.any() or not bt.any():
        return 0.0
    near_t = ndimage.distance_transform_edt(~bt) <= tol
    near_p = ndimage.distance_transform_edt(~bp) <= tol
    precision = float(near_t[bp].mean())
    recall = float(near_p[bt].mean())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)
