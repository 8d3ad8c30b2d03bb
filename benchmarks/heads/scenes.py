"""Composites of real photographs with exact masks, from what scikit-image and scikit-learn
ship (nothing is downloaded).

Each scene is a crop of a photograph with objects pasted on it; the label of a pixel is the
object painted last there, so the masks are exact. Labels: 0 background, 1 horse (the
scikit-image silhouette filled with a tinted texture), 2 coin (each coin of
``skimage.data.coins`` cut out with its own pixels: a real photographed object), 3 digit
(a handwritten ``sklearn.datasets.load_digits`` sprite, upsampled, filled with a texture).

Training and test scenes share nothing but the horse's outline: different photographs as
backgrounds, different textures, alternate coins and digit sprites, and the test horse
mirrored (scikit-image ships one horse).
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
from sklearn.datasets import load_digits, load_sample_images

LABELS = ("background", "horse", "coin", "digit")
NUM_LABELS = len(LABELS)
SPLITS = ("train", "test")
#: photographs behind the objects, per split
BACKGROUNDS = {"train": ("astronaut", "coffee", "china"), "test": ("chelsea", "rocket", "flower")}
#: grayscale photographs that fill the horses and the digits, per split
TEXTURES = {"train": ("brick", "grass", "camera"), "test": ("gravel", "moon", "clock")}
#: ImageNet statistics: torchvision's and Keras's MobileNetV3 expect normalised inputs
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


@dataclass(frozen=True)
class Split:
    """Scenes of one split.

    Attributes
    ----------
    images : ndarray (n, 3, side, side), float32
        Normalised with :data:`MEAN` and :data:`STD`.
    labels : ndarray (n, side, side), int64 in ``[0, NUM_LABELS)``
    """

    images: np.ndarray
    labels: np.ndarray


@cache
def _photo(name: str) -> np.ndarray:
    """A photograph in [0, 1], float32: RGB for backgrounds, gray for textures."""
    if name in ("china", "flower"):
        bunch = load_sample_images()
        index = [path.endswith(f"{name}.jpg") for path in bunch.filenames].index(True)
        image = bunch.images[index]
    else:
        image = getattr(skdata, name)()
    return (image[..., :3] if image.ndim == 3 else image).astype(np.float32) / 255.0


@cache
def _photo_at(name: str, short: int) -> np.ndarray:
    """The photograph downscaled once so that its shorter side is ``short`` pixels: crops
    of it then resize by a factor of two at most, whose anti-aliasing is cheap (from the
    full photographs, generating the scenes took most of a quick run)."""
    photo = _photo(name)
    scale = short / min(photo.shape[:2])
    if scale >= 1.0:
        return photo
    shape = (round(photo.shape[0] * scale), round(photo.shape[1] * scale))
    return resize(photo, shape, order=1, anti_aliasing=True).astype(np.float32)


@cache
def _coins(split: str) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """(pixels, mask) of every other coin of ``skimage.data.coins``."""
    photo = _photo("coins")
    mask = ndimage.binary_fill_holes(
        ndimage.binary_opening(photo > filters.threshold_otsu(photo), iterations=2)
    )
    regions = [r for r in measure.regionprops(measure.label(mask)) if 800 <= r.area <= 3500]
    chosen = regions[SPLITS.index(split) :: 2]
    return tuple((photo[r.slice], r.image) for r in chosen)


@cache
def _digits(split: str) -> np.ndarray:
    """Every other handwritten digit sprite (8×8, in [0, 1])."""
    return load_digits().images[SPLITS.index(split) :: 2] / 16.0


@cache
def _horse(split: str) -> np.ndarray:
    horse = ~skdata.horse()
    ys, xs = np.nonzero(horse)
    horse = horse[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    return horse[:, ::-1] if split == "test" else horse


def _crop(image: np.ndarray, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A random crop at a random scale (half to all of the shorter side), resized."""
    short = min(image.shape[:2])
    c = int(rng.integers(short // 2, short + 1))
    y = int(rng.integers(0, image.shape[0] - c + 1))
    x = int(rng.integers(0, image.shape[1] - c + 1))
    return resize(image[y : y + c, x : x + c], (height, width), order=1, anti_aliasing=True)


def _tint(rng: np.random.Generator) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.2, 0.9), 1.0), np.float32)


def _texture(split: str, mask: np.ndarray, side: int, rng: np.random.Generator) -> np.ndarray:
    """A tinted crop of one of the split's texture photographs, shaped like ``mask``."""
    names = TEXTURES[split]
    photo = _photo_at(names[rng.integers(len(names))], 2 * side)
    gray = _crop(photo, *mask.shape, rng)
    return np.clip((0.2 + 0.9 * gray)[..., None] * _tint(rng), 0.0, 1.0)


def _object(
    label: int, split: str, side: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(pixels (h, w, 3), mask (h, w)) of one object of ``label`` for a ``side``-pixel scene."""
    if label == 1:
        outline = _horse(split)
        height = int(side * rng.uniform(0.4, 0.7))
        width = min(side, round(height * outline.shape[1] / outline.shape[0]))
        mask = resize(outline.astype(np.float32), (height, width), order=1) > 0.5
        return _texture(split, mask, side, rng), mask
    if label == 2:
        coins = _coins(split)
        pixels, outline = coins[rng.integers(len(coins))]
        size = int(side * rng.uniform(0.18, 0.32))
        mask = resize(outline.astype(np.float32), (size, size), order=1) > 0.5
        gray = resize(pixels, (size, size), order=1, anti_aliasing=True)
        return np.clip(gray[..., None] * _tint(rng) * rng.uniform(0.8, 1.3), 0.0, 1.0), mask
    sprites = _digits(split)
    size = int(side * rng.uniform(0.3, 0.45))
    mask = resize(sprites[rng.integers(len(sprites))], (size, size), order=3) > 0.35
    return _texture(split, mask, side, rng), mask


def make_scene(split: str, side: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One scene: image (side, side, 3) in [0, 1] and its labels (side, side).

    A background crop, then one horse, one to three coins and one or two digits, pasted in
    random order (later objects occlude earlier ones), and a little sensor noise.
    """
    names = BACKGROUNDS[split]
    image = _crop(_photo_at(names[rng.integers(len(names))], 2 * side), side, side, rng)
    labels = np.zeros((side, side), np.int64)
    objects = [1] + [2] * int(rng.integers(1, 4)) + [3] * int(rng.integers(1, 3))
    for label in rng.permutation(objects):
        pixels, mask = _object(int(label), split, side, rng)
        if rng.random() < 0.5:
            pixels, mask = pixels[:, ::-1], mask[:, ::-1]
        h, w = mask.shape
        y, x = int(rng.integers(0, side - h + 1)), int(rng.integers(0, side - w + 1))
        image[y : y + h, x : x + w][mask] = pixels[mask]
        labels[y : y + h, x : x + w][mask] = label
    noisy = image + rng.normal(0.0, 0.01, image.shape)
    return np.clip(noisy, 0.0, 1.0).astype(np.float32), labels


@cache
def make_split(split: str, count: int, side: int, seed: int = 0) -> Split:
    """``count`` scenes of ``split``; equal arguments give identical scenes.

    Parameters
    ----------
    split : {"train", "test"}
    count, side : int
        Scenes and their side in pixels.
    seed : int
        Seed of the scene generator.

    Returns
    -------
    Split
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    images, labels = zip(*(make_scene(split, side, rng) for _ in range(count)), strict=True)
    normalised = (np.stack(images) - MEAN) / STD
    return Split(np.ascontiguousarray(normalised.transpose(0, 3, 1, 2)), np.stack(labels))
