"""COCO folders: an instances json (images, annotations, categories) and a folder of images.

COCO bboxes are [x, y, width, height] in continuous 0-based pixels, so xyxy is [x, y, x+w, y+h].
Category ids (sparse in COCO: 1..90 for 80 classes) map to contiguous labels in id order.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ...fileio import read_json
from .base import Annotation, DataFormatError, DetectionDataset, Sample, Transform, data_errors, file_in
from .voc import EDGE_SLACK, image_size, read_image


def _field(where: str, record: Any, key: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(record, dict) or key not in record:
        raise DataFormatError(f"{where}: field {key!r} is missing")
    value = record[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DataFormatError(
            f"{where}: field {key!r} has the wrong type ({type(value).__name__}: {value!r})")
    return value


COCO_JSON_MAX_BYTES = 2 * 1024 ** 3  # instances_train2017.json is 448 MB


def _finite(value: Any) -> bool:
    """A JSON number usable as a float: an integer too large for one (1 followed by 400 zeros) is not."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def load_coco_json(path: str | Path) -> dict[str, Any]:
    """The annotation file through hwconv.fileio.read_json: a regular file under a size cap, JSON
    nested at most fileio.JSON_MAX_DEPTH deep (a 100k-deep file is one line, not a RecursionError)."""
    path = Path(path)
    if not path.exists():
        raise DataFormatError(f"{path}: annotation file missing")
    with data_errors():
        data = read_json(path, limit=COCO_JSON_MAX_BYTES, what="annotation file")
    if not isinstance(data, dict):
        raise DataFormatError(f"{path}: top level must be an object with images, annotations, categories")
    for key in ("images", "annotations", "categories"):
        _field(str(path), data, key, list)
    return data


class COCODetection(DetectionDataset):
    """Images of a COCO instances file, sorted by image id; images without boxes are kept (they
    count for evaluation). Crowd regions are dropped unless include_crowd."""

    def __init__(self, image_dir: str | Path, ann_file: str | Path, *, include_crowd: bool = False,
                 transform: Transform | None = None) -> None:
        self.image_dir = Path(image_dir)
        self.ann_file = Path(ann_file)
        data = load_coco_json(self.ann_file)
        f = str(self.ann_file)

        cat_ids: dict[int, str] = {}
        for i, cat in enumerate(data["categories"]):
            where = f"{f}: categories[{i}]"
            cid = _field(where, cat, "id", int)
            name = _field(where, cat, "name", str)
            if cid in cat_ids:
                raise DataFormatError(f"{where}: duplicate category id {cid}")
            cat_ids[cid] = name
        if not cat_ids:
            raise DataFormatError(f"{f}: 'categories' is empty: a detector needs at least one class")
        self.category_ids = tuple(sorted(cat_ids))
        self.class_names = tuple(cat_ids[c] for c in self.category_ids)
        label_of = {c: i for i, c in enumerate(self.category_ids)}

        images: dict[int, dict[str, Any]] = {}
        for i, img in enumerate(data["images"]):
            where = f"{f}: images[{i}]"
            iid = _field(where, img, "id", int)
            name = _field(where, img, "file_name", str)
            if iid in images:
                raise DataFormatError(f"{where}: duplicate image id {iid}")
            path = file_in(self.image_dir, name, f"{where} file_name")
            if not path.is_file():
                raise DataFormatError(f"{where}: image missing: {path}")
            if "width" in img or "height" in img:
                width, height = _field(where, img, "width", int), _field(where, img, "height", int)
                if width <= 0 or height <= 0:
                    raise DataFormatError(f"{where}: width/height must be positive, got {width}x{height}")
            else:
                width, height = image_size(path)
            images[iid] = {"path": path, "width": width, "height": height, "boxes": [], "labels": []}

        for i, ann in enumerate(data["annotations"]):
            where = f"{f}: annotations[{i}]"
            iid = _field(where, ann, "image_id", int)
            if iid not in images:
                raise DataFormatError(f"{where}: image_id {iid} is not an id in 'images'")
            cid = _field(where, ann, "category_id", int)
            if cid not in label_of:
                raise DataFormatError(f"{where}: category_id {cid} is not an id in 'categories' "
                                      f"(known: {list(self.category_ids)})")
            if ann.get("iscrowd", 0) and not include_crowd:
                continue
            bbox = _field(where, ann, "bbox", list)
            if len(bbox) != 4 or not all(_finite(v) for v in bbox):
                raise DataFormatError(f"{where}: bbox must be 4 finite numbers [x, y, w, h], got {bbox!r}")
            x, y, w, h = (float(v) for v in bbox)
            img = images[iid]
            if (w <= 0 or h <= 0 or x < -EDGE_SLACK or y < -EDGE_SLACK
                    or x + w > img["width"] + EDGE_SLACK or y + h > img["height"] + EDGE_SLACK):
                raise DataFormatError(f"{where}: bad bbox {bbox!r} (need w > 0, h > 0, inside the "
                                      f"{img['width']}x{img['height']} image {img['path'].name})")
            img["boxes"].append((max(0.0, x), max(0.0, y), min(float(img["width"]), x + w),
                                 min(float(img["height"]), y + h)))
            img["labels"].append(label_of[cid])

        self.image_ids = tuple(sorted(images))
        self._images = [images[i] for i in self.image_ids]
        self.transform = transform

    def __len__(self) -> int:
        return len(self._images)

    def _arrays(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        img = self._images[index]
        return (np.asarray(img["boxes"], np.float32).reshape(-1, 4),
                np.asarray(img["labels"], np.int64))

    def load(self, index: int) -> Sample:
        img = self._images[index]
        image = read_image(img["path"])
        if (image.shape[1], image.shape[0]) != (img["width"], img["height"]):
            raise DataFormatError(f"{self.ann_file}: image id {self.image_ids[index]} says "
                                  f"{img['width']}x{img['height']} but {img['path']} is "
                                  f"{image.shape[1]}x{image.shape[0]}")
        return (image, *self._arrays(index))

    def raw_annotation(self, index: int) -> Annotation:
        img = self._images[index]
        return (img["height"], img["width"], *self._arrays(index))
