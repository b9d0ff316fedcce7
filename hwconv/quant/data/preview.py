"""Draw boxes on an image and write a PNG, for eyeballing datasets and detections."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from hwconv.fileio import atomic_write_bytes

PALETTE = ((255, 64, 64), (64, 255, 64), (64, 160, 255), (255, 220, 0), (255, 0, 255),
           (0, 255, 255), (255, 140, 0), (160, 80, 255), (255, 255, 255), (0, 128, 64))


def to_uint8_hwc(image: np.ndarray | torch.Tensor) -> np.ndarray:
    """A 3xHxW float tensor in [0, 1] (a dataset item) or an HxWx3 uint8 array, as HxWx3 uint8."""
    if isinstance(image, torch.Tensor):
        arr = image.detach().cpu().numpy()
        if arr.ndim == 3 and arr.shape[0] == 3:
            arr = arr.transpose(1, 2, 0)
        if arr.dtype != np.uint8:
            arr = np.clip(np.round(arr * 255.0), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(arr)
    return np.ascontiguousarray(np.asarray(image, np.uint8))


def draw_boxes(image: np.ndarray | torch.Tensor, boxes: np.ndarray | torch.Tensor,
               labels: np.ndarray | torch.Tensor, path: str | Path, *,
               class_names: Sequence[str] | None = None, scores: np.ndarray | torch.Tensor | None = None,
               scale: int = 1) -> Path:
    """Write `image` with its xyxy pixel boxes outlined and labelled to `path` (PNG, atomically).

    `scale` enlarges the picture (nearest neighbour) before drawing so small images stay legible.
    """
    pic = Image.fromarray(to_uint8_hwc(image))
    if scale != 1:
        pic = pic.resize((pic.width * scale, pic.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(pic)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4) * scale
    labels = np.asarray(labels).reshape(-1)
    score_list = None if scores is None else np.asarray(scores).reshape(-1)
    for i, ((x1, y1, x2, y2), label) in enumerate(zip(boxes, labels)):
        colour = PALETTE[int(label) % len(PALETTE)]
        # x2/y2 are exclusive edges: the outline's last pixel is x2 - 1.
        draw.rectangle((x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)), outline=colour, width=1)
        text = class_names[int(label)] if class_names else str(int(label))
        if score_list is not None:
            text += f" {score_list[i]:.2f}"
        draw.text((x1 + 1, max(0.0, y1 - 11)), text, fill=colour)
    buf = io.BytesIO()
    pic.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
