"""CenterNet decoding of a detector program's integer outputs, numpy only (it runs on the board).

One rule for every path (the program's outputs on the board or the golden model, the PyTorch
model in evaluation; hwconv.quant.data.centernet.decode is this function on tensors): heatmap
probabilities = sigmoid of the dequantised hm logits, peaks = cells that are the maximum of their
3x3 neighbourhood, the top k peaks, boxes from wh and reg in output cells times the stride.

Plateaus. 8-bit logits make neighbouring cells tie, and a rule that keeps every cell equal to
its 3x3 maximum then reports one object several times (on the 3-class VOC-format set of
docs/results/quantize_voc.md that cost the W4A8 network 3.4 AP50 points and the float one 1.4).
A cell that ties a neighbour before it in raster order (up-left, up, up-right, left) is not a
peak, so a plateau gives one detection, at its first cell.
"""

from __future__ import annotations

import numpy as np

from ..spec.program import Program

HEADS = ("hm", "wh", "reg")


def _maxpool3(x: np.ndarray) -> np.ndarray:
    """3x3, stride 1, padding 1 max over the last two axes (padding never wins)."""
    p = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(1, 1), (1, 1)], constant_values=-np.inf)
    h, w = x.shape[-2:]
    out = np.full(x.shape, -np.inf)
    for dy in range(3):
        for dx in range(3):
            np.maximum(out, p[..., dy:dy + h, dx:dx + w], out=out)
    return out


_EARLIER_NEIGHBOURS = ((0, 0), (0, 1), (0, 2), (1, 0))  # offsets into the padded map: up-left, up, up-right, left


def peak_mask(heatmap: np.ndarray) -> np.ndarray:
    """(C, H, W) -> bool: the cell is its 3x3 neighbourhood's maximum and ties no neighbour
    before it in raster order (one peak per plateau; module docstring)."""
    h, w = heatmap.shape[-2:]
    mask = _maxpool3(heatmap) == heatmap
    padded = np.pad(heatmap, [(0, 0)] * (heatmap.ndim - 2) + [(1, 1), (1, 1)], constant_values=-np.inf)
    for dy, dx in _EARLIER_NEIGHBOURS:
        mask &= heatmap > padded[..., dy:dy + h, dx:dx + w]
    return mask


def decode(heatmap: np.ndarray, wh: np.ndarray, reg: np.ndarray | None, *, stride: float,
           k: int = 100, score_threshold: float = 0.1) -> dict[str, np.ndarray]:
    """heatmap (C, H, W) probabilities, wh and reg (2, H, W) in output cells -> boxes (n, 4) xyxy
    input pixels, scores (n,), labels (n,), best first (equal scores in cell order)."""
    c, h, w = heatmap.shape
    peaks = np.where(peak_mask(heatmap), heatmap, 0.0).reshape(-1)
    k = min(k, peaks.size)
    order = np.argsort(-peaks, kind="stable")[:k]
    scores = peaks[order]
    labels = order // (h * w)
    cells = order % (h * w)
    ys, xs = (cells // w).astype(np.float64), (cells % w).astype(np.float64)
    size = wh.reshape(2, -1)[:, cells]
    if reg is not None:
        off = reg.reshape(2, -1)[:, cells]
        xs, ys = xs + off[0], ys + off[1]
    boxes = np.stack([xs - size[0] / 2, ys - size[1] / 2, xs + size[0] / 2, ys + size[1] / 2], axis=-1) * stride
    keep = scores >= score_threshold
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep].astype(np.int64)}


def decode_heads(hm_logits: np.ndarray, wh: np.ndarray, reg: np.ndarray | None, *, stride: float,
                 k: int = 100, score_threshold: float = 0.1) -> dict[str, np.ndarray]:
    """Real-valued heads (C, H, W) / (2, H, W) -> detections: sigmoid in float64, then `decode`.
    The one decoding rule of the program's outputs and of the PyTorch model's (evaluate.predict)."""
    heat = 1.0 / (1.0 + np.exp(-np.asarray(hm_logits, np.float64)))
    return decode(heat, np.asarray(wh, np.float64), None if reg is None else np.asarray(reg, np.float64),
                  stride=stride, k=k, score_threshold=score_threshold)


def decode_outputs(program: Program, outputs: dict[str, np.ndarray], *, k: int = 100,
                   score_threshold: float = 0.1) -> dict[str, np.ndarray]:
    """Detections in the program's input pixels from its integer outputs hm, wh, reg (H, W, C)."""
    missing = [h for h in HEADS if h not in outputs]
    if missing:
        raise ValueError(f"program outputs {sorted(outputs)} lack the CenterNet head(s) {missing}")
    real = {h: outputs[h].astype(np.float64).transpose(2, 0, 1) * program.tensor(h).scale for h in HEADS}
    inp = program.inputs[0].ref
    out_h = real["hm"].shape[1]
    if inp.height % out_h:
        raise ValueError(f"input height {inp.height} is not a multiple of the heatmap height {out_h}")
    return decode_heads(real["hm"], real["wh"], real["reg"], stride=inp.height / out_h, k=k,
                        score_threshold=score_threshold)
