"""A detection set seen through the deployment preprocessing, held in memory, with CenterNet's
training augmentation.

`PreparedSet(source, size)` letterboxes every image to the detector's input once
(hwconv.driver.preprocess: the definition the board uses) and keeps:
- `__getitem__`: the letterboxed image and its boxes in input pixels (what training encodes);
- `annotation(i)`: the ORIGINAL image's size and boxes, so evaluation scores detections in the
  original image's coordinates, exactly as `hwconv validate` scores the board's;
- `geometry(i)`: (sx, sy, height, width), to map detections back (preprocess.boxes_to_image).
Decoding every image up front also checks the whole split before training starts.

`Augment`: CenterNet's ctdet training augmentation (Zhou et al., "Objects as Points", 2019:
random scale 0.6-1.4, random crop/placement, horizontal flip, colour jitter and PCA lighting
noise), applied to the letterboxed picture with the same resampler. Its random numbers are a
function of (seed, epoch, index), so training stays resumable bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ...driver.preprocess import boxes_to_input, letterbox, resize
from .base import Annotation, DetectionDataset, Sample

# ImageNet RGB eigen-decomposition for PCA lighting noise (Krizhevsky et al. 2012; the values
# CenterNet's ctdet uses).
EIG_VAL = np.float32([0.2141788, 0.01817699, 0.00341571])
EIG_VEC = np.float32([[-0.58752847, -0.69563484, 0.41340352],
                      [-0.5832747, 0.00994535, -0.81221408],
                      [-0.56089297, 0.71832671, 0.39791107]])
LUMA = np.float32([0.299, 0.587, 0.114])
MIN_BOX_PIXELS = 1.0  # a box cropped to less than this in width or height is dropped


@dataclass(frozen=True)
class Augment:
    """Random scale, crop/placement, flip and colour on a size x size letterboxed sample."""

    seed: int = 0
    scale: tuple[float, float] = (0.6, 1.4)
    flip: float = 0.5
    colour: float = 0.4          # brightness, contrast, saturation factors in 1 +- colour
    lighting: float = 0.1        # PCA lighting noise standard deviation

    def rng(self, epoch: int, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch, index])

    def __call__(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
                 rng: np.random.Generator) -> Sample:
        size = image.shape[0]
        s = rng.uniform(*self.scale)
        n = max(1, round(size * s))
        scaled = resize(image, n, n)
        k = n / size
        # Offsets place the scaled picture (s < 1) or choose the crop (s > 1) uniformly.
        ox, oy = (int(rng.integers(min(0, size - n), max(0, size - n) + 1)) for _ in range(2))
        out = np.zeros_like(image)
        src_y, src_x = max(0, -oy), max(0, -ox)
        dst_y, dst_x = max(0, oy), max(0, ox)
        h, w = min(n - src_y, size - dst_y), min(n - src_x, size - dst_x)
        out[dst_y:dst_y + h, dst_x:dst_x + w] = scaled[src_y:src_y + h, src_x:src_x + w]
        b = np.asarray(boxes, np.float32).reshape(-1, 4) * np.float32(k) + np.float32([ox, oy, ox, oy])
        if rng.random() < self.flip:
            out = out[:, ::-1]
            b = np.stack([size - b[:, 2], b[:, 1], size - b[:, 0], b[:, 3]], axis=1)
        b = np.clip(b, 0, size)
        keep = ((b[:, 2] - b[:, 0]) >= MIN_BOX_PIXELS) & ((b[:, 3] - b[:, 1]) >= MIN_BOX_PIXELS)
        return self.colour_jitter(out, rng), b[keep].astype(np.float32), np.asarray(labels)[keep]

    def colour_jitter(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = image.astype(np.float32) / 255.0
        grey = lambda v: v @ LUMA  # noqa: E731
        ops: list[Callable[[np.ndarray, np.float32], np.ndarray]] = [
            lambda v, a: v * a,                                  # brightness
            lambda v, a: v * a + (1 - a) * grey(v).mean(),       # contrast
            lambda v, a: v * a + (1 - a) * grey(v)[..., None],   # saturation
        ]
        for i in rng.permutation(3):
            x = ops[i](x, np.float32(1 + rng.uniform(-self.colour, self.colour)))
        alpha = rng.normal(0, self.lighting, 3).astype(np.float32)
        x = x + EIG_VEC @ (EIG_VAL * alpha)
        return np.clip(np.floor(x * 255.0 + 0.5), 0, 255).astype(np.uint8)


class PreparedSet(DetectionDataset):
    """`source` letterboxed to size x size, decoded once; see the module docstring."""

    def __init__(self, source: DetectionDataset, size: int, *, augment: Augment | None = None,
                 limit: int | None = None, on_image: Callable[[int, int], Any] | None = None) -> None:
        self.class_names = source.class_names
        self.size = size
        self.augment = augment
        self.epoch = 0
        self.samples: list[Sample] = []
        self.raw: list[Annotation] = []
        self.geometry_of: list[tuple[float, float, int, int]] = []
        n = len(source) if limit is None else min(limit, len(source))
        for i in range(n):
            image, boxes, labels = source.load(i)
            h, w = image.shape[:2]
            picture, (sx, sy) = letterbox(image, size, size)
            picture.setflags(write=False)
            self.samples.append((picture, boxes_to_input(boxes, sx, sy), np.asarray(labels, np.int64)))
            self.raw.append((h, w, np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(labels, np.int64)))
            self.geometry_of.append((sx, sy, h, w))
            if on_image is not None:
                on_image(i + 1, n)

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose augmentation the next samples draw (train() calls it)."""
        self.epoch = epoch

    def load(self, index: int) -> Sample:
        image, boxes, labels = self.samples[index]
        return image, boxes.copy(), labels.copy()

    def sample(self, index: int) -> Sample:
        index = self._check_index(index)
        image, boxes, labels = self.load(index)
        if self.augment is not None:
            return self.augment(image, boxes, labels, self.augment.rng(self.epoch, index))
        return image, boxes, labels

    def raw_annotation(self, index: int) -> Annotation:
        h, w, boxes, labels = self.raw[index]
        return h, w, boxes.copy(), labels.copy()

    def annotation(self, index: int) -> Annotation:
        """The original image's size and boxes: evaluation is in its coordinates."""
        return self.raw_annotation(self._check_index(index))

    def geometry(self, index: int) -> tuple[float, float, int, int]:
        """(sx, sy, height, width) of image `index`: preprocess.boxes_to_image maps detections back."""
        return self.geometry_of[self._check_index(index)]
