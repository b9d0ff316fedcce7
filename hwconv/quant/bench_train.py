"""Training benchmark: the tiny detector on the synthetic digits set within a time budget, float
pre-training then W4A8 quantisation-aware fine-tuning of the same module; float AP50 vs W4A8 AP50.

    python -m hwconv.quant.bench_train results.json --minutes 10

The budget covers everything (data rendering, both phases, evaluations). Epoch counts are planned
from a measured step time so each phase's cosine schedule completes; `train(max_time_s=...)` stops
a phase early if the machine turns out slower than measured (recorded as "stopped_early").
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from hwconv.fileio import atomic_write_text

from .data import load_dataset
from .evaluate import evaluate
from .models import build_detector
from .train import InMemoryDataset, measure_step_time, train

EVAL_SECONDS_PER_IMAGE = 0.01  # generous: a tiny-model forward on 128 px is ~3 ms on 2 cores


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m hwconv.quant.bench_train", description=__doc__.splitlines()[0])
    p.add_argument("output", type=Path, help="JSON file for the results")
    p.add_argument("--minutes", type=float, default=10.0, help="total time budget (default 10)")
    p.add_argument("--float-share", type=float, default=0.55, help="share of the training time spent in float")
    p.add_argument("--train-images", type=int, default=4000)
    p.add_argument("--val-images", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3, help="float learning rate (Adam, cosine)")
    p.add_argument("--qat-lr", type=float, default=5e-4, help="QAT learning rate (Adam, cosine)")
    p.add_argument("--eval-every", type=int, default=5, help="validate every N epochs (and the last)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", type=Path, default=None, help="checkpoints and logs (default: a temp dir)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def _plan_epochs(budget_s: float, step_s: float, steps_per_epoch: int, eval_s: float, eval_every: int) -> int:
    per_epoch = step_s * steps_per_epoch + eval_s / eval_every
    return max(1, int(budget_s / per_epoch))


def _curve(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keys = ("epoch", "loss", "hm", "wh", "reg", "lr", "time_s", "val_AP50")
    return [{k: h[k] for k in keys if k in h} for h in history]


def _phase(model: torch.nn.Module, data: dict[str, InMemoryDataset], args: argparse.Namespace, *, qat: bool,
           budget_s: float, lr: float, work: Path) -> dict[str, Any]:
    """Plan, train and evaluate one phase within budget_s seconds."""
    t0 = time.perf_counter()
    train_set, val_set = data["train"], data["val"]
    step_s = measure_step_time(model, train_set, batch_size=args.batch_size, qat=qat)
    eval_s = EVAL_SECONDS_PER_IMAGE * len(val_set)
    final_eval_s = eval_s * (3 if qat else 1)  # the folded QAT forward is slower
    left = budget_s - (time.perf_counter() - t0) - final_eval_s
    steps_per_epoch = len(train_set) // args.batch_size
    epochs = _plan_epochs(left, step_s, steps_per_epoch, eval_s, args.eval_every)
    result = train(model, train_set, epochs=epochs, batch_size=args.batch_size, lr=lr, seed=args.seed,
                   out_dir=work / ("qat" if qat else "float"), val_set=val_set, qat=qat, progress=not args.quiet,
                   eval_every=args.eval_every, max_time_s=left)
    metrics = evaluate(model, val_set, batch_size=64)
    trained = result["history"]
    return {"AP50": metrics["AP50"], "AP": metrics["AP"], "per_class_AP50": metrics["per_class_AP50"],
            "epochs_planned": epochs, "epochs": len(trained), "stopped_early": result["stopped_early"],
            "lr": lr, "step_s_measured": round(step_s, 4),
            "epoch_s_mean": round(sum(h["time_s"] for h in trained) / len(trained), 3),
            "images_seen": len(trained) * steps_per_epoch * args.batch_size,
            "wall_s": round(time.perf_counter() - t0, 1), "curve": _curve(trained),
            "calibration_steps_left": result["calibration_steps_left"]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    start = time.perf_counter()
    budget = args.minutes * 60
    torch.manual_seed(args.seed)
    data = {split: InMemoryDataset(load_dataset("synthetic", split, num_images=n, seed=args.seed))
            for split, n in (("train", args.train_images), ("val", args.val_images))}
    model = build_detector("tiny")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="hwconv-bench-train-"))
    setup_s = time.perf_counter() - start

    train_budget = budget - setup_s
    fp = _phase(model, data, args, qat=False, budget_s=train_budget * args.float_share, lr=args.lr, work=work)
    q = _phase(model, data, args, qat=True, budget_s=budget - (time.perf_counter() - start), lr=args.qat_lr,
               work=work)
    return {
        "config": "tiny", "dataset": "synthetic", "train_images": args.train_images, "val_images": args.val_images,
        "batch_size": args.batch_size, "seed": args.seed, "budget_s": budget,
        "wall_s": round(time.perf_counter() - start, 1), "setup_s": round(setup_s, 1),
        "torch_threads": torch.get_num_threads(), "machine": platform.machine(), "python": platform.python_version(),
        "float_AP50": fp["AP50"], "w4a8_AP50": q["AP50"],
        "delta_AP50_points": round(100 * (fp["AP50"] - q["AP50"]), 2),
        "goal": {"float_AP50>=0.80": fp["AP50"] >= 0.80, "w4a8_within_2_points": fp["AP50"] - q["AP50"] <= 0.02},
        "float": fp, "qat": q, "work_dir": str(work),
    }


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    result = run(args)
    atomic_write_text(args.output, json.dumps(result, indent=1) + "\n")
    f, q = result["float"], result["qat"]
    print(f"float: AP50 {f['AP50']:.4f} AP {f['AP']:.4f}  ({f['epochs']} epochs, {f['epoch_s_mean']} s/epoch)")
    print(f"W4A8 : AP50 {q['AP50']:.4f} AP {q['AP']:.4f}  ({q['epochs']} epochs, {q['epoch_s_mean']} s/epoch)")
    print(f"delta: {result['delta_AP50_points']} AP50 points; total {result['wall_s']} s; results in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
