"""Hand-annotated tree crowns from the deepforest 2.1.0 wheel, tiled into fixed-size tiles.

The wheel ships 4 annotated aerial RGB images (10 cm/px NEON orthophotos, 951 crowns, Pascal VOC
xml with 1-based inclusive coordinates: the boxes reach xmin=1 and xmax=width). One class, "tree":
SOAP_061's Alive/Dead labels are merged.

Split by IMAGE, never by tile, so no tree is in both: test is 2019_YELL_2_541000_4977000_image_crop
(1249x1035, 279 crowns), train the other three (672 crowns). The default overlap (128) is larger
than the largest crown (108 px), so every crown lies whole inside at least one tile.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from .base import Annotation, DetectionDataset, Sample, Transform
from .sources import deepforest_annotated_images
from .voc import image_size, parse_voc_xml, read_image

TEST_IMAGES = ("2019_YELL_2_541000_4977000_image_crop",)
SPLITS = ("train", "test", "all")


def annotated_images(split: str = "all") -> list[tuple[str, Path, np.ndarray]]:
    """(name, png path, boxes (N,4) xyxy) for each whole image of a split, sorted by name."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    out = []
    for png, xml in deepforest_annotated_images():
        name = png.stem
        if split == "all" or (name in TEST_IMAGES) == (split == "test"):
            ann = parse_voc_xml(xml)
            out.append((name, png, np.asarray([o.box for o in ann.objects], np.float32).reshape(-1, 4)))
    return out


def tile_origins(length: int, tile: int, stride: int) -> list[int]:
    """Tile starts covering [0, length): regular steps, the last tile flush with the far edge."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def clip_to_tile(boxes: np.ndarray, x0: int, y0: int, tile: int, min_visibility: float) -> np.ndarray:
    """Boxes shifted into tile coordinates and clipped; boxes with less than `min_visibility` of
    their area inside the tile are dropped (a sliver of crown teaches the wrong box)."""
    shifted = boxes - np.float32([x0, y0, x0, y0])
    clipped = np.clip(shifted, 0.0, float(tile))
    area = (shifted[:, 2] - shifted[:, 0]) * (shifted[:, 3] - shifted[:, 1])
    inside = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    keep = (inside >= min_visibility * area) & (clipped[:, 2] - clipped[:, 0] >= 1) & \
           (clipped[:, 3] - clipped[:, 1] >= 1)
    return clipped[keep]


@lru_cache(maxsize=4)
def _pixels(path: Path) -> np.ndarray:
    image = read_image(path)
    image.setflags(write=False)
    return image


class DeepForestTiles(DetectionDataset):
    """tile_size x tile_size crops (zero-padded past the image edge) of one split's images."""

    class_names = ("tree",)

    def __init__(self, split: str = "train", *, tile_size: int = 256, overlap: int = 128,
                 min_visibility: float = 0.5, transform: Transform | None = None) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if not 0 <= overlap < tile_size:
            raise ValueError(f"overlap must be in [0, tile_size), got {overlap} for tile {tile_size}")
        self.split, self.tile_size = split, tile_size
        self.images = annotated_images(split)
        self.tiles: list[tuple[int, int, int, np.ndarray]] = []  # image index, x0, y0, boxes
        for k, (_, png, boxes) in enumerate(self.images):
            width, height = image_size(png)  # header only: no decode at construction
            for y0 in tile_origins(height, tile_size, tile_size - overlap):
                for x0 in tile_origins(width, tile_size, tile_size - overlap):
                    self.tiles.append((k, x0, y0, clip_to_tile(boxes, x0, y0, tile_size, min_visibility)))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.tiles)

    def load(self, index: int) -> Sample:
        k, x0, y0, boxes = self.tiles[index]
        image = _pixels(self.images[k][1])
        tile = np.zeros((self.tile_size, self.tile_size, 3), np.uint8)
        crop = image[y0:y0 + self.tile_size, x0:x0 + self.tile_size]
        tile[:crop.shape[0], :crop.shape[1]] = crop
        return tile, boxes.copy(), np.zeros(len(boxes), np.int64)

    def raw_annotation(self, index: int) -> Annotation:
        boxes = self.tiles[index][3]
        return self.tile_size, self.tile_size, boxes.copy(), np.zeros(len(boxes), np.int64)
