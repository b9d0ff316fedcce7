"""AP and output integers of the integer path (the exported program on the golden model) vs the
fake-quant path, on a dataset: what `hwconv quantize --verify-ap` reports, and what
benchmarks/integer.py measures on a trained detector."""

from __future__ import annotations

import time
from typing import Any

import torch

from ..driver.decode import decode_heads
from ..spec import Program
from .checkpoint import eval_mode
from .data import DetectionDataset
from .evaluate import DECODE_K, DECODE_THRESHOLD, evaluate_outputs, to_image_coordinates
from .verify import ElementStats, dequantise, fake_quant_integers, float64_copy, golden_integers

TARGET_IDENTICAL = 0.999      # issue 3's must-show
TARGET_AP50_POINTS = 0.2


def _decode(outputs: dict[str, torch.Tensor], input_size: int) -> list[dict[str, torch.Tensor]]:
    """evaluate.predict's (and `hwconv validate`'s) decoding of dequantised (1, C, H, W) heads."""
    heads = {k: v[0].double().numpy() for k, v in outputs.items()}
    det = decode_heads(heads["hm"], heads["wh"], heads["reg"], stride=input_size / heads["hm"].shape[-2],
                       k=DECODE_K, score_threshold=DECODE_THRESHOLD)
    return [{k: torch.from_numpy(v) for k, v in det.items()}]


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    disable=not enabled, transient=False)


@torch.no_grad()
def integer_vs_fakequant(model: torch.nn.Module, program: Program, dataset: DetectionDataset, *,
                         images: int | None = None, batch_size: int = 16, progress: bool = True) -> dict[str, Any]:
    """The golden program vs the fake-quant model over the first `images` images of `dataset`.

    The fake-quant model runs twice: in float64 (the reference: its exact values, see verify.py)
    and in float32 (as PyTorch trains and evaluates it). Every path is decoded from its output
    integers dequantised the same way. Returns element statistics vs float64 ("identical",
    "outputs"), the same vs float32 under "float32", COCO AP/AP50 of "fake_quant" (float64),
    "fake_quant_float32" and "integer", and integer minus fake-quant differences in points."""
    if dataset.num_classes != model.cfg.num_classes:
        raise ValueError(f"the dataset has {dataset.num_classes} classes, the detector {model.cfg.name!r} "
                         f"predicts {model.cfg.num_classes}: evaluate it on the data it was trained for")
    size = model.cfg.input_size
    n = len(dataset) if images is None else min(images, len(dataset))
    if n < 1:
        raise ValueError("integer_vs_fakequant: no validation images")
    model64 = float64_copy(model)
    vs64, vs32 = ElementStats(), ElementStats()
    dets: dict[str, list[dict[str, torch.Tensor]]] = {"fake_quant": [], "fake_quant_float32": [], "integer": []}
    golden_s = 0.0
    with eval_mode(model), _progress(progress) as bar:
        task = bar.add_task("golden vs fake-quant", total=n)
        for start in range(0, n, batch_size):
            batch = torch.stack([dataset[i][0] for i in range(start, min(n, start + batch_size))])
            if batch.shape[-2:] != (size, size):
                raise ValueError(f"image {start}: {tuple(batch.shape[-2:])} pixels, the detector takes {size}x{size}")
            fq32, fq64 = model(batch), model64(batch.double())
            for j in range(batch.shape[0]):
                t0 = time.perf_counter()
                ints = {"integer": golden_integers(program, batch[j])}
                golden_s += time.perf_counter() - t0
                ints["fake_quant"] = fake_quant_integers({k: v[j] for k, v in fq64.items()}, program)
                ints["fake_quant_float32"] = fake_quant_integers({k: v[j] for k, v in fq32.items()}, program)
                vs64.add(ints["fake_quant"], ints["integer"])
                vs32.add(ints["fake_quant_float32"], ints["integer"])
                for path, v in ints.items():
                    dets[path] += _decode({k: t[None] for k, t in dequantise(v, program).items()}, size)
                bar.advance(task)
    metrics = {path: evaluate_outputs(to_image_coordinates(d, dataset), dataset) for path, d in dets.items()}
    points = lambda a, b: None if a is None or b is None else round(100 * (a - b), 3)  # noqa: E731
    ap = {path: {"AP50": m["AP50"], "AP": m["AP"]} for path, m in metrics.items()}
    return {"images": n, **vs64.summary(), "float32": vs32.summary(), **ap,
            "delta_AP50_points": points(ap["integer"]["AP50"], ap["fake_quant"]["AP50"]),
            "delta_AP_points": points(ap["integer"]["AP"], ap["fake_quant"]["AP"]),
            "delta_AP50_points_float32": points(ap["integer"]["AP50"], ap["fake_quant_float32"]["AP50"]),
            "golden_s_per_image": round(golden_s / n, 4),
            "golden_detections": dets["integer"], "fake_quant_detections": dets["fake_quant"]}


def meets_targets(report: dict[str, Any]) -> bool:
    d = report["delta_AP50_points"]
    return report["identical"] >= TARGET_IDENTICAL and d is not None and abs(d) <= TARGET_AP50_POINTS


def validation_set(data: str, size: int, *, images: int, root: str | None = None, seed: int = 0,
                   split: str | None = None, classes: tuple[str, ...] | None = None) -> DetectionDataset:
    """The first `images` images of a named dataset's validation split seen through the deployment
    preprocessing (data.prepare.PreparedSet: letterboxed to `size`, scored in the original
    images' coordinates): synthetic "val" (rendered with `seed`), deepforest "test", VOC "val",
    COCO "val2017" under `root` (data.DEFAULT_SPLITS); `classes`: the detector's class names."""
    from .data import open_split
    from .data.prepare import PreparedSet

    source = open_split(data, split, root=root, image_size=size, num_images=images, seed=seed, classes=classes)
    return PreparedSet(source, size, limit=images)
