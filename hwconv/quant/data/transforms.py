"""Sample transforms (image, boxes, labels) -> (image, boxes, labels), numpy in and out."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...driver.preprocess import boxes_to_input, letterbox, letterbox_scale
from .base import Sample


@dataclass(frozen=True)
class Letterbox:
    """The deployment preprocessing (hwconv.driver.preprocess.letterbox) as a dataset transform:
    the longer side scaled to `size` keeping the aspect ratio, zero padding bottom/right, the
    boxes scaled alike. A detection maps back to the original image by dividing by `scale_of(h, w)`
    (preprocess.boxes_to_image)."""

    size: int

    def scale_of(self, height: int, width: int) -> tuple[float, float]:
        """(sx, sy): the exact per-axis factors applied, after rounding the resized size."""
        return letterbox_scale(height, width, self.size, self.size)

    def __call__(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray) -> Sample:
        out, (sx, sy) = letterbox(image, self.size, self.size)
        return out, boxes_to_input(boxes, sx, sy), labels
