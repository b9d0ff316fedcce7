"""Detection accuracy with pycocotools (COCO AP, AP50, per-class AP50) and detection pictures.

`evaluate` runs a model; `evaluate_outputs` scores detections that were decoded elsewhere (the
integer golden model, the board), so every path is measured the same way. Ground truth comes from
`data.to_coco_json`: image id = dataset index, category id = label + 1.

Decoding is the driver's (hwconv.driver.decode.decode_heads: float64 sigmoid, 3x3 peaks, top
DECODE_K, score >= DECODE_THRESHOLD), and a dataset seen through the deployment preprocessing
(data.prepare.PreparedSet) has its detections mapped back to the original image
(preprocess.boxes_to_image) and scored against the original boxes: the AP `hwconv quantize`
reports is computed as `hwconv validate` computes it on the board.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
from PIL import Image, ImageDraw
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch.utils.data import DataLoader, Subset

from hwconv.fileio import atomic_write_bytes

from ..driver.decode import decode_heads
from ..driver.preprocess import boxes_to_image
from .checkpoint import eval_mode
from .data import DetectionDataset, collate, detections_to_coco, to_coco_json
from .data.preview import to_uint8_hwc

Detections = Mapping[str, Any]  # boxes (n, 4) xyxy pixels, scores (n,), labels (n,)
DECODE_K = 100           # what `hwconv validate` decodes with
DECODE_THRESHOLD = 0.01
PREDICTION_COLOUR = (255, 64, 64)
TRUTH_COLOUR = (64, 255, 64)


class _Prefix(DetectionDataset):
    """The first n images of a dataset, for ground truth of a partial evaluation (ids unchanged)."""

    def __init__(self, base: DetectionDataset, n: int) -> None:
        self.base, self.n = base, n
        self.class_names = base.class_names

    def __len__(self) -> int:
        return self.n

    def annotation(self, index: int):
        return self.base.annotation(self._check_index(index))


# ------------------------------------------------------------------ inference

def _model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def predict(model: nn.Module, dataset: DetectionDataset, *, batch_size: int,
            score_threshold: float = DECODE_THRESHOLD, max_images: int | None = None,
            k: int = DECODE_K) -> list[dict[str, np.ndarray]]:
    """Decoded detections (numpy; boxes in the network input's pixels) of the first `max_images`
    images (all by default), in dataset order."""
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    loader = DataLoader(Subset(dataset, range(n)), batch_size=batch_size, shuffle=False, collate_fn=collate)
    device = _model_device(model)
    out: list[dict[str, np.ndarray]] = []
    with eval_mode(model):
        for images, _ in loader:
            heads = {name: t.detach().double().cpu().numpy() for name, t in model(images.to(device)).items()}
            stride = images.shape[-2] / heads["hm"].shape[-2]
            out += [decode_heads(heads["hm"][i], heads["wh"][i], heads["reg"][i], stride=stride, k=k,
                                 score_threshold=score_threshold) for i in range(len(images))]
    return out


def to_image_coordinates(detections: Sequence[Detections], dataset: DetectionDataset) -> list[dict[str, Any]]:
    """Detections in the input's pixels -> the original images' pixels where the dataset records a
    letterbox geometry (data.prepare.PreparedSet); unchanged otherwise."""
    geometry = getattr(dataset, "geometry", None)
    if geometry is None:
        return list(detections)
    return [{**det, "boxes": boxes_to_image(det["boxes"], *geometry(i))} for i, det in enumerate(detections)]


# ------------------------------------------------------------------ COCO AP

def _per_class_ap50(ev: COCOeval, class_names: Sequence[str]) -> dict[str, float]:
    """AP at IoU 0.5 per category over all areas, 100 detections; classes without ground truth
    in the evaluated images are left out (their AP is undefined)."""
    precision = ev.eval["precision"]  # (iou thresholds, recall points, categories, areas, max dets)
    result = {}
    for k, cat_id in enumerate(ev.params.catIds):
        p = precision[0, :, k, 0, -1]
        if (p > -1).any():
            result[class_names[cat_id - 1]] = float(p[p > -1].mean())
    return result


def coco_ap(gt: dict[str, Any], results: list[dict[str, Any]], image_ids: Sequence[int],
            class_names: Sequence[str]) -> dict[str, Any]:
    """AP (IoU .5:.95), AP50, per-class AP50 of COCO result records against a COCO ground truth."""
    metrics: dict[str, Any] = {"AP": 0.0, "AP50": 0.0, "per_class_AP50": {}, "n_images": len(image_ids)}
    wanted = set(image_ids)
    if not any(a["image_id"] in wanted for a in gt["annotations"]):
        return {**metrics, "AP": None, "AP50": None}  # nothing to find: AP is undefined
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress and tables
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        if not results:
            names_with_gt = {class_names[a["category_id"] - 1] for a in gt["annotations"]}
            return {**metrics, "per_class_AP50": {c: 0.0 for c in class_names if c in names_with_gt}}
        ev = COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
        ev.params.imgIds = list(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {**metrics, "AP": max(0.0, float(ev.stats[0])), "AP50": max(0.0, float(ev.stats[1])),
            "per_class_AP50": _per_class_ap50(ev, class_names)}


def evaluate_outputs(outputs_per_image: Sequence[Detections] | Mapping[int, Detections],
                     dataset: DetectionDataset) -> dict[str, Any]:
    """COCO metrics of already-decoded detections: a sequence whose item i belongs to dataset
    image i (the first len(...) images are evaluated), or a mapping {dataset index: detections}."""
    items = dict(outputs_per_image) if isinstance(outputs_per_image, Mapping) else dict(enumerate(outputs_per_image))
    if not items:
        raise ValueError("evaluate_outputs: no images to evaluate")
    n = max(items) + 1
    if min(items) < 0 or n > len(dataset):
        raise IndexError(f"image ids {min(items)}..{n - 1} outside the dataset of {len(dataset)} images")
    gt = to_coco_json(_Prefix(dataset, n))
    results = [r for i, det in items.items() for r in detections_to_coco(i, det)]
    return coco_ap(gt, results, sorted(items), dataset.class_names)


def evaluate(model: nn.Module, dataset: DetectionDataset, *, batch_size: int,
             score_threshold: float = DECODE_THRESHOLD, max_images: int | None = None) -> dict[str, Any]:
    """{"AP", "AP50", "per_class_AP50", "n_images"} of `model` on the first `max_images` images,
    in the original images' coordinates (`to_image_coordinates`)."""
    detections = predict(model, dataset, batch_size=batch_size, score_threshold=score_threshold,
                         max_images=max_images)
    return evaluate_outputs(to_image_coordinates(detections, dataset), dataset)


# ------------------------------------------------------------------ pictures

def _draw(draw: ImageDraw.ImageDraw, boxes: Any, labels: Any, colour: tuple[int, int, int], scale: int,
          class_names: Sequence[str] | None, scores: Any = None, below: bool = False) -> None:
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4) * scale
    labels = np.asarray(labels).reshape(-1)
    for i, ((x1, y1, x2, y2), label) in enumerate(zip(boxes, labels)):
        # x2/y2 are exclusive edges (data.base conventions): the outline's last pixel is x2 - 1.
        draw.rectangle((x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)), outline=colour, width=1)
        text = class_names[int(label)] if class_names else str(int(label))
        if scores is not None:
            text += f" {float(np.asarray(scores).reshape(-1)[i]):.2f}"
        draw.text((x1 + 1, y2 + 1 if below else max(0.0, y1 - 11)), text, fill=colour)


def draw_detections(image: np.ndarray | torch.Tensor, detections: Detections, path: str | Path,
                    class_names: Sequence[str] | None = None, *, ground_truth: Detections | None = None,
                    score_threshold: float = 0.3, scale: int = 2) -> Path:
    """PNG of `image` with predicted boxes (red, label and score above) scoring at least
    `score_threshold`, and optionally ground-truth boxes (green, label below). Written atomically."""
    pic = Image.fromarray(to_uint8_hwc(image))
    pic = pic.resize((pic.width * scale, pic.height * scale), Image.NEAREST) if scale != 1 else pic
    draw = ImageDraw.Draw(pic)
    if ground_truth is not None:
        _draw(draw, ground_truth["boxes"], ground_truth["labels"], TRUTH_COLOUR, scale, class_names, below=True)
    scores = np.asarray(detections["scores"], np.float64).reshape(-1)
    keep = scores >= score_threshold
    _draw(draw, np.asarray(detections["boxes"], np.float64).reshape(-1, 4)[keep],
          np.asarray(detections["labels"]).reshape(-1)[keep], PREDICTION_COLOUR, scale, class_names, scores[keep])
    buf = io.BytesIO()
    pic.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
