"""Sample transforms (image, boxes, labels) -> (image, boxes, labels), numpy in and out."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .base import Sample


@dataclass(frozen=True)
class Letterbox:
    """Scale the longer side to `size` keeping the aspect ratio, pad bottom/right to size x size.

    Padding at the bottom/right (not centred) keeps the inverse a pure scale: a detection maps
    back to the original image by dividing by `scale_of(h, w)`.
    """

    size: int
    fill: int = 0

    def scale_of(self, height: int, width: int) -> tuple[float, float]:
        """(sx, sy): the exact per-axis factors applied, after rounding the resized size."""
        s = self.size / max(height, width)
        nw, nh = max(1, round(width * s)), max(1, round(height * s))
        return nw / width, nh / height

    def __call__(self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray) -> Sample:
        h, w = image.shape[:2]
        sx, sy = self.scale_of(h, w)
        nw, nh = round(w * sx), round(h * sy)
        out = np.full((self.size, self.size, 3), self.fill, np.uint8)
        out[:nh, :nw] = np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR))
        scaled = np.asarray(boxes, np.float32).reshape(-1, 4) * np.float32([sx, sy, sx, sy])
        return out, scaled, labels
