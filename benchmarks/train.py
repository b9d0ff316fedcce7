"""Training benchmark: the tiny detector on the synthetic digits set within a time budget, float
pre-training then W4A8 quantisation-aware fine-tuning of the same module; float AP50 vs W4A8 AP50.

    python -m benchmarks.train results.json --minutes 10

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
import copy
import json
import os
import platform
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hwconv.fileio import atomic_write_text

from hwconv.quant.data import DetectionDataset, load_dataset
from hwconv.quant.data.base import Sample
from hwconv.quant.evaluate import evaluate
from hwconv.quant.checkpoint import unwrap
from hwconv.quant.models import build_detector, fold_batchnorm
from hwconv.quant.train import InMemoryDataset, measure_step_time, train

EVAL_SECONDS_PER_IMAGE = 0.01  # generous: a tiny-model forward on 128 px takes ~2-3 ms
PLAN_MARGIN = 0.95  # measured step times run a little short of a whole epoch's (allocator, load)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train", description=__doc__.splitlines()[0])
    p.add_argument("output", type=Path, help="JSON file for the results")
    p.add_argument("--minutes", type=float, default=10.0, help="total time budget (default 10)")
    p.add_argument("--train-images", type=int, default=10000)
    p.add_argument("--val-images", type=int, default=500)
    p.add_argument("--procs", type=int, default=2, help="DDP processes (gloo); 1 = no torch.distributed")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--work-dir", type=Path, default=None, help="checkpoints and logs (default: a temp dir)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_recipe_arguments(p, Recipe())
    args = p.parse_args(argv)
    if args.minutes <= 0 or args.train_images < 1 or args.val_images < 1 or args.procs < 1 or args.threads < 1:
        p.error("--minutes must be > 0 and --train-images, --val-images, --procs, --threads >= 1")
    try:
        recipe_from_args(args)
    except ValueError as exc:
        p.error(str(exc))
    return args


@dataclass(frozen=True)
class Recipe:
    """How a budgeted float-then-QAT run spends its time (the budget itself is passed apart)."""

    float_share: float = 0.7      # of the training time (after data set-up), spent in float
    batch_size: int = 8           # per process
    lr: float = 5e-3              # float, Adam with warm-up and cosine decay
    qat_lr: float = 1e-3          # QAT, same schedule (1e-3: measured 1.7 points lost vs 3.3 at 5e-4)
    fold_bn_epochs: int = 1       # last QAT epochs trained with BN folded, as deployed
    eval_every: int = 3           # validate every N epochs (and the last)
    seed: int = 0
    eval_s_per_image: float = EVAL_SECONDS_PER_IMAGE

    def __post_init__(self) -> None:
        if not 0.0 < self.float_share < 1.0:
            raise ValueError(f"float_share must be in (0, 1), got {self.float_share}")
        for name in ("batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.qat_lr <= 0:
            raise ValueError(f"learning rates must be > 0, got lr={self.lr}, qat_lr={self.qat_lr}")


def add_recipe_arguments(p: argparse.ArgumentParser, default: Recipe) -> None:
    """The Recipe fields as command-line options (shared by the benchmark commands)."""
    p.add_argument("--float-share", type=float, default=default.float_share,
                   help=f"share of the training time spent in float (default {default.float_share})")
    p.add_argument("--batch-size", type=int, default=default.batch_size,
                   help=f"per process; global = this x processes (default {default.batch_size})")
    p.add_argument("--lr", type=float, default=default.lr, help=f"float learning rate (default {default.lr})")
    p.add_argument("--qat-lr", type=float, default=default.qat_lr, help=f"QAT learning rate (default {default.qat_lr})")
    p.add_argument("--fold-bn-epochs", type=int, default=default.fold_bn_epochs,
                   help=f"last QAT epochs trained with BN folded (default {default.fold_bn_epochs})")
    p.add_argument("--eval-every", type=int, default=default.eval_every,
                   help=f"validate every N epochs, and the last (default {default.eval_every})")
    p.add_argument("--seed", type=int, default=default.seed)


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    return Recipe(float_share=args.float_share, batch_size=args.batch_size, lr=args.lr, qat_lr=args.qat_lr,
                  fold_bn_epochs=args.fold_bn_epochs, eval_every=args.eval_every, seed=args.seed)


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def _from_rank0(obj: Any) -> Any:
    """rank 0's value of obj on every rank (plans must agree, or DDP deadlocks)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _plan_cost(epochs: int, step_s: float, steps_per_epoch: int, eval_s: float, eval_every: int,
               folded_epochs: int, folded_step_s: float) -> float:
    """Seconds that `epochs` epochs take, the last `folded_epochs` of them at folded_step_s per
    step (QAT with BN folded recomputes the folded weights every step)."""
    folded = min(folded_epochs, epochs)
    return steps_per_epoch * ((epochs - folded) * step_s + folded * folded_step_s) + eval_s * epochs / eval_every


def _plan_epochs(budget_s: float, step_s: float, steps_per_epoch: int, eval_s: float, eval_every: int,
                 folded_epochs: int = 0, folded_step_s: float = 0.0) -> int:
    """The most epochs (at least 1) that fit in budget_s."""
    plan = (step_s, steps_per_epoch, eval_s, eval_every, folded_epochs, folded_step_s)
    epochs = max(1, int(budget_s / (step_s * steps_per_epoch + eval_s / eval_every)))
    while epochs > 1 and _plan_cost(epochs, *plan) > budget_s:
        epochs -= 1
    return epochs


class FirstImages(DetectionDataset):
    """The first n samples of a dataset (same indices and annotations): one epoch of fewer images
    when a whole epoch does not fit in what is left of a budget (epochs are never cut short)."""

    def __init__(self, base: DetectionDataset, n: int) -> None:
        if not 1 <= n <= len(base):
            raise ValueError(f"FirstImages: n={n} outside 1..{len(base)}")
        self.base, self.n, self.class_names = base, n, base.class_names

    def __len__(self) -> int:
        return self.n

    def load(self, index: int) -> Sample:
        return self.base.sample(self._check_index(index))


def _fit_one_epoch(train_set: DetectionDataset, budget_s: float, one_epoch_s: float, global_batch: int
                   ) -> DetectionDataset:
    """train_set, or its prefix whose single epoch fits in budget_s (whole global batches, at least one)."""
    if one_epoch_s <= budget_s:
        return train_set
    n = int(len(train_set) * max(0.0, budget_s) / one_epoch_s) // global_batch * global_batch
    return FirstImages(train_set, min(len(train_set), max(global_batch, n)))


def _curve(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keys = ("epoch", "loss", "hm", "wh", "reg", "lr", "time_s", "val_AP50")
    return [{k: h[k] for k in keys if k in h} for h in history]


def _phase(model: torch.nn.Module, data: dict[str, InMemoryDataset], recipe: Recipe, *, qat: bool,
           deadline: float, work: Path, progress: bool) -> dict[str, Any] | None:
    """Plan, train and evaluate one phase so that it ends by `deadline` (perf_counter time).
    Returns the phase's figures on rank 0, None on the other ranks."""
    t0 = time.perf_counter()
    train_set, val_set = data["train"], data["val"]
    lr = recipe.qat_lr if qat else recipe.lr
    step_s = measure_step_time(model, train_set, batch_size=recipe.batch_size, qat=qat)
    folded_step_s = 0.0
    if qat and recipe.fold_bn_epochs:
        probe = fold_batchnorm(copy.deepcopy(unwrap(model)), True)  # measured as it will run
        folded_step_s = measure_step_time(probe, train_set, batch_size=recipe.batch_size, qat=True)
    eval_s = recipe.eval_s_per_image * len(val_set)
    final_eval_s = eval_s * (3 if qat else 1)  # the folded QAT forward is slower
    steps_per_epoch = max(1, len(train_set) // (recipe.batch_size * _world_size()))
    left = (deadline - time.perf_counter() - final_eval_s) * PLAN_MARGIN
    step_s, folded_step_s, left = _from_rank0((step_s, folded_step_s, left))
    plan = (step_s, steps_per_epoch, eval_s, recipe.eval_every, recipe.fold_bn_epochs if qat else 0, folded_step_s)
    epochs = _plan_epochs(left, *plan)
    if epochs == 1:
        train_set = _fit_one_epoch(train_set, left, _plan_cost(1, *plan), recipe.batch_size * _world_size())
        steps_per_epoch = max(1, len(train_set) // (recipe.batch_size * _world_size()))
    result = train(model, train_set, epochs=epochs, batch_size=recipe.batch_size, lr=lr, seed=recipe.seed,
                   out_dir=work / ("qat" if qat else "float"), val_set=val_set, qat=qat, progress=progress,
                   eval_every=recipe.eval_every, max_time_s=left,
                   fold_bn_epochs=min(recipe.fold_bn_epochs, epochs) if qat else 0)
    if _rank() != 0:
        return None
    metrics = evaluate(model, val_set, batch_size=64)
    trained = result["history"]
    return {"AP50": metrics["AP50"], "AP": metrics["AP"], "per_class_AP50": metrics["per_class_AP50"],
            "epochs_planned": epochs, "epochs": len(trained), "images_per_epoch": len(train_set), "stopped_early": result["stopped_early"],
            "lr": lr, "step_s_measured": round(step_s, 4), "folded_step_s_measured": round(folded_step_s, 4),
            "epoch_s_mean": round(sum(h["time_s"] for h in trained) / len(trained), 3),
            "images_seen": len(trained) * steps_per_epoch * recipe.batch_size * _world_size(),
            "wall_s": round(time.perf_counter() - t0, 1), "curve": _curve(trained),
            "calibration_steps_left": result["calibration_steps_left"]}


def float_then_qat(model: torch.nn.Module, data: dict[str, InMemoryDataset], recipe: Recipe, *, deadline: float,
                   work: Path, progress: bool = True) -> dict[str, Any] | None:
    """Float training, then W4A8 QAT of the same module, both ending by `deadline` (perf_counter
    time): the float phase gets `recipe.float_share` of the time left now. data: {"train", "val"}.
    Returns {"float", "qat", "float_AP50", "w4a8_AP50", "delta_AP50_points"} on rank 0, else None."""
    now = time.perf_counter()
    if deadline <= now:
        raise ValueError(f"no time left for training: the deadline passed {now - deadline:.1f} s ago")
    fp = _phase(model, data, recipe, qat=False, deadline=now + (deadline - now) * recipe.float_share, work=work,
                progress=progress)
    q = _phase(model, data, recipe, qat=True, deadline=deadline, work=work, progress=progress)
    if fp is None or q is None:
        return None
    return {"float_AP50": fp["AP50"], "w4a8_AP50": q["AP50"], "float_AP": fp["AP"], "w4a8_AP": q["AP"],
            "delta_AP50_points": round(100 * (fp["AP50"] - q["AP50"]), 2), "float": fp, "qat": q}


def synthetic_data(train_images: int, val_images: int, seed: int, image_size: int = 128
                   ) -> dict[str, InMemoryDataset]:
    """The semi-synthetic train and val splits, rendered once into memory."""
    return {split: InMemoryDataset(load_dataset("synthetic", split, num_images=n, seed=seed, image_size=image_size))
            for split, n in (("train", train_images), ("val", val_images))}


def run(args: argparse.Namespace) -> dict[str, Any] | None:
    """The benchmark in this process (one rank of it when a process group is up); rank 0 returns
    the results, other ranks None."""
    start = time.perf_counter()
    budget = args.minutes * 60
    recipe = recipe_from_args(args)
    torch.manual_seed(recipe.seed)
    data = synthetic_data(args.train_images, args.val_images, recipe.seed)
    model = build_detector("tiny")
    work = Path(_from_rank0(str(args.work_dir or tempfile.mkdtemp(prefix="hwconv-bench-train-"))))
    setup_s = time.perf_counter() - start
    r = float_then_qat(model, data, recipe, deadline=start + budget, work=work, progress=not args.quiet)
    if r is None:
        return None
    return {
        "config": "tiny", "dataset": "synthetic", "train_images": args.train_images, "val_images": args.val_images,
        "procs": args.procs, "threads_per_process": args.threads, "recipe": asdict(recipe),
        "budget_s": budget, "wall_s": round(time.perf_counter() - start, 1), "setup_s": round(setup_s, 1),
        "cpus": len(os.sched_getaffinity(0)), "machine": platform.machine(), "processor": _cpu_model(),
        "torch": torch.__version__, **r,
        "goal": {"float_AP50>=0.80": r["float_AP50"] >= 0.80,
                 "w4a8_within_2_points": r["float_AP50"] - r["w4a8_AP50"] <= 0.02},
        "work_dir": str(work),
    }


def _cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), for reading timings; platform's name elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


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
