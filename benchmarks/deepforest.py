"""Real-data benchmark: a CoDeNet detector on the deepforest tree crowns, float vs W4A8 AP/AP50.

    python -m benchmarks.deepforest OUT_DIR --minutes 8

Config a (ShuffleNetV2 1x, stride-4 stem, 256 px input), one class: the smallest published
CoDeNet configuration, and its 256 px input is the tile size of the tree-crown set at its native
10 cm/px, so crowns (12-109 px) are seen unscaled. Config c would quadruple the MACs for 512 px
tiles whose crowns are just as large; nothing is gained by upsampling.

Data (data/deepforest.py): the three training images, tiled 256 px with overlap 192 (stride 64),
each tile also in the other 7 orientations of the square (flips and 90-degree turns, exact for
nadir aerial imagery: no crown has an up); the test image (279 crowns) is never trained on, tiled
with the default overlap 128. Training: float, then W4A8 QAT of the same model
(bench_train.float_then_qat), within the time budget. The figures are those of the final model;
the test set is also scored during training (the curves) but selects nothing.

Outputs: deepforest.json (all figures and curves), deepforest.md (the table), and
deepforest_detections.png (a test tile, W4A8 detections in red, ground truth in green).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hwconv.fileio import atomic_write_text

from benchmarks.ablation import detector_gmac, device_description, resolve_device
from benchmarks.train import Recipe, add_recipe_arguments, float_then_qat, recipe_from_args
from hwconv.quant.data import DeepForestTiles, DetectionDataset
from hwconv.quant.data.base import Annotation, Sample
from hwconv.quant.evaluate import draw_detections, predict
from hwconv.quant.info import model_stats
from hwconv.quant.models import build_detector
from hwconv.quant.train import InMemoryDataset

CONFIG = "a"
TILE = 256
TEST_OVERLAP = 128
DEFAULT_RECIPE = Recipe(batch_size=32, lr=2e-3, qat_lr=2e-4, eval_every=4)
ORIENTATIONS = 8  # the dihedral group of the square


def orient(image: np.ndarray, boxes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Orientation k in 0..7 of a square image and its xyxy boxes: bit 0 mirrors left-right,
    bit 1 top-bottom, bit 2 transposes (after the mirrors)."""
    size = image.shape[0]
    if image.shape[1] != size:
        raise ValueError(f"orient needs a square image, got {image.shape[:2]}")
    b = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
    if k & 1:
        image = image[:, ::-1]
        b[:, [0, 2]] = size - b[:, [2, 0]]
    if k & 2:
        image = image[::-1]
        b[:, [1, 3]] = size - b[:, [3, 1]]
    if k & 4:
        image = image.transpose(1, 0, 2)
        b = b[:, [1, 0, 3, 2]]
    return np.ascontiguousarray(image), b


class AllOrientations(DetectionDataset):
    """Every tile of `base` in each of its 8 orientations (index = tile * 8 + orientation)."""

    def __init__(self, base: DetectionDataset) -> None:
        self.base = base
        self.class_names = base.class_names

    def __len__(self) -> int:
        return len(self.base) * ORIENTATIONS

    def load(self, index: int) -> Sample:
        image, boxes, labels = self.base.sample(index // ORIENTATIONS)
        image, boxes = orient(image, boxes, index % ORIENTATIONS)
        return image, boxes, labels

    def raw_annotation(self, index: int) -> Annotation:
        image, boxes, labels = self.load(index)
        return image.shape[0], image.shape[1], boxes, labels


def deepforest_data(train_overlap: int, augment: bool) -> dict[str, DetectionDataset]:
    train_tiles = InMemoryDataset(DeepForestTiles("train", tile_size=TILE, overlap=train_overlap))
    return {"train": AllOrientations(train_tiles) if augment else train_tiles,
            "val": InMemoryDataset(DeepForestTiles("test", tile_size=TILE, overlap=TEST_OVERLAP))}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.deepforest", description=__doc__.splitlines()[0])
    p.add_argument("out_dir", type=Path, help="folder for deepforest.json, deepforest.md, deepforest_detections.png")
    p.add_argument("--minutes", type=float, default=8.0, help="total training budget (default 8)")
    p.add_argument("--train-overlap", type=int, default=192, help="training tile overlap in px (default 192)")
    p.add_argument("--no-augment", action="store_true", help="train on the tiles as they are (no orientations)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_recipe_arguments(p, DEFAULT_RECIPE)
    args = p.parse_args(argv)
    if args.minutes <= 0:
        p.error("--minutes must be > 0")
    if not 0 <= args.train_overlap < TILE:
        p.error(f"--train-overlap must be in [0, {TILE}), got {args.train_overlap}")
    try:
        args.recipe = recipe_from_args(args)
    except ValueError as exc:
        p.error(str(exc))
    return args


def crowns(dataset: DetectionDataset) -> int:
    return sum(len(dataset.annotation(i)[2]) for i in range(len(dataset)))


def _picture(model: torch.nn.Module, test: DetectionDataset, path: Path) -> int:
    """Draw the test tile with the most crowns; returns its index."""
    index = max(range(len(test)), key=lambda i: len(test.annotation(i)[2]))
    image, target = test[index]
    det = predict(model, torch.utils.data.Subset(test, [index]), batch_size=1)[0]  # type: ignore[arg-type]
    draw_detections(image, det, path, test.class_names, ground_truth=target, score_threshold=0.3, scale=2)
    return index


def markdown(r: dict[str, Any]) -> str:
    return ("| model | test AP50 | test AP | epochs |\n|---|---:|---:|---:|\n"
            f"| float | {r['float_AP50']:.3f} | {r['float_AP']:.3f} | {r['float']['epochs']} |\n"
            f"| W4A8 (BN folded, integer biases) | {r['w4a8_AP50']:.3f} | {r['w4a8_AP']:.3f} | "
            f"{r['qat']['epochs']} |\n\n"
            f"CoDeNet config {r['config']} ({r['input_size']} px, {r['gmac']:.3f} GMAC, {r['weight_mbytes']:.3f} MB "
            f"weights at W4A8), one class (tree). Train: {r['train_tiles']} tiles of the 3 training images "
            f"(overlap {r['train_overlap']}, x{r['orientations']} orientations, {r['train_crowns']} crown "
            f"instances); test: {r['test_tiles']} tiles of the held-out image (overlap {TEST_OVERLAP}, "
            f"{r['test_crowns']} crown instances). Budget {r['budget_s']:.0f} s on {r['device']}; "
            f"wall {r['wall_s']} s. W4A8 loses {r['delta_AP50_points']:+.1f} AP50 points.\n")


def run(args: argparse.Namespace) -> dict[str, Any]:
    start = time.perf_counter()
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = deepforest_data(args.train_overlap, augment=not args.no_augment)
    torch.manual_seed(args.recipe.seed)
    model = build_detector(CONFIG, num_classes=1)
    stats = model_stats(model) | {"gmac": detector_gmac(model)}
    model.to(device)
    with tempfile.TemporaryDirectory(prefix="hwconv-bench-deepforest-") as work:
        r = float_then_qat(model, data, args.recipe, deadline=start + args.minutes * 60, work=Path(work),
                           progress=not args.quiet)
    assert r is not None  # one process: this is rank 0
    args.out_dir.mkdir(parents=True, exist_ok=True)
    shown = _picture(model, data["val"], args.out_dir / "deepforest_detections.png")
    return {"config": CONFIG, "input_size": model.cfg.input_size, "num_classes": 1,
            "gmac": round(stats["gmac"], 4), "weight_mbytes": round(stats["weight_mbytes"], 4),
            "train_tiles": len(data["train"]), "train_overlap": args.train_overlap,
            "orientations": 1 if args.no_augment else ORIENTATIONS, "train_crowns": crowns(data["train"]),
            "test_tiles": len(data["val"]), "test_crowns": crowns(data["val"]), "picture_tile": shown,
            "budget_s": args.minutes * 60, "wall_s": round(time.perf_counter() - start, 1),
            "device": device_description(device), "torch": torch.__version__, "recipe": asdict(args.recipe), **r}


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    r = run(args)
    atomic_write_text(args.out_dir / "deepforest.json", json.dumps(r, indent=1) + "\n")
    atomic_write_text(args.out_dir / "deepforest.md", markdown(r))
    print(markdown(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
