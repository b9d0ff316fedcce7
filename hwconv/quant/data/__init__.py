"""Offline detection data: one Dataset interface over synthetic, deepforest, VOC and COCO sources.

Every dataset yields (image 3xHxW float32 in [0, 1], {"boxes": (N,4) float32 xyxy pixels,
"labels": (N,) int64, "image_id": int64 scalar = the dataset index}); `collate` batches them and
`to_coco_json` exports the ground truth for pycocotools. Nothing is downloaded: see sources.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from .base import DataFormatError, DetectionDataset, Transform, collate
from .coco import COCODetection
from .deepforest import DeepForestTiles
from .sources import SourceMissingError
from .synthetic import SyntheticDetection
from .transforms import Letterbox
from .voc import VOC_CLASSES, VOCDetection

__all__ = [
    "COCODetection", "DataFormatError", "DeepForestTiles", "DetectionDataset", "Letterbox",
    "SourceMissingError", "SyntheticDetection", "Transform", "VOCDetection", "VOC_CLASSES",
    "DATASETS", "DEFAULT_SPLITS", "CATEGORY_ID_OFFSET", "collate", "detections_to_coco", "load_dataset",
    "open_split", "to_coco_json",
]

DATASETS = ("synthetic", "deepforest", "voc", "coco")
# (training split, validation split) of each source: what quantize trains and evaluates on and
# what validate scores by default, so the two figures are of the same images.
DEFAULT_SPLITS: dict[str, tuple[str, str]] = {
    "synthetic": ("train", "val"), "deepforest": ("train", "test"), "voc": ("train", "val"),
    "coco": ("train2017", "val2017"),
}
CATEGORY_ID_OFFSET = 1  # COCO category id = label + 1: ids start at 1 by COCO convention


def load_dataset(name: str, split: str, **kw: Any) -> DetectionDataset:
    """A dataset by name. synthetic: split train/val/test, options of SyntheticDetection.
    deepforest: split train/test (or all), options of DeepForestTiles. voc: root=<VOC folder>,
    split = an ImageSets/Main list (train, val, trainval, test). coco: root=<folder>, reads
    root/annotations/instances_<split>.json and images from root/<split>/ (COCO 2017 layout with
    split="val2017"); ann_file=... and image_dir=... override either."""
    if name == "synthetic":
        return SyntheticDetection(split, **kw)
    if name == "deepforest":
        return DeepForestTiles(split, **kw)
    if name in ("voc", "coco") and "root" not in kw:
        raise TypeError(f"load_dataset({name!r}, ...) needs root=<path to the {name.upper()} folder>")
    if name == "voc":
        return VOCDetection(kw.pop("root"), split, **kw)
    if name == "coco":
        root = Path(kw.pop("root"))
        ann_file = kw.pop("ann_file", root / "annotations" / f"instances_{split}.json")
        image_dir = kw.pop("image_dir", root / split)
        return COCODetection(image_dir, ann_file, **kw)
    raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")


def open_split(name: str, split: str | None = None, *, role: str = "val", root: str | Path | None = None,
               image_size: int = 128, num_images: int | None = None, seed: int = 0,
               classes: tuple[str, ...] | None = None) -> DetectionDataset:
    """One split of a named source as a user names it on the command line: `split` or the
    source's default for `role` ("train" or "val", DEFAULT_SPLITS); VOC/COCO need `root`.
    `classes`: the detector's class names; VOC reads its objects with them (None: the sorted
    names in the split), any other source must have exactly these classes."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")
    if role not in ("train", "val"):
        raise ValueError(f"role must be 'train' or 'val', got {role!r}")
    split = split or DEFAULT_SPLITS[name][role == "val"]
    if name in ("voc", "coco") and not root:
        raise ValueError(f"--data {name} needs --data-root (the dataset folder)")
    if name == "synthetic":
        kw: dict[str, Any] = {"image_size": image_size, "seed": seed}
        dataset = load_dataset(name, split, **kw, **({} if num_images is None else {"num_images": num_images}))
    elif name == "deepforest":
        dataset = load_dataset(name, split)
    elif name == "voc":
        dataset = load_dataset(name, split, root=root, classes=None if classes is None else tuple(classes))
    else:
        dataset = load_dataset(name, split, root=root)
    if classes is not None and tuple(dataset.class_names) != tuple(classes):
        raise DataFormatError(
            f"{name}/{split}: its {dataset.num_classes} classes ({', '.join(dataset.class_names[:8])}"
            f"{', ...' if dataset.num_classes > 8 else ''}) are not the detector's {len(classes)} "
            f"({', '.join(tuple(classes)[:8])}{', ...' if len(classes) > 8 else ''})")
    return dataset


def to_coco_json(dataset: DetectionDataset) -> dict[str, Any]:
    """Ground truth in COCO format: image id = dataset index, category id = label + 1,
    annotation ids from 1 (pycocotools treats id 0 as 'unmatched')."""
    images, annotations = [], []
    for index in range(len(dataset)):
        height, width, boxes, labels = dataset.annotation(index)
        images.append({"id": index, "width": int(width), "height": int(height),
                       "file_name": f"{index:08d}.png"})
        for (x1, y1, x2, y2), label in zip(np.asarray(boxes, np.float64).reshape(-1, 4), labels):
            w, h = x2 - x1, y2 - y1
            annotations.append({"id": len(annotations) + 1, "image_id": index,
                                "category_id": int(label) + CATEGORY_ID_OFFSET,
                                "bbox": [float(x1), float(y1), float(w), float(h)],
                                "area": float(w * h), "iscrowd": 0})
    categories = [{"id": i + CATEGORY_ID_OFFSET, "name": name}
                  for i, name in enumerate(dataset.class_names)]
    return {"images": images, "annotations": annotations, "categories": categories}


def detections_to_coco(image_id: int, detections: Mapping[str, torch.Tensor | np.ndarray]
                       ) -> list[dict[str, Any]]:
    """One image's detections (boxes xyxy, scores, labels; as from centernet.decode) as COCO
    result records, with the category ids to_coco_json uses."""
    boxes = np.asarray(detections["boxes"], np.float64).reshape(-1, 4)
    scores = np.asarray(detections["scores"], np.float64).reshape(-1)
    labels = np.asarray(detections["labels"]).reshape(-1)
    return [{"image_id": int(image_id), "category_id": int(label) + CATEGORY_ID_OFFSET,
             "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)], "score": float(s)}
            for (x1, y1, x2, y2), s, label in zip(boxes, scores, labels)]
