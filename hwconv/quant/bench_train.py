"""Training benchmark: the tiny detector on the synthetic digits set within a time budget, float
pre-training then W4A8 quantisation-aware fine-tuning of the same module; float AP50 vs W4A8 AP50.

    python -m hwconv.quant.bench_train results.json --minutes 10

The budget covers everything (data rendering, both phases, evaluations). Epoch counts are planned
from a measured step time so each phase's cosine schedule completes; `train(max_time_s=...)` stops
a phase early if the machine turns out slower than measured (recorded as "stopped_early").

By default it runs as 2 gloo DDP processes of 1 thread each (`--procs`, `--threads`), per-process
batch 8: on a 2-core machine this is faster than one process with 2 OpenMP threads (one thread is
more efficient per image: measured 6.3 ms/image float at batch 16 vs 4.2 ms/image for 2 threads,
i.e. 3.2 ms/image for the pair), and it degrades gracefully when another job takes a core, whereas
2 OpenMP threads then stall at every parallel region (measured 2-50x slower steps).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hwconv.fileio import atomic_write_text

from .data import load_dataset
from .evaluate import evaluate
from .models import build_detector
from .train import InMemoryDataset, measure_step_time, train

EVAL_SECONDS_PER_IMAGE = 0.01  # generous: a tiny-model forward on 128 px takes ~2-3 ms


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m hwconv.quant.bench_train", description=__doc__.splitlines()[0])
    p.add_argument("output", type=Path, help="JSON file for the results")
    p.add_argument("--minutes", type=float, default=10.0, help="total time budget (default 10)")
    p.add_argument("--float-share", type=float, default=0.7, help="share of the training time spent in float")
    p.add_argument("--train-images", type=int, default=8000)
    p.add_argument("--val-images", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=8, help="per process (global = this x --procs)")
    p.add_argument("--procs", type=int, default=2, help="DDP processes (gloo); 1 = no torch.distributed")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--lr", type=float, default=5e-3, help="float learning rate (Adam, cosine)")
    p.add_argument("--qat-lr", type=float, default=5e-4, help="QAT learning rate (Adam, cosine)")
    p.add_argument("--fold-bn-epochs", type=int, default=1, help="last QAT epochs trained with BN folded")
    p.add_argument("--eval-every", type=int, default=3, help="validate every N epochs (and the last)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", type=Path, default=None, help="checkpoints and logs (default: a temp dir)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _from_rank0(obj: Any) -> Any:
    """rank 0's value of obj on every rank (plans must agree, or DDP deadlocks)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _plan_epochs(budget_s: float, step_s: float, steps_per_epoch: int, eval_s: float, eval_every: int) -> int:
    per_epoch = step_s * steps_per_epoch + eval_s / eval_every
    return max(1, int(budget_s / per_epoch))


def _curve(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keys = ("epoch", "loss", "hm", "wh", "reg", "lr", "time_s", "val_AP50")
    return [{k: h[k] for k in keys if k in h} for h in history]


def _phase(model: torch.nn.Module, data: dict[str, InMemoryDataset], args: argparse.Namespace, *, qat: bool,
           deadline: float, lr: float, work: Path) -> dict[str, Any] | None:
    """Plan, train and evaluate one phase so that it ends by `deadline` (perf_counter time).
    Returns the phase's figures on rank 0, None on the other ranks."""
    t0 = time.perf_counter()
    train_set, val_set = data["train"], data["val"]
    step_s = measure_step_time(model, train_set, batch_size=args.batch_size, qat=qat)
    eval_s = EVAL_SECONDS_PER_IMAGE * len(val_set)
    final_eval_s = eval_s * (3 if qat else 1)  # the folded QAT forward is slower
    steps_per_epoch = len(train_set) // (args.batch_size * args.procs)
    left = deadline - time.perf_counter() - final_eval_s
    step_s, left = _from_rank0((step_s, left))
    epochs = _plan_epochs(left, step_s, steps_per_epoch, eval_s, args.eval_every)
    result = train(model, train_set, epochs=epochs, batch_size=args.batch_size, lr=lr, seed=args.seed,
                   out_dir=work / ("qat" if qat else "float"), val_set=val_set, qat=qat, progress=not args.quiet,
                   eval_every=args.eval_every, max_time_s=left, fold_bn_epochs=args.fold_bn_epochs if qat else 0)
    if _rank() != 0:
        return None
    metrics = evaluate(model, val_set, batch_size=64)
    trained = result["history"]
    return {"AP50": metrics["AP50"], "AP": metrics["AP"], "per_class_AP50": metrics["per_class_AP50"],
            "epochs_planned": epochs, "epochs": len(trained), "stopped_early": result["stopped_early"],
            "lr": lr, "step_s_measured": round(step_s, 4),
            "epoch_s_mean": round(sum(h["time_s"] for h in trained) / len(trained), 3),
            "images_seen": len(trained) * steps_per_epoch * args.batch_size * args.procs,
            "wall_s": round(time.perf_counter() - t0, 1), "curve": _curve(trained),
            "calibration_steps_left": result["calibration_steps_left"]}


def run(args: argparse.Namespace) -> dict[str, Any] | None:
    """The benchmark in this process (one rank of it when a process group is up); rank 0 returns
    the results, other ranks None."""
    start = time.perf_counter()
    budget = args.minutes * 60
    torch.manual_seed(args.seed)
    data = {split: InMemoryDataset(load_dataset("synthetic", split, num_images=n, seed=args.seed))
            for split, n in (("train", args.train_images), ("val", args.val_images))}
    model = build_detector("tiny")
    work = Path(_from_rank0(str(args.work_dir or tempfile.mkdtemp(prefix="hwconv-bench-train-"))))
    setup_s = time.perf_counter() - start

    float_deadline = start + setup_s + (budget - setup_s) * args.float_share
    fp = _phase(model, data, args, qat=False, deadline=float_deadline, lr=args.lr, work=work)
    q = _phase(model, data, args, qat=True, deadline=start + budget, lr=args.qat_lr, work=work)
    if fp is None or q is None:
        return None
    return {
        "config": "tiny", "dataset": "synthetic", "train_images": args.train_images, "val_images": args.val_images,
        "batch_size_per_process": args.batch_size, "procs": args.procs, "threads_per_process": args.threads,
        "seed": args.seed, "budget_s": budget, "wall_s": round(time.perf_counter() - start, 1),
        "setup_s": round(setup_s, 1), "cpus": len(os.sched_getaffinity(0)), "machine": platform.machine(),
        "float_AP50": fp["AP50"], "w4a8_AP50": q["AP50"],
        "delta_AP50_points": round(100 * (fp["AP50"] - q["AP50"]), 2),
        "goal": {"float_AP50>=0.80": fp["AP50"] >= 0.80, "w4a8_within_2_points": fp["AP50"] - q["AP50"] <= 0.02},
        "float": fp, "qat": q, "work_dir": str(work),
    }


def _report(result: dict[str, Any], output: Path) -> None:
    atomic_write_text(output, json.dumps(result, indent=1) + "\n")
    f, q = result["float"], result["qat"]
    print(f"float: AP50 {f['AP50']:.4f} AP {f['AP']:.4f}  ({f['epochs']} epochs, {f['epoch_s_mean']} s/epoch)")
    print(f"W4A8 : AP50 {q['AP50']:.4f} AP {q['AP']:.4f}  ({q['epochs']} epochs, {q['epoch_s_mean']} s/epoch)")
    print(f"delta: {result['delta_AP50_points']} AP50 points; total {result['wall_s']} s; results in {output}")


def _worker(rank: int, args: argparse.Namespace, port: int) -> None:
    torch.set_num_threads(args.threads)
    if args.procs > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=args.procs)
    try:
        result = run(args)
        if result is not None:
            _report(result, args.output)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.procs > 1:
        mp.spawn(_worker, args=(args, _free_port()), nprocs=args.procs, join=True)
    else:
        _worker(0, args, 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
