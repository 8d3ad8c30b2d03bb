"""Segmentation scenes with exact ground truth, built from real image content shipped with
scikit-image and scikit-learn (nothing is downloaded).

Real object shapes — the scikit-image horse silhouette, the coins of ``skimage.data.coins``
(Otsu threshold, one mask per coin) and the handwritten digits of
``sklearn.datasets.load_digits`` (8×8 sprites upsampled and thresholded) — are filled with
real textures (``brick``, ``grass``, ``gravel``, ``camera``, ``moon``, tinted in a random
colour) and pasted over crops of real photographs (``astronaut``, ``coffee``, ``chelsea``,
``rocket``). Later objects occlude earlier ones; the ground truth is the label of the top
object at every pixel. Labels: 0 background, 1 horse, 2 coin, 3–12 the digits 0–9.

The validation and test splits draw from disjoint halves of every photograph, texture and
shape collection (left/right halves of images, alternate coins and digit sprites), so test
scores are on unseen content.

Unaries simulate a segmentation network:

* ``coarse``: the one-hot ground truth average-pooled to stride 8 (what a stride-8 network
  can see), turned into confident logits with Gaussian noise per coarse cell (label
  confusions included), softmax, and bilinear upsampling to full resolution;
* ``noisy``: per-pixel logits ``3·onehot + N(0, σ²)``: independent label noise.
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
from sklearn.datasets import load_digits

NUM_CLASSES = 13
SPLITS = ("val", "test")
UNARIES = ("coarse", "noisy")
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
TEXTURES = ("brick", "grass", "gravel", "camera", "moon")
#: output stride of the simulated network behind the coarse unary
STRIDE = 8
#: logit noise of the coarse unary (per stride-8 cell) and of the noisy unary (per pixel)
COARSE_NOISE = 1.2
PIXEL_NOISE = 1.5


@dataclass(frozen=True)
class Scene:
    """One image (3, H, W) uint8, its labels (H, W) and both unaries (L, H, W) float32."""

    image: np.ndarray
    labels: np.ndarray
    unaries: dict[str, np.ndarray]


def _half(a: np.ndarray, split: str) -> np.ndarray:
    """The left half of an image for validation, the right half for test."""
    w = a.shape[1]
    return a[:, : w // 2] if split == "val" else a[:, w // 2 :]


@cache
def _shapes() -> dict[str, list[np.ndarray]]:
    """Boolean masks per object kind, ``"<kind>:<split>"`` → list."""
    horse = ~skdata.horse()
    coins = skdata.coins()
    mask = ndimage.binary_fill_holes(
        ndimage.binary_opening(coins > filters.threshold_otsu(coins), iterations=2)
    )
    regions = [r for r in measure.regionprops(measure.label(mask)) if 800 <= r.area <= 3500]
    coin_masks = [r.image for r in regions]
    digits = load_digits()
    out: dict[str, list[np.ndarray]] = {}
    for split, parity in (("val", 0), ("test", 1)):
        out[f"horse:{split}"] = [horse[:, ::-1] if split == "test" else horse]
        out[f"coin:{split}"] = coin_masks[parity::2]
        for d in range(10):
            sprites = digits.images[digits.target == d][parity::2]
            out[f"digit{d}:{split}"] = list(sprites[:40])
    return out


def _object(kind: str, split: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask of one object of ``kind`` with its longer side ``size`` pixels."""
    candidates = _shapes()[f"{kind}:{split}"]
    shape = candidates[rng.integers(len(candidates))]
    h, w = shape.shape
    scale = size / max(h, w)
    out_shape = (max(2, round(h * scale)), max(2, round(w * scale)))
    if kind.startswith("digit"):
        return resize(shape / 16.0, out_shape, order=3) > 0.35
    return resize(shape.astype(float), out_shape, order=1) > 0.5


@cache
def _image(name: str) -> np.ndarray:
    """A scikit-image sample image (grayscale or RGB) in [0, 1], float64."""
    return getattr(skdata, name)().astype(np.float64) / 255.0


def _crop(a: np.ndarray, side: int, rng: np.random.Generator) -> np.ndarray:
    """A random square crop, rescaled to ``side`` pixels."""
    h, w = a.shape[:2]
    c = int(rng.integers(min(h, w) // 2, min(h, w) + 1))
    y, x = int(rng.integers(0, h - c + 1)), int(rng.integers(0, w - c + 1))
    return resize(a[y : y + c, x : x + c], (side, side), order=1)


def _texture(split: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A tinted crop of a real grayscale texture, (h, w, 3) in [0, 1]."""
    gray = _half(_image(TEXTURES[rng.integers(len(TEXTURES))]), split)
    patch = resize(_crop(gray, max(h, w), rng), (h, w), order=1)
    tint = np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.3, 1.0), 1.0))
    contrast = rng.uniform(0.4, 1.0)
    base = rng.uniform(0.1, 0.6)
    return np.clip(
        (base + contrast * (patch - patch.mean()) + 0.4 * patch)[..., None] * tint, 0.0, 1.0
    )


def make_scene(split: str, side: int, seed: int) -> Scene:
    """One scene of ``side`` × ``side`` pixels from ``split`` ("val" or "test")."""
    rng = np.random.default_rng([seed, side, SPLITS.index(split)])
    image = _crop(_half(_image(PHOTOS[rng.integers(len(PHOTOS))]), split), side, rng)
    labels = np.zeros((side, side), dtype=np.int64)
    kinds = ["horse", "coin", *(f"digit{d}" for d in range(10))]
    for _ in range(int(rng.integers(3, 7))):
        k = int(rng.integers(len(kinds)))
        kind = kinds[k]
        size = int(
            side * rng.uniform(0.45, 0.8) if kind == "horse" else side * rng.uniform(0.15, 0.4)
        )
        mask = _object(kind, split, size, rng)
        h, w = mask.shape
        y = int(rng.integers(-h // 4, side - 3 * h // 4))
        x = int(rng.integers(-w // 4, side - 3 * w // 4))
        ys, xs = slice(max(y, 0), min(y + h, side)), slice(max(x, 0), min(x + w, side))
        m = mask[ys.start - y : ys.stop - y, xs.start - x : xs.stop - x]
        fill = _texture(split, m.shape[0], m.shape[1], rng)
        image[ys, xs][m] = fill[m]
        labels[ys, xs][m] = k + 1
    image = np.clip(image + rng.normal(0.0, 0.01, image.shape), 0.0, 1.0)
    image8 = np.ascontiguousarray((image * 255).round().astype(np.uint8).transpose(2, 0, 1))
    unaries = {"coarse": coarse_unary(labels, rng), "noisy": noisy_unary(labels, rng)}
    return Scene(image=image8, labels=labels, unaries=unaries)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


def coarse_unary(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Stride-8 class fractions → noisy confident logits → softmax → bilinear upsampling."""
    side = labels.shape[0]
    cells = -(-side // STRIDE)
    onehot = np.zeros((NUM_CLASSES, cells * STRIDE, cells * STRIDE))
    padded = np.pad(labels, ((0, cells * STRIDE - side),) * 2, mode="edge")
    np.put_along_axis(onehot, padded[None], 1.0, axis=0)
    fractions = onehot.reshape(NUM_CLASSES, cells, STRIDE, cells, STRIDE).mean(axis=(2, 4))
    logits = 4.0 * fractions + rng.normal(0.0, COARSE_NOISE, fractions.shape)
    probs = _softmax(logits)
    # Bilinear upsampling of stride-8 cell centres to pixel centres.
    up = resize(probs, (NUM_CLASSES, cells * STRIDE, cells * STRIDE), order=1, mode="edge")
    up = up[:, :side, :side]
    return (up / up.sum(axis=0, keepdims=True)).astype(np.float32)


def noisy_unary(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per-pixel logits ``3·onehot + N(0, PIXEL_NOISE²)``, softmax."""
    onehot = np.zeros((NUM_CLASSES, *labels.shape))
    np.put_along_axis(onehot, labels[None], 1.0, axis=0)
    logits = 3.0 * onehot + rng.normal(0.0, PIXEL_NOISE, onehot.shape)
    return _softmax(logits).astype(np.float32)


def make_scenes(split: str, side: int, count: int, seed: int = 0) -> list[Scene]:
    """``count`` scenes of ``split`` with seeds ``seed, seed + 1, ...``."""
    return [make_scene(split, side, seed + i) for i in range(count)]
