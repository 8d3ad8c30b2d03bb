"""Segmentation scenes with exact ground truth, built from real image content shipped with
scikit-image and scikit-learn (nothing is downloaded).

Real object shapes are filled with tinted crops of real grayscale photographs and textures and
pasted over crops of real colour photographs; later objects occlude earlier ones, and the
ground truth is the label of the top object at every pixel. Labels: 0 background, 1–5 the
objects' classes (drawn at random: the refiners are Potts models, blind to what a class is).

The two splits share **no** source: validation (on which defaults are chosen) and test (on
which they are judged) use different photographs, fills and object shapes, so that test scores
measure content the defaults were never tuned on.

* validation: photographs ``astronaut``, ``coffee``, ``rocket``; fills ``brick``, ``grass``,
  ``camera``; shapes the scikit-image horse silhouette and scikit-learn's handwritten digits;
* test: photographs ``chelsea`` and scikit-learn's ``china`` and ``flower``; fills ``gravel``,
  ``moon``, ``clock``; shapes the coins of ``skimage.data.coins``, the printed glyphs of
  ``skimage.data.page`` and blobs of ``skimage.data.binary_blobs``.

Unaries simulate a segmentation network:

* ``coarse``: a stride-8 network's blurry but correct softmax: the one-hot truth average-pooled
  to stride 8, confident logits ``8 · fraction`` with a little noise per cell, softmax,
  bilinear upsampling to full resolution (its errors are at the objects' boundaries);
* ``noisy``: 30 % of the pixels show a wrong label at probability 0.7, the others the right
  one at 0.7 (the rest spread evenly): independent label noise of a constant confidence.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from functools import cache

import numpy as np
from scipy import ndimage
from skimage import data as skdata
from skimage import filters, measure
from skimage.transform import resize
from sklearn.datasets import load_digits, load_sample_image

NUM_CLASSES = 6
SPLITS = ("val", "test")
UNARIES = ("coarse", "noisy")
#: the scene size (height, width) of the published run
SHAPE = (300, 400)
PHOTOS = {"val": ("astronaut", "coffee", "rocket"), "test": ("chelsea", "china", "flower")}
FILLS = {"val": ("brick", "grass", "camera"), "test": ("gravel", "moon", "clock")}
SHAPES = {"val": ("horse", "digit"), "test": ("coin", "glyph", "blob")}
#: output stride of the simulated network behind the coarse unary
STRIDE = 8
#: confidence (logit per unit class fraction) and logit noise per stride-8 cell, coarse unary
COARSE_LOGIT = 8.0
COARSE_NOISE = 0.5
#: fraction of pixels with a wrong label, and the probability every pixel's shown label gets
NOISY_WRONG = 0.3
NOISY_CONFIDENCE = 0.7


@dataclass(frozen=True)
class Scene:
    """One image (3, H, W) uint8, its labels (H, W) and both unaries (L, H, W) float32."""

    image: np.ndarray
    labels: np.ndarray
    unaries: dict[str, np.ndarray]


def _components(mask: np.ndarray, min_area: int) -> list[np.ndarray]:
    """The masks of the connected components of ``mask`` with at least ``min_area`` pixels
    that do not touch its border (a cut shape is not a shape)."""
    h, w = mask.shape
    return [
        r.image
        for r in measure.regionprops(measure.label(mask))
        if r.area >= min_area
        and r.bbox[0] > 0
        and r.bbox[1] > 0
        and r.bbox[2] < h
        and r.bbox[3] < w
    ]


def threshold_mask(gray: np.ndarray) -> np.ndarray:
    """What stands out of a grey photograph (uint8): its Otsu threshold, opened and with its
    holes filled (boolean, the photograph's shape)."""
    return ndimage.binary_fill_holes(
        ndimage.binary_opening(gray > filters.threshold_otsu(gray), iterations=2)
    )


@cache
def _shapes(kind: str) -> list[np.ndarray]:
    """Boolean masks of one kind of object shape."""
    if kind == "horse":
        horse = ~skdata.horse()
        return [horse, horse[:, ::-1]]
    if kind == "digit":
        digits = load_digits()
        return [image / 16.0 > 0.35 for image in digits.images[:200]]
    if kind == "coin":
        return [m for m in _components(threshold_mask(skdata.coins()), 800) if m.sum() <= 3500]
    if kind == "glyph":
        page = skdata.page()
        ink = page < filters.threshold_local(page, 35, offset=10)
        return [m for m in _components(ink, 60) if 12 <= m.shape[0] <= 40 and m.shape[1] <= 40]
    blobs = skdata.binary_blobs(length=512, blob_size_fraction=0.12, volume_fraction=0.3, rng=1)
    return _components(blobs, 400)


def _object(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask of one object of ``kind`` with its longer side ``size`` pixels."""
    candidates = _shapes(kind)
    shape = candidates[rng.integers(len(candidates))].astype(np.float64)
    h, w = shape.shape
    scale = size / max(h, w)
    out_shape = (max(2, round(h * scale)), max(2, round(w * scale)))
    return resize(shape, out_shape, order=1) > 0.5


@cache
def _image(name: str) -> np.ndarray:
    """A scikit-image or scikit-learn sample image (grayscale or RGB) in [0, 1], float64."""
    if name in ("china", "flower"):
        return load_sample_image(f"{name}.jpg").astype(np.float64) / 255.0
    return getattr(skdata, name)().astype(np.float64) / 255.0


def _crop(a: np.ndarray, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A random crop of ``a`` with the aspect ratio of ``shape``, rescaled to it."""
    h, w = a.shape[:2]
    aspect = shape[1] / shape[0]
    ch = int(rng.integers(min(h, w / aspect) // 2, min(h, w / aspect) + 1))
    cw = max(1, round(ch * aspect))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return resize(a[y : y + ch, x : x + cw], shape, order=1)


def _fill(split: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A tinted crop of one of the split's grayscale fills, (h, w, 3) in [0, 1]."""
    names = FILLS[split]
    gray = _crop(_image(names[rng.integers(len(names))]), (h, w), rng)
    tint = np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.3, 1.0), 1.0))
    contrast = rng.uniform(0.4, 1.0)
    base = rng.uniform(0.1, 0.6)
    return np.clip((base + contrast * (gray - gray.mean()) + 0.4 * gray)[..., None] * tint, 0, 1)


def make_scene(split: str, shape: tuple[int, int], seed: int) -> Scene:
    """One scene of ``shape`` (height, width) pixels from ``split`` ("val" or "test")."""
    rng = np.random.default_rng([seed, *shape, SPLITS.index(split)])
    height, width = shape
    side = min(shape)
    photos = PHOTOS[split]
    image = _crop(_image(photos[rng.integers(len(photos))]), shape, rng)
    labels = np.zeros(shape, dtype=np.int64)
    kinds = SHAPES[split]
    for _ in range(int(rng.integers(3, 7))):
        kind = kinds[rng.integers(len(kinds))]
        large = kind in ("horse", "blob")
        size = int(side * (rng.uniform(0.45, 0.8) if large else rng.uniform(0.15, 0.4)))
        mask = _object(kind, size, rng)
        h, w = mask.shape
        y = int(rng.integers(-h // 4, height - 3 * h // 4))
        x = int(rng.integers(-w // 4, width - 3 * w // 4))
        ys, xs = slice(max(y, 0), min(y + h, height)), slice(max(x, 0), min(x + w, width))
        m = mask[ys.start - y : ys.stop - y, xs.start - x : xs.stop - x]
        fill = _fill(split, m.shape[0], m.shape[1], rng)
        image[ys, xs][m] = fill[m]
        labels[ys, xs][m] = int(rng.integers(1, NUM_CLASSES))
    image = np.clip(image + rng.normal(0.0, 0.01, image.shape), 0.0, 1.0)
    image8 = np.ascontiguousarray((image * 255).round().astype(np.uint8).transpose(2, 0, 1))
    unaries = {"coarse": coarse_unary(labels, rng), "noisy": noisy_unary(labels, rng)}
    return Scene(image=image8, labels=labels, unaries=unaries)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


def coarse_unary(
    labels: np.ndarray, rng: np.random.Generator, num_classes: int = NUM_CLASSES
) -> np.ndarray:
    """Stride-8 class fractions → confident logits → softmax → bilinear upsampling, over
    ``num_classes`` labels."""
    height, width = labels.shape
    cells = (-(-height // STRIDE), -(-width // STRIDE))
    padded_shape = (cells[0] * STRIDE, cells[1] * STRIDE)
    onehot = np.zeros((num_classes, *padded_shape))
    padded = np.pad(labels, ((0, padded_shape[0] - height), (0, padded_shape[1] - width)), "edge")
    np.put_along_axis(onehot, padded[None], 1.0, axis=0)
    fractions = onehot.reshape(num_classes, cells[0], STRIDE, cells[1], STRIDE).mean(axis=(2, 4))
    logits = COARSE_LOGIT * fractions + rng.normal(0.0, COARSE_NOISE, fractions.shape)
    # Bilinear upsampling of stride-8 cell centres to pixel centres.
    up = resize(_softmax(logits), (num_classes, *padded_shape), order=1, mode="edge")
    up = up[:, :height, :width]
    return (up / up.sum(axis=0, keepdims=True)).astype(np.float32)


def noisy_unary(
    labels: np.ndarray, rng: np.random.Generator, num_classes: int = NUM_CLASSES
) -> np.ndarray:
    """Each pixel shows one of ``num_classes`` labels at :data:`NOISY_CONFIDENCE`, a wrong one
    (drawn evenly among the others) for :data:`NOISY_WRONG` of the pixels."""
    wrong = rng.random(labels.shape) < NOISY_WRONG
    shift = rng.integers(1, num_classes, labels.shape)
    shown = np.where(wrong, (labels + shift) % num_classes, labels)
    rest = (1.0 - NOISY_CONFIDENCE) / (num_classes - 1)
    probs = np.full((num_classes, *labels.shape), rest)
    np.put_along_axis(probs, shown[None], NOISY_CONFIDENCE, axis=0)
    return probs.astype(np.float32)


def make_scenes(split: str, shape: tuple[int, int], count: int, seed: int = 0) -> list[Scene]:
    """``count`` scenes of ``split`` with seeds ``seed, seed + 1, ...``."""
    return [make_scene(split, shape, seed + i) for i in range(count)]
