"""Detections drawn on an image, as arrays: shared by `hwconv quantize` (detections.png) and `hwconv run`.

`draw_detections` takes an HxWx3 uint8 image and xyxy pixel boxes (data.base conventions: x2/y2 are
exclusive edges) and returns a new image; `save_png` writes any such image atomically; `montage`
tiles several pictures into one. Nothing here touches a model or a dataset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from hwconv.fileio import atomic_write_bytes
from hwconv.imageio import encode_image

# One colour per class (label modulo the palette size); bright enough to read on photos.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 64, 64), (64, 255, 64), (64, 160, 255), (255, 220, 0), (255, 0, 255),
    (0, 255, 255), (255, 140, 0), (160, 80, 255), (255, 255, 255), (0, 128, 64))


def _check_image(image: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"{what}: expected an HxWx3 uint8 image, got dtype {arr.dtype} shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{what}: empty image of shape {arr.shape}")
    return arr


def _as_rows(values, name: str, width: int | None) -> np.ndarray:
    arr = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values)
    if width is None:
        if arr.ndim != 1:
            raise ValueError(f"draw_detections: {name} must be 1-D, got shape {arr.shape}")
    elif arr.size == 0:
        arr = arr.reshape(0, width)
    elif arr.ndim != 2 or arr.shape[1] != width:
        raise ValueError(f"draw_detections: {name} must have shape (N, {width}), got {arr.shape}")
    return arr


def draw_detections(image_uint8_hwc: np.ndarray, boxes_xyxy, scores, labels,
                    class_names: Sequence[str] | None = None, *, score_threshold: float = 0.0,
                    line_width: int = 1) -> np.ndarray:
    """A copy of `image_uint8_hwc` with each box of score >= `score_threshold` outlined in its class
    colour and labelled "name score" above it (below when at the top edge).

    boxes_xyxy (N, 4) in input pixels, scores (N,), labels (N,) integer classes; numpy arrays,
    torch tensors or lists. Boxes partly outside the image are clipped; wholly outside, skipped.
    """
    img = _check_image(image_uint8_hwc, "draw_detections")
    boxes = _as_rows(boxes_xyxy, "boxes_xyxy", 4).astype(np.float64)
    scores = _as_rows(scores, "scores", None).astype(np.float64)
    labels = _as_rows(labels, "labels", None)
    if not (len(boxes) == len(scores) == len(labels)):
        raise ValueError(f"draw_detections: {len(boxes)} boxes, {len(scores)} scores and {len(labels)} "
                         "labels; one of each per detection")
    if len(labels) and not np.issubdtype(labels.dtype, np.integer):
        if not np.all(labels == np.round(labels)):
            raise ValueError("draw_detections: labels must be integer class indices")
        labels = labels.astype(np.int64)
    if class_names is not None and len(labels) and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ValueError(f"draw_detections: labels {labels.min()}..{labels.max()} outside the "
                         f"{len(class_names)} class names")
    if line_width < 1:
        raise ValueError(f"draw_detections: line_width must be >= 1, got {line_width}")

    height, width = img.shape[:2]
    pic = Image.fromarray(img.copy())
    draw = ImageDraw.Draw(pic)
    for (x1, y1, x2, y2), score, label in zip(boxes, scores, labels):
        if score < score_threshold or not np.all(np.isfinite((x1, y1, x2, y2))):
            continue
        # x2/y2 are exclusive edges: the last covered pixel is x2 - 1.
        left, top = max(0.0, x1), max(0.0, y1)
        right, bottom = min(width - 1.0, x2 - 1), min(height - 1.0, y2 - 1)
        if right < left or bottom < top:
            continue
        colour = PALETTE[int(label) % len(PALETTE)]
        draw.rectangle((left, top, right, bottom), outline=colour, width=line_width)
        name = class_names[int(label)] if class_names is not None else str(int(label))
        text = f"{name} {score:.2f}"
        text_h = draw.textbbox((0, 0), text)[3] + 1
        draw.text((left + 1, top - text_h if top >= text_h else bottom + 1), text, fill=colour)
    return np.asarray(pic, dtype=np.uint8)


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement, so labels stay legible on small network inputs."""
    img = _check_image(image, "upscale")
    if factor < 1:
        raise ValueError(f"upscale: factor must be >= 1, got {factor}")
    return img.repeat(factor, axis=0).repeat(factor, axis=1) if factor > 1 else img


def montage(images: Sequence[np.ndarray], columns: int = 4, gap: int = 4) -> np.ndarray:
    """Images of one size tiled row-major on a black background, `gap` pixels apart."""
    if not images:
        raise ValueError("montage: no images")
    tiles = [_check_image(im, f"montage image {i}") for i, im in enumerate(images)]
    shapes = {t.shape for t in tiles}
    if len(shapes) != 1:
        raise ValueError(f"montage: images must share one shape, got {sorted(shapes)}")
    h, w, _ = tiles[0].shape
    cols = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // cols)
    canvas = np.zeros((rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap, 3), np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        canvas[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = tile
    return canvas


def save_png(path: str | Path, image: np.ndarray) -> Path:
    """Write an HxWx3 uint8 image as PNG, atomically (a reader never sees half a file)."""
    img = _check_image(image, f"save_png {path}")
    atomic_write_bytes(path, encode_image(img, ".png", where=str(path)))
    return Path(path)
