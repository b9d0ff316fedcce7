"""THE image preprocessing of a detector, numpy only (it runs on the board too).

One definition, used by training (quant.data.prepare), training-time evaluation, `hwconv export
--verify-ap`, the driver (`EngineDriver.detect`), `hwconv run` and `hwconv validate`: what a
network is trained on is what it sees on the board.

- geometry (`letterbox`): the longer side scaled to the input size, aspect ratio kept, padding
  with 0 at the bottom/right, so the inverse is a pure per-axis scale (`boxes_to_image`);
- filter (`resize`): a triangle filter widened by the downscale factor, as antialiased bilinear
  resizers do (no PIL needed on the board);
- boxes: `boxes_to_input` into the input's pixels, `boxes_to_image` back (clipped to the image);
- quantisation (`quantize_image`): value/255 over the input scale, rounded half up, clamped, the
  same rule as hwconv.quant.quantizers.image_integers inside the model.
"""

from __future__ import annotations

import numpy as np

from ..spec.program import TensorInfo


def as_rgb_uint8(image: np.ndarray, *, where: str = "image") -> np.ndarray:
    """(H, W, 3) uint8 from (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8 (alpha dropped)."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"{where}: dtype {image.dtype}, expected uint8 pixels (H, W, 3)")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"{where}: shape {image.shape}, expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def _resample_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of a triangle filter, support widened when shrinking."""
    ratio = n_in / n_out
    support = max(1.0, ratio)
    centres = (np.arange(n_out) + 0.5) * ratio          # output pixel centres in input coordinates
    src = np.arange(n_in) + 0.5
    w = np.clip(1.0 - np.abs(src[None, :] - centres[:, None]) / support, 0.0, None)
    return w / w.sum(axis=1, keepdims=True)


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize (H, W, C) uint8 to (height, width, C) uint8."""
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image.copy()
    ry, rx = _resample_matrix(h, height), _resample_matrix(w, width)
    out = np.einsum("yh,hwc,xw->yxc", ry, image.astype(np.float64), rx, optimize=True)
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def letterbox_scale(height: int, width: int, out_h: int, out_w: int) -> tuple[float, float]:
    """(sx, sy): the exact per-axis factors of the letterbox, after rounding the resized size
    (for a square input, Letterbox.scale_of)."""
    s = min(out_h / height, out_w / width)
    nw, nh = max(1, round(width * s)), max(1, round(height * s))
    return nw / width, nh / height


def letterbox(image: np.ndarray, height: int, width: int) -> tuple[np.ndarray, tuple[float, float]]:
    """Fit an (H, W, 3) uint8 image into a (height, width) input keeping its aspect ratio, pad
    bottom/right with 0. Returns the input picture and (sx, sy) to map boxes back."""
    h, w = image.shape[:2]
    sx, sy = letterbox_scale(h, w, height, width)
    nw, nh = round(w * sx), round(h * sy)
    out = np.zeros((height, width, 3), np.uint8)
    out[:nh, :nw] = resize(image, nh, nw)
    return out, (sx, sy)


def boxes_to_input(boxes: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """(N, 4) xyxy boxes in image pixels -> the letterboxed input's pixels (float32)."""
    return np.asarray(boxes, np.float32).reshape(-1, 4) * np.float32([sx, sy, sx, sy])


def boxes_to_image(boxes: np.ndarray, sx: float, sy: float, height: int, width: int) -> np.ndarray:
    """(N, 4) xyxy boxes in the input's pixels -> the original (height, width) image's pixels,
    clipped to the image (float64)."""
    out = np.asarray(boxes, np.float64).reshape(-1, 4) / np.array([sx, sy, sx, sy])
    return np.clip(out, 0, [width, height, width, height])


def describe(height: int, width: int) -> dict:
    """The preprocessing a program was trained with, for its metadata (`extra["preprocess"]`)."""
    return {"input_size": [int(height), int(width)], "geometry": "letterbox: longer side to the input, "
            "aspect kept, zero padding bottom/right", "filter": "triangle, widened when shrinking",
            "quantisation": "value/255/scale, half up, clamp", "definition": "hwconv.driver.preprocess"}


def quantize_image(image: np.ndarray, tensor: TensorInfo) -> np.ndarray:
    """(H, W, 3) uint8 pixels -> the program's integer input: value/255 over the input scale,
    rounded half up, clamped to the input's range."""
    lo, hi = (-128, 127) if tensor.signed else (0, 255)
    x = image.astype(np.float64) / 255.0 / tensor.scale
    return np.clip(np.floor(x + 0.5), lo, hi).astype(np.int16)
