"""Generated segmentation scenes in which long-range context genuinely matters.

Real handwritten digits (``sklearn.datasets.load_digits``, 8×8 sprites) are upsampled and
pasted in colour over real grayscale textures (``skimage.data.grass``, ``gravel``,
``brick``). Every pixel of a digit stroke carries the digit's class (1–10); everything else,
including distractors, is background (0). Three datasets:

* **DigitScenes** — 2–4 digits of different classes, each in its own colour. A unary network
  with a receptive field of a few pixels sees only a piece of a stroke, which fits many
  digits; the class is legible only from the whole digit.
* **ConsensusScenes** — 3–4 digits that all share one class, two of them degraded (blurred,
  faded to low contrast, half erased): only pooling evidence across objects recovers them.
* **TiedScenes** — one or two pairs of *partner* classes (0–1, 2–3, 4–5, 6–7, 8–9: the
  classes of a pair always appear together, one digit each), one digit of every pair
  degraded. Evidence for one class is evidence for its partner elsewhere in the scene; the
  digits of a scene have different classes, so a model that pools evidence per label (Potts)
  finds nothing to pool across digits, while label-dependent embeddings can tie the labels.

All add clutter (small stroke fragments cut from other digits, in random colours) and
occluding bars, labelled background, and Gaussian noise. Train and test scenes use disjoint
digit sprites and disjoint halves of each texture, so test scores measure generalisation
to unseen handwriting. Everything is generated from a seed, in seconds.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from functools import cache

import numpy as np
from scipy import ndimage
from skimage import data as skdata
from skimage.transform import resize
from sklearn.datasets import load_digits

#: background + the ten digit classes
NUM_CLASSES = 11
#: the three datasets
KINDS = ("digits", "consensus", "tied")
#: fraction of each digit class's sprites reserved for training (the rest are test sprites)
TRAIN_FRACTION = 0.6
#: fixed seed of the sprite split, so that every run shares one train/test partition
SPLIT_SEED = 20170
#: upsampled intensity above which a sprite pixel counts as stroke (labelled)
STROKE_THRESHOLD = 0.4


@dataclass(frozen=True)
class SceneConfig:
    """Geometry and nuisance levels of the scenes.

    Attributes
    ----------
    size : int
        Side of the square RGB canvas in pixels.
    digit_px : tuple of int
        Smallest and largest side of an upsampled digit sprite.
    clutter : tuple of int
        Smallest and largest number of clutter fragments.
    bars : tuple of int
        Smallest and largest number of occluding bars.
    noise : float
        Standard deviation of the additive Gaussian noise (intensities in [0, 1]).
    """

    size: int = 64
    digit_px: tuple[int, int] = (12, 16)
    clutter: tuple[int, int] = (2, 4)
    bars: tuple[int, int] = (1, 2)
    noise: float = 0.05


@dataclass(frozen=True)
class Scenes:
    """A set of scenes.

    Attributes
    ----------
    images : ndarray (n, 3, size, size), float32 in [0, 1]
    labels : ndarray (n, size, size), int64 in [0, NUM_CLASSES)
    sprite_ids : ndarray (n, 4), int64
        Indices into ``load_digits()`` of the digits pasted in each scene (−1 pads), so
        that tests can check the train/test split.
    """

    images: np.ndarray
    labels: np.ndarray
    sprite_ids: np.ndarray


@cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    bunch = load_digits()
    return (bunch.images / 16.0).astype(np.float32), bunch.target.astype(np.int64)


@cache
def sprite_split() -> dict[str, np.ndarray]:
    """Indices into ``load_digits()`` of the train and test sprites, split per class.

    Returns
    -------
    dict
        ``{"train": ids, "test": ids}``, disjoint, each covering all ten classes.
    """
    _, targets = _digits()
    rng = np.random.default_rng(SPLIT_SEED)
    train, test = [], []
    for digit in range(10):
        ids = rng.permutation(np.flatnonzero(targets == digit))
        cut = round(TRAIN_FRACTION * len(ids))
        train.append(ids[:cut])
        test.append(ids[cut:])
    return {"train": np.sort(np.concatenate(train)), "test": np.sort(np.concatenate(test))}


@cache
def _textures(split: str) -> tuple[np.ndarray, ...]:
    # Train scenes crop the top half of each texture, test scenes the bottom half.
    textures = []
    for name in ("grass", "gravel", "brick"):
        image = getattr(skdata, name)().astype(np.float32) / 255.0
        half = image.shape[0] // 2
        textures.append(image[:half] if split == "train" else image[half:])
    return tuple(textures)


class _SceneBuilder:
    """Paints one scene: canvas, label map and the sprites used."""

    def __init__(self, rng: np.random.Generator, split: str, config: SceneConfig):
        self.rng = rng
        self.split = split
        self.config = config
        self.sprite_ids = sprite_split()[split]
        self.image = self._background()
        self.labels = np.zeros((config.size, config.size), np.int64)
        self.boxes: list[tuple[int, int, int]] = []
        self.used: list[int] = []

    def _background(self) -> np.ndarray:
        size = self.config.size
        texture = _textures(self.split)[self.rng.integers(3)]
        # Crop at a random scale (1× or 2× then halved) for varied texture grain.
        scale = int(self.rng.integers(1, 3))
        crop = size * scale
        top = self.rng.integers(texture.shape[0] - crop + 1)
        left = self.rng.integers(texture.shape[1] - crop + 1)
        patch = texture[top : top + crop, left : left + crop]
        if scale > 1:
            patch = patch.reshape(size, scale, size, scale).mean(axis=(1, 3))
        patch = (patch - patch.min()) / max(float(np.ptp(patch)), 1e-6)
        gray = 0.2 + 0.4 * patch
        tint = self.rng.uniform(0.85, 1.0, size=3).astype(np.float32)
        return gray[None] * tint[:, None, None]

    def _sprite(self, digit: int | None) -> tuple[np.ndarray, int]:
        """An upsampled sprite (of ``digit``, or any class) not used yet in this scene."""
        images, targets = _digits()
        pool = (
            self.sprite_ids if digit is None else self.sprite_ids[targets[self.sprite_ids] == digit]
        )
        pool = np.setdiff1d(pool, self.used)
        sprite_id = int(self.rng.choice(pool))
        side = int(self.rng.integers(self.config.digit_px[0], self.config.digit_px[1] + 1))
        sprite = resize(images[sprite_id], (side, side), order=1, anti_aliasing=False)
        return np.clip(sprite, 0.0, 1.0).astype(np.float32), sprite_id

    def _place(self, side: int, margin: int = 1, tries: int = 60) -> tuple[int, int]:
        """A top-left corner whose box overlaps no earlier box (best effort)."""
        size = self.config.size
        for _ in range(tries):
            top, left = (int(v) for v in self.rng.integers(0, size - side + 1, size=2))
            if all(
                top + side + margin <= t
                or t + s + margin <= top
                or left + side + margin <= lf
                or lf + s + margin <= left
                for t, lf, s in self.boxes
            ):
                break
        self.boxes.append((top, left, side))
        return top, left

    def _paint(self, alpha: np.ndarray, top: int, left: int, colour: np.ndarray) -> None:
        h, w = alpha.shape
        region = self.image[:, top : top + h, left : left + w]
        region *= 1.0 - alpha
        region += alpha * colour[:, None, None]

    def _colour(self, hue: float) -> np.ndarray:
        saturation, value = self.rng.uniform(0.75, 1.0), self.rng.uniform(0.8, 1.0)
        return np.array(colorsys.hsv_to_rgb(hue % 1.0, saturation, value), np.float32)

    def _hues(self, count: int) -> np.ndarray:
        # Evenly spaced hues with jitter keep the digits of one scene distinguishable.
        return self.rng.uniform() + (np.arange(count) + self.rng.uniform(-0.1, 0.1, count)) / count

    def add_digit(self, digit: int, hue: float, degradation: str | None = None) -> None:
        """Paste a sprite of ``digit``, optionally degraded, and label its strokes."""
        sprite, sprite_id = self._sprite(digit)
        self.used.append(sprite_id)
        mask = sprite > STROKE_THRESHOLD
        alpha = sprite
        if degradation == "blur":
            alpha = ndimage.gaussian_filter(sprite, sigma=1.6)
            alpha = alpha / max(float(alpha.max()), 1e-6)
        elif degradation == "faint":
            alpha = 0.3 * sprite
        elif degradation == "erased":
            half = sprite.shape[0] // 2
            keep = np.zeros_like(mask)
            side = self.rng.integers(4)
            if side == 0:
                keep[:half] = True
            elif side == 1:
                keep[half:] = True
            elif side == 2:
                keep[:, :half] = True
            else:
                keep[:, half:] = True
            alpha = np.where(keep, sprite, 0.0)
            mask = mask & keep
        top, left = self._place(sprite.shape[0])
        self._paint(alpha, top, left, self._colour(hue))
        window = self.labels[top : top + mask.shape[0], left : left + mask.shape[1]]
        window[mask] = digit + 1

    def add_clutter(self) -> None:
        """Stroke fragments cut from other sprites, in random colours, labelled background."""
        low, high = self.config.clutter
        for _ in range(int(self.rng.integers(low, high + 1))):
            sprite, _ = self._sprite(None)
            side = int(self.rng.integers(5, 8))
            ys, xs = np.nonzero(sprite > STROKE_THRESHOLD)
            pick = self.rng.integers(len(ys))
            top = int(np.clip(ys[pick] - side // 2, 0, sprite.shape[0] - side))
            left = int(np.clip(xs[pick] - side // 2, 0, sprite.shape[1] - side))
            fragment = sprite[top : top + side, left : left + side]
            y, x = self._place(side, margin=0)
            self._paint(fragment, y, x, self._colour(self.rng.uniform()))
            window = self.labels[y : y + side, x : x + side]
            window[fragment > STROKE_THRESHOLD] = 0

    def add_bars(self) -> None:
        """Full-length gray bars over everything (digits are cut in pieces), background."""
        low, high = self.config.bars
        size = self.config.size
        for _ in range(int(self.rng.integers(low, high + 1))):
            width = int(self.rng.integers(2, 5))
            start = int(self.rng.integers(0, size - width + 1))
            shade = self.rng.uniform(0.1, 0.6)
            if self.rng.uniform() < 0.5:
                self.image[:, start : start + width, :] = shade
                self.labels[start : start + width, :] = 0
            else:
                self.image[:, :, start : start + width] = shade
                self.labels[:, start : start + width] = 0

    def finish(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        noisy = self.image + self.rng.normal(0.0, self.config.noise, self.image.shape)
        ids = np.full(4, -1, np.int64)
        ids[: len(self.used)] = self.used
        return np.clip(noisy, 0.0, 1.0).astype(np.float32), self.labels, ids


def _digit_scene(builder: _SceneBuilder) -> None:
    count = int(builder.rng.integers(2, 5))
    classes = builder.rng.choice(10, size=count, replace=False)
    for digit, hue in zip(classes, builder._hues(count), strict=True):
        builder.add_digit(int(digit), hue)


def _consensus_scene(builder: _SceneBuilder) -> None:
    count = int(builder.rng.integers(3, 5))
    digit = int(builder.rng.integers(10))
    degraded = builder.rng.choice(count, size=2, replace=False)
    kinds = builder.rng.choice(["blur", "faint", "erased"], size=2, replace=False)
    degradation = dict(zip(degraded.tolist(), kinds.tolist(), strict=True))
    for index, hue in enumerate(builder._hues(count)):
        builder.add_digit(digit, hue, degradation.get(index))


def partner(digit: int) -> int:
    """The class tied to ``digit`` in TiedScenes: 0–1, 2–3, 4–5, 6–7, 8–9."""
    return digit ^ 1


def _tied_scene(builder: _SceneBuilder) -> None:
    pairs = int(builder.rng.integers(1, 3))
    firsts = 2 * builder.rng.choice(5, size=pairs, replace=False)
    hues = builder._hues(2 * pairs)
    kinds = builder.rng.choice(["blur", "faint", "erased"], size=pairs)
    for index, first in enumerate(firsts.tolist()):
        degraded = int(builder.rng.integers(2))
        for member, digit in enumerate((first, partner(first))):
            degradation = str(kinds[index]) if member == degraded else None
            builder.add_digit(digit, hues[2 * index + member], degradation)


_COMPOSERS = {"digits": _digit_scene, "consensus": _consensus_scene, "tied": _tied_scene}


def make_scenes(
    kind: str, count: int, split: str, seed: int, config: SceneConfig | None = None
) -> Scenes:
    """Generate ``count`` scenes of one dataset.

    Parameters
    ----------
    kind : {"digits", "consensus", "tied"}
        DigitScenes, ConsensusScenes or TiedScenes.
    count : int
        Number of scenes.
    split : {"train", "test"}
        Which sprites and texture halves to draw from (disjoint between splits).
    seed : int
        Seed of the scene generator; equal arguments give identical scenes.
    config : SceneConfig, optional

    Returns
    -------
    Scenes
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    config = config or SceneConfig()
    rng = np.random.default_rng([seed, KINDS.index(kind), split == "test"])
    compose = _COMPOSERS[kind]
    images, labels, ids = [], [], []
    for _ in range(count):
        builder = _SceneBuilder(rng, split, config)
        compose(builder)
        builder.add_clutter()
        builder.add_bars()
        image, label, used = builder.finish()
        images.append(image)
        labels.append(label)
        ids.append(used)
    return Scenes(np.stack(images), np.stack(labels), np.stack(ids))
