"""Pascal VOC folders: Annotations/*.xml, JPEGImages/*.jpg, ImageSets/Main/<split>.txt.

VOC boxes are 1-based and inclusive (xmin=1, xmax=W covers the whole width); they become
continuous 0-based xyxy as x1 = xmin - 1, x2 = xmax. xml.etree is safe here: Python >= 3.7.1 does
not resolve external entities and the bundled expat (>= 2.4) limits entity amplification.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ... import imageio
from ...fileio import read_capped
from .base import Annotation, DataFormatError, DetectionDataset, Sample, Transform, data_errors, file_in

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)
COORDS = ("xmin", "ymin", "xmax", "ymax")
VOC_XML_MAX_BYTES = 16 * 1024 * 1024    # one image's annotation: real ones are ~1 KB
SPLIT_LIST_MAX_BYTES = 64 * 1024 * 1024  # one id a line: millions of images
EDGE_SLACK = 1.0  # pixels a box may poke past the image edge (0-based writers) before it is an error


@dataclass(frozen=True)
class VocObject:
    name: str
    box: tuple[float, float, float, float]  # continuous 0-based xyxy
    difficult: bool


@dataclass(frozen=True)
class VocAnnotation:
    path: Path
    filename: str | None
    width: int | None
    height: int | None
    objects: tuple[VocObject, ...]


def _number(path: Path, where: str, text: str | None) -> float:
    if text is None or not text.strip():
        raise DataFormatError(f"{path}: {where} is missing or empty")
    try:
        value = float(text)
    except ValueError:
        raise DataFormatError(f"{path}: {where} is not a number: {text.strip()!r}") from None
    if not math.isfinite(value):
        raise DataFormatError(f"{path}: {where} is not finite: {text.strip()!r}")
    return value


def _size(path: Path, root: ET.Element) -> tuple[int | None, int | None]:
    size = root.find("size")
    if size is None:
        return None, None
    width = _number(path, "<size>/<width>", size.findtext("width"))
    height = _number(path, "<size>/<height>", size.findtext("height"))
    if width <= 0 or height <= 0 or width != int(width) or height != int(height):
        raise DataFormatError(f"{path}: <size> must be positive integers, got {width} x {height}")
    return int(width), int(height)


def parse_voc_xml(path: str | Path, fallback_size: tuple[int, int] | None = None) -> VocAnnotation:
    """One annotation file, validated: every object has a name and a well-ordered bndbox inside
    the image (within EDGE_SLACK, then clipped). `fallback_size` (width, height) stands in for a
    missing <size>, typically read from the image header."""
    path = Path(path)
    with data_errors():   # a FIFO, a device or a huge file: refused before parsing
        text = read_capped(path, limit=VOC_XML_MAX_BYTES, what="annotation")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise DataFormatError(f"{path}: not well-formed XML ({e})") from None
    if root.tag != "annotation":
        raise DataFormatError(f"{path}: root element is <{root.tag}>, expected <annotation>")
    width, height = _size(path, root)
    if width is None and fallback_size is not None:
        width, height = fallback_size
    objects = []
    for i, obj in enumerate(root.findall("object")):
        name = (obj.findtext("name") or "").strip()
        where = f"<object> #{i} ({name or 'no name'})"
        if not name:
            raise DataFormatError(f"{path}: {where} has no <name>")
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise DataFormatError(f"{path}: {where} has no <bndbox>")
        xmin, ymin, xmax, ymax = (_number(path, f"{where} <bndbox>/<{k}>", bndbox.findtext(k))
                                  for k in COORDS)
        if xmax < xmin or ymax < ymin:
            raise DataFormatError(f"{path}: {where} has bad coordinates xmin={xmin} ymin={ymin} "
                                  f"xmax={xmax} ymax={ymax} (need xmin <= xmax and ymin <= ymax)")
        x1, y1, x2, y2 = xmin - 1.0, ymin - 1.0, xmax, ymax
        if width is not None and height is not None:
            if (x1 < -EDGE_SLACK or y1 < -EDGE_SLACK or x2 > width + EDGE_SLACK
                    or y2 > height + EDGE_SLACK):
                raise DataFormatError(
                    f"{path}: {where} has bad coordinates xmin={xmin} ymin={ymin} xmax={xmax} "
                    f"ymax={ymax}: outside the {width}x{height} image")
            x1, x2 = max(0.0, x1), min(float(width), x2)
            y1, y2 = max(0.0, y1), min(float(height), y2)
        difficult = (obj.findtext("difficult") or "0").strip() not in ("0", "")
        objects.append(VocObject(name, (x1, y1, x2, y2), difficult))
    filename = root.findtext("filename")
    return VocAnnotation(path, filename.strip() if filename else None, width, height, tuple(objects))


def read_image(path: Path) -> np.ndarray:
    """hwconv.imageio.read_image (regular files only, pixel cap, 16-bit grey scaled) as DataFormatError."""
    with data_errors():
        return imageio.read_image(path)


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels (hwconv.imageio.image_size)."""
    with data_errors():
        return imageio.image_size(path)


def read_split_list(path: Path) -> list[str]:
    """The image ids of a split list (ImageSets/Main/<split>.txt), one a line, first word of each."""
    with data_errors():
        raw = read_capped(path, limit=SPLIT_LIST_MAX_BYTES, what="split list")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataFormatError(f"{path}: split list is not UTF-8 text (byte {e.start}: {e.reason})") from None
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def annotation_arrays(ann: VocAnnotation, classes: tuple[str, ...], keep_difficult: bool
                      ) -> tuple[np.ndarray, np.ndarray]:
    index = {name: i for i, name in enumerate(classes)}
    kept = [o for o in ann.objects if keep_difficult or not o.difficult]
    for o in kept:
        if o.name not in index:
            raise DataFormatError(f"{ann.path}: <object> <name> {o.name!r} is not a known category "
                                  f"(known: {', '.join(classes)}); name every class with --classes")
    boxes = np.asarray([o.box for o in kept], np.float32).reshape(-1, 4)
    labels = np.asarray([index[o.name] for o in kept], np.int64)
    return boxes, labels


class VOCDetection(DetectionDataset):
    """A VOC-layout folder. All annotations are parsed up front so a malformed file fails at
    construction, not hours into training. `classes=None` takes the sorted names in this split."""

    def __init__(self, root: str | Path, split: str = "trainval", *,
                 classes: tuple[str, ...] | None = VOC_CLASSES, keep_difficult: bool = False,
                 transform: Transform | None = None) -> None:
        self.root = Path(root)
        ids_file = self.root / "ImageSets" / "Main" / f"{split}.txt"
        if not ids_file.exists():
            raise DataFormatError(f"{ids_file}: split list missing (expected one image id per line)")
        ids = read_split_list(ids_file)
        self.items: list[tuple[Path, VocAnnotation]] = []
        for line, image_id in enumerate(ids, 1):
            xml = file_in(self.root / "Annotations", f"{image_id}.xml", f"{ids_file}: id #{line}")
            ann = parse_voc_xml(xml)
            path = self._image_path(image_id, ann)
            if ann.width is None:  # no <size>: validate the boxes against the real image
                ann = parse_voc_xml(xml, fallback_size=image_size(path))
            self.items.append((path, ann))
        if classes is None:
            classes = tuple(sorted({o.name for _, a in self.items for o in a.objects}))
            if not classes:
                raise DataFormatError(f"{ids_file}: no <object> in any annotation of this split, so no class "
                                      "names; give them (--classes)")
        self.class_names = tuple(classes)
        self.keep_difficult = keep_difficult
        self.transform = transform
        self._arrays = [annotation_arrays(a, self.class_names, keep_difficult) for _, a in self.items]

    def _image_path(self, image_id: str, ann: VocAnnotation) -> Path:
        images = self.root / "JPEGImages"
        candidates = [images / f"{image_id}.jpg"]
        if ann.filename:
            candidates.append(file_in(images, ann.filename, f"{ann.path}: <filename>"))
        for path in candidates:
            if path.is_file():
                return path
        raise DataFormatError(f"{ann.path}: image missing: none of "
                              f"{', '.join(str(p) for p in candidates)} exists")

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> Sample:
        path, ann = self.items[index]
        image = read_image(path)
        if (image.shape[1], image.shape[0]) != (ann.width, ann.height):
            raise DataFormatError(f"{ann.path}: <size> says {ann.width}x{ann.height} but {path} is "
                                  f"{image.shape[1]}x{image.shape[0]}")
        boxes, labels = self._arrays[index]
        return image, boxes.copy(), labels.copy()

    def raw_annotation(self, index: int) -> Annotation:
        path, ann = self.items[index]
        width, height = ann.width, ann.height
        boxes, labels = self._arrays[index]
        return height, width, boxes.copy(), labels.copy()
