"""Write a detection set as a Pascal VOC folder (Annotations, JPEGImages, ImageSets/Main), e.g.
the semi-synthetic digits at a camera-like size, to train and validate through the same VOC path
a user's data takes.

    python -m hwconv.quant.data.voc_writer OUT [--train 2000] [--val 300] [--size 500x375]
        [--classes 10] [--objects 1,4] [--scale 0.15,0.4]

--classes N keeps the digits zero..N-1 (named "zero", "one", ...); --objects and --scale are the
generator's objects per image and digit height as a fraction of the rendered side (see
synthetic.render): fewer, larger digits of fewer classes make a set a small network learns in
minutes on a CPU.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path
from typing import Sequence
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image

from ...fileio import OutputPathError, atomic_write_bytes, atomic_write_text, check_output_path
from ...options import nonnegative_int, positive_int
from .base import DetectionDataset

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def voc_xml(filename: str, width: int, height: int, boxes: np.ndarray, names: Sequence[str]) -> str:
    """One annotation; boxes are continuous 0-based xyxy, written 1-based inclusive (VOC)."""
    objects = []
    for (x1, y1, x2, y2), name in zip(np.asarray(boxes, np.float64).reshape(-1, 4), names):
        xmin, ymin = int(round(x1)) + 1, int(round(y1)) + 1
        xmax, ymax = max(xmin, int(round(x2))), max(ymin, int(round(y2)))
        objects.append(f"  <object><name>{escape(name)}</name><difficult>0</difficult><bndbox><xmin>{xmin}</xmin>"
                       f"<ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>\n")
    return (f"<annotation>\n  <filename>{escape(filename)}</filename>\n  <size><width>{width}</width>"
            f"<height>{height}</height><depth>3</depth></size>\n{''.join(objects)}</annotation>\n")


def write_voc(dataset: DetectionDataset, root: str | Path, split: str, *, size: tuple[int, int] | None = None,
              class_names: Sequence[str] | None = None, prefix: str | None = None, quality: int = 95) -> int:
    """Write every image of `dataset` (resized to size=(width, height) when given, boxes scaled per
    axis) as JPEG with its VOC annotation, and ImageSets/Main/<split>.txt. `class_names` renames
    the dataset's classes. Returns the image count."""
    root = Path(root)
    names = tuple(class_names or dataset.class_names)
    if len(names) != dataset.num_classes:
        raise ValueError(f"class_names has {len(names)} names, the dataset {dataset.num_classes} classes")
    prefix = prefix or split
    ids = []
    for i in range(len(dataset)):
        image, boxes, labels = dataset.load(i)
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        if size is not None and (image.shape[1], image.shape[0]) != tuple(size):
            sx, sy = size[0] / image.shape[1], size[1] / image.shape[0]
            image = np.asarray(Image.fromarray(image).resize(tuple(size), Image.BILINEAR))
            boxes = boxes * np.array([sx, sy, sx, sy])
        image_id = f"{prefix}_{i:06d}"
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG", quality=quality)
        atomic_write_bytes(root / "JPEGImages" / f"{image_id}.jpg", buf.getvalue())
        atomic_write_text(root / "Annotations" / f"{image_id}.xml",
                          voc_xml(f"{image_id}.jpg", image.shape[1], image.shape[0], boxes,
                                  [names[int(c)] for c in labels]))
        ids.append(image_id)
    atomic_write_text(root / "ImageSets" / "Main" / f"{split}.txt", "".join(f"{i}\n" for i in ids))
    return len(ids)


def _width_x_height(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"{text!r}: give WIDTHxHEIGHT, e.g. 500x375")
    return positive_int(parts[0]), positive_int(parts[1])


def _pair(text: str, kind: type) -> tuple:
    parts = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"{text!r}: give MIN,MAX")
    try:
        lo, hi = kind(parts[0]), kind(parts[1])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: MIN and MAX must be {kind.__name__} numbers") from None
    if not lo <= hi:
        raise argparse.ArgumentTypeError(f"{text!r}: MIN must not exceed MAX")
    return lo, hi


def _objects(text: str) -> tuple[int, int]:
    lo, hi = _pair(text, int)
    if lo < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: at least 1 object per image")
    return lo, hi


def _scale(text: str) -> tuple[float, float]:
    lo, hi = _pair(text, float)
    if not 0 < lo <= hi <= 1:
        raise argparse.ArgumentTypeError(f"{text!r}: digit heights are fractions of the side, 0 < MIN <= MAX <= 1")
    return lo, hi


def _class_count(text: str) -> int:
    n = positive_int(text)
    if n > len(DIGIT_NAMES):
        raise argparse.ArgumentTypeError(f"{n} must be at most {len(DIGIT_NAMES)} (the digits)")
    return n


def main(argv: list[str] | None = None) -> int:
    from . import load_dataset

    p = argparse.ArgumentParser(description="semi-synthetic digits on photos as a VOC folder")
    p.add_argument("out")
    p.add_argument("--train", type=nonnegative_int, default=2000)
    p.add_argument("--val", type=nonnegative_int, default=300)
    p.add_argument("--size", type=_width_x_height, default="500x375", help="WIDTHxHEIGHT of the written images")
    p.add_argument("--render", type=positive_int, default=512, help="side the digits are rendered at before resizing")
    p.add_argument("--classes", type=_class_count, default=10, help="N: the digits zero..N-1 (default 10)")
    p.add_argument("--objects", type=_objects, default=(1, 4), metavar="MIN,MAX",
                   help="digits per image (default 1,4)")
    p.add_argument("--scale", type=_scale, default=(0.15, 0.4), metavar="MIN,MAX",
                   help="digit height as a fraction of the rendered side (default 0.15,0.4)")
    args = p.parse_args(argv)
    try:
        check_output_path(args.out, option="OUT", kind="dir")   # before rendering anything
    except OutputPathError as exc:
        p.error(str(exc))
    w, h = args.size
    digits = DIGIT_NAMES[:args.classes]
    for split, n in (("train", args.train), ("val", args.val)):
        ds = load_dataset("synthetic", split, image_size=args.render, num_images=n, num_classes=args.classes,
                          objects_per_image=args.objects, scale_range=args.scale)
        write_voc(ds, args.out, split, size=(w, h), class_names=digits)
        print(f"{args.out}: {split} {n} images {w}x{h}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
