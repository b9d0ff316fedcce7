"""CenterNet targets (Zhou et al., "Objects as Points", ctdet) and their decoding.

Encoding follows the reference implementation so that trained heads mean the same thing:
- heatmap (C, H/s, W/s): a Gaussian per object at its integer centre cell, radius from CornerNet's
  gaussian_radius (min_overlap 0.7, as in the reference, including its well-known formula quirks),
  sigma = (2r+1)/6, overlapping Gaussians combined by max;
- wh (M, 2): box width and height in OUTPUT cells; reg (M, 2): centre minus its integer cell, in
  [0, 1); ind (M,): flat cell index y*W_out + x; mask (M,): 1 for real objects, 0 for padding.
Decoding keeps heatmap cells equal to their 3x3 max (the "NMS"), takes the top k and rebuilds
boxes in input pixels. The heatmap given to `decode` is a probability (after the sigmoid).
"""

from __future__ import annotations

import math

import numpy as np
import torch

STRIDE = 4
MAX_OBJECTS = 128


def gaussian_radius(height: float, width: float, min_overlap: float = 0.7) -> float:
    """CornerNet/CenterNet radius: a corner shift that keeps IoU >= min_overlap (reference code)."""
    b1 = height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1 ** 2 - 4 * c1)) / 2
    b2 = 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(b2 ** 2 - 16 * c2)) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(b3 ** 2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def draw_gaussian(heatmap: np.ndarray, cx: int, cy: int, radius: int) -> None:
    """Max-combine a Gaussian of the given radius into heatmap (H, W) at cell (cx, cy), in place."""
    diameter = 2 * radius + 1
    sigma = diameter / 6
    m = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-(m[:, None] ** 2 + m[None, :] ** 2) / (2 * sigma * sigma))
    g[g < np.finfo(g.dtype).eps * g.max()] = 0
    h, w = heatmap.shape
    left, right = min(cx, radius), min(w - cx, radius + 1)
    top, bottom = min(cy, radius), min(h - cy, radius + 1)
    patch = heatmap[cy - top:cy + bottom, cx - left:cx + right]
    np.maximum(patch, g[radius - top:radius + bottom, radius - left:radius + right], out=patch)


def encode(boxes: np.ndarray, labels: np.ndarray, num_classes: int, input_size: tuple[int, int], *,
           stride: int = STRIDE, max_objects: int = MAX_OBJECTS) -> dict[str, np.ndarray]:
    """Targets for one image of input_size (H, W) (both divisible by stride) from xyxy boxes."""
    in_h, in_w = input_size
    if in_h % stride or in_w % stride:
        raise ValueError(f"input size {input_size} is not divisible by the stride {stride}")
    out_h, out_w = in_h // stride, in_w // stride
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    labels = np.asarray(labels, np.int64).reshape(-1)
    if len(boxes) > max_objects:
        raise ValueError(f"{len(boxes)} objects exceed max_objects={max_objects}")
    if len(labels) and not (0 <= labels.min() and labels.max() < num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}), got {labels.min()}..{labels.max()}")

    heatmap = np.zeros((num_classes, out_h, out_w), np.float32)
    wh = np.zeros((max_objects, 2), np.float32)
    reg = np.zeros((max_objects, 2), np.float32)
    ind = np.zeros((max_objects,), np.int64)
    mask = np.zeros((max_objects,), np.float32)
    k = 0
    for box, label in zip(boxes, labels):
        x1, y1, x2, y2 = np.clip(box / stride, 0, [out_w, out_h, out_w, out_h])
        w, h = x2 - x1, y2 - y1
        if w <= 0 or h <= 0:  # wholly outside the image after clipping
            continue
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        ix, iy = min(int(cx), out_w - 1), min(int(cy), out_h - 1)
        radius = max(0, int(gaussian_radius(math.ceil(h), math.ceil(w))))
        draw_gaussian(heatmap[label], ix, iy, radius)
        wh[k] = w, h
        reg[k] = cx - ix, cy - iy
        ind[k] = iy * out_w + ix
        mask[k] = 1
        k += 1
    return {"heatmap": heatmap, "wh": wh, "reg": reg, "ind": ind, "mask": mask}


def encode_batch(targets: list[dict[str, torch.Tensor]], num_classes: int, input_size: tuple[int, int],
                 *, stride: int = STRIDE, max_objects: int = MAX_OBJECTS) -> dict[str, torch.Tensor]:
    """encode() for each target dict of a collated batch, stacked into tensors."""
    encoded = [encode(t["boxes"].numpy(), t["labels"].numpy(), num_classes, input_size,
                      stride=stride, max_objects=max_objects) for t in targets]
    return {key: torch.from_numpy(np.stack([e[key] for e in encoded])) for key in encoded[0]}


def gather_at(feature: torch.Tensor, ind: torch.Tensor) -> torch.Tensor:
    """feature (B, D, H, W) sampled at flat cells ind (B, K) -> (B, K, D); for losses and decoding."""
    b, d = feature.shape[:2]
    flat = feature.reshape(b, d, -1)
    return flat.gather(2, ind.unsqueeze(1).expand(b, d, ind.shape[1])).transpose(1, 2)


@torch.no_grad()
def decode(heatmap: torch.Tensor, wh: torch.Tensor, reg: torch.Tensor | None = None, *,
           stride: int = STRIDE, k: int = 100, score_threshold: float = 0.1
           ) -> list[dict[str, torch.Tensor]]:
    """Detections per image: boxes (n, 4) xyxy input pixels, scores (n,), labels (n,), best first.

    heatmap (B, C, H, W) probabilities; wh and reg (B, 2, H, W) in output cells. Without reg the
    centre is the cell's corner, as in CenterNet run with --not_reg_offset. The rule (peaks, one
    per plateau, top k) is the driver's, hwconv.driver.decode.decode, applied per image.
    """
    from ...driver.decode import decode as decode_image

    as_np = lambda t: t.detach().cpu().double().numpy()  # noqa: E731
    out = []
    for i in range(heatmap.shape[0]):
        det = decode_image(as_np(heatmap[i]), as_np(wh[i]), None if reg is None else as_np(reg[i]),
                           stride=stride, k=k, score_threshold=score_threshold)
        out.append({"boxes": torch.from_numpy(det["boxes"]).to(heatmap.dtype),
                    "scores": torch.from_numpy(det["scores"]).to(heatmap.dtype),
                    "labels": torch.from_numpy(det["labels"])})
    return out
