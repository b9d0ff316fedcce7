"""Train CenterNet detectors: float pre-training, then quantisation-aware fine-tuning (QAT).

The same module serves both phases. `train(..., qat=False)` switches the Brevitas quantisers off
(`checkpoint.set_quant_mode(model, "float")`: what stays on and why is in checkpoint.py) and trains
in float; `train(..., qat=True)` switches them on, and the first `collect_stats_steps` (300)
training forwards initialise each activation scale from runtime statistics before it is learned.
The usual recipe:

    model = build_detector("tiny")
    train(model, data, epochs=30, ..., out_dir="run/float")                  # float
    train(model, data, epochs=3, lr=lower, ..., out_dir="run/qat", qat=True,
          fold_bn_epochs=1)                    # W4A8; the last epoch with BN folded, as deployed

Evaluation in float mode runs BN unfolded (`checkpoint.eval_mode`); in QAT mode eval runs the
model's folded path, i.e. the integers the engine computes.

Optimiser: Adam; learning rate: linear warm-up, then cosine decay per step to `min_lr_ratio * lr`,
a pure function of the step (nothing to restore on resume). Determinism: the sample order of epoch
e is a function of (seed, e) (DistributedSampler.set_epoch, also single-process), training draws no
other random numbers, and the checkpoint restores weights, Adam state, quantiser statistics and the
RNG states, so resuming gives the same numbers as not stopping. Build the model after
`torch.manual_seed(...)` for a deterministic initialisation.

Distributed: under `torchrun` (RANK and WORLD_SIZE > 1 in the environment) or inside an
initialised process group, training uses torch.distributed with gloo, DistributedDataParallel and
a DistributedSampler; each rank takes batch_size images per step. Only rank 0 evaluates, writes
checkpoints and the log; the other ranks receive the same epoch records.

Outputs in out_dir: last.pt (every epoch), best.pt (best validation AP50, or lowest training loss
without a validation set) and log.json (options and per-epoch records, rewritten every epoch).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import math
import os
import random
import statistics
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from hwconv.fileio import atomic_write_text

from .checkpoint import (
    CheckpointError, bn_folded, calibration_steps_left, config_to_dict, get_quant_mode, load_checkpoint, save_checkpoint,
    set_quant_mode, set_rng_state, unwrap,
)
from .data import DetectionDataset, collate
from .data.base import Sample
from .data.centernet import encode_batch
from .evaluate import evaluate
from .losses import centernet_loss
from .models import fold_batchnorm

__all__ = ["InMemoryDataset", "lr_at", "measure_step_time", "seed_everything", "set_quant_mode", "train"]

LOSS_PARTS = ("loss", "hm", "wh", "reg")


# ------------------------------------------------------------------ helpers

def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def lr_at(step: int, total_steps: int, base_lr: float, warmup_steps: int, min_lr_ratio: float) -> float:
    """Linear warm-up over warmup_steps, then cosine from base_lr to min_lr_ratio * base_lr."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


class InMemoryDataset(DetectionDataset):
    """A dataset's samples (after its transform) held in memory: render or decode once, train
    many epochs. Same indices, class names and annotations as the source."""

    def __init__(self, source: DetectionDataset) -> None:
        self.class_names = source.class_names
        self.samples: list[Sample] = [source.sample(i) for i in range(len(source))]

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> Sample:
        return self.samples[index]


@dataclass(frozen=True)
class _Dist:
    rank: int = 0
    world_size: int = 1
    owns_group: bool = False  # train() initialised the group, so it also tears it down

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed() -> _Dist:
    if dist.is_available() and dist.is_initialized():
        return _Dist(dist.get_rank(), dist.get_world_size())
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return _Dist()
    dist.init_process_group("gloo")  # env:// rendezvous from torchrun (MASTER_ADDR/PORT, RANK)
    info = _Dist(dist.get_rank(), dist.get_world_size(), owns_group=True)
    if "OMP_NUM_THREADS" not in os.environ:  # ranks share the machine's cores: don't oversubscribe
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // info.world_size))
    return info


@contextlib.contextmanager
def distributed_group() -> Iterator[None]:
    """One process group for several train() calls (float, then QAT), torn down at the end.

    A group per call is not safe under a plain env:// launch: rank 0 hosts the rendezvous store on
    MASTER_PORT, and a rank that finishes a phase first can join rank 0's old store for the next
    group, leaving rank 0's new store waiting for it until the 30-minute timeout. No-op when one
    process trains or a group already exists."""
    d = _setup_distributed()
    try:
        yield
    finally:
        if d.owns_group:
            dist.destroy_process_group()


class _LogLines:
    """Progress as plain log lines (stdout is a file, a pipe, CI, nohup): the same calls as a
    rich Progress, a line when an epoch starts and at most every `every_s` seconds after, with
    the phase's elapsed time and the time left at its mean pace so far."""

    def __init__(self, every_s: float = 30.0, clock: Any = time.monotonic) -> None:
        self.every_s = every_s
        self.clock = clock
        self.total = self.done = 0
        self.description = self.info = ""
        self.started = self.last = clock()

    def __enter__(self) -> "_LogLines":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def add_task(self, description: str, total: int, info: str = "") -> int:
        self.description, self.total, self.info = description, total, info
        self.started = self.last = self.clock()
        return 0

    def pace(self, now: float) -> str:
        """'3m05s elapsed, about 12m40s left' for the steps done so far of this phase."""
        elapsed = now - self.started
        text = f"{_duration(elapsed)} elapsed"
        if 0 < self.done <= self.total:
            text += f", about {_duration(elapsed / self.done * (self.total - self.done))} left"
        return text

    def update(self, task: int, advance: int = 0, description: str | None = None, info: str | None = None) -> None:
        self.done += advance
        self.info = self.info if info is None else info
        now = self.clock()
        if description is not None and description != self.description:
            self.description = description
            self.last = now
            print(f"{description}: started ({self.pace(now)})" if self.done else f"{description}: started",
                  flush=True)
        elif now - self.last >= self.every_s:
            self.last = now
            print(f"{self.description}: step {self.done}/{self.total} {self.info}".rstrip() + f" ({self.pace(now)})",
                  flush=True)


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s // 60 % 60:02d}m{s % 60:02d}s" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _progress(enabled: bool) -> Any:
    """A rich progress bar (stderr) on a terminal, log lines when stdout is not one, or a no-op."""
    if not enabled:
        return nullcontext(None)
    if not sys.stdout.isatty():
        return _LogLines()
    from rich.console import Console
    from rich.progress import (
        BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
    )

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=Console(stderr=True))


def _epoch_line(record: dict[str, Any], epochs: int) -> str:
    val = f", val AP50 {record['val_AP50']:.4f}" if record.get("val_AP50") is not None else ""
    return (f"{record['quant_mode']} epoch {record['epoch']}/{epochs}: loss {record['loss']:.4f}{val}, "
            f"{record['time_s']:.1f} s")


# ------------------------------------------------------------------ one epoch

@dataclass
class _Step:
    """Everything one optimisation step needs; built once per train() call."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    num_classes: int
    total_steps: int
    base_lr: float
    warmup_steps: int
    min_lr_ratio: float
    grad_clip: float | None
    device: torch.device

    def __call__(self, step: int, images: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> dict[str, float]:
        lr = lr_at(step, self.total_steps, self.base_lr, self.warmup_steps, self.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        encoded = encode_batch(targets, self.num_classes, tuple(images.shape[-2:]))
        encoded = {k: v.to(self.device) for k, v in encoded.items()}
        losses = centernet_loss(self.model(images.to(self.device)), encoded)
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        return {k: float(v.detach()) for k, v in losses.items()} | {"lr": lr}


def _batches(loader: DataLoader, sampler: DistributedSampler, epoch: int) -> Iterator:
    sampler.set_epoch(epoch)  # the epoch's order is a function of (seed, epoch): resumable
    return iter(loader)


def _run_epoch(step_fn: _Step, loader: DataLoader, sampler: DistributedSampler, epoch: int, first_step: int,
               bar: Any, task: Any, d: _Dist) -> dict[str, float]:
    sums = torch.zeros(len(LOSS_PARTS) + 1, dtype=torch.float64)  # loss parts, then batch count
    lr = 0.0
    step_fn.model.train()
    for i, (images, targets) in enumerate(_batches(loader, sampler, epoch)):
        out = step_fn(first_step + i, images, targets)
        if not math.isfinite(out["loss"]):
            raise FloatingPointError(f"epoch {epoch + 1} step {i}: loss is {out['loss']} ({out})")
        sums += torch.tensor([out[k] for k in LOSS_PARTS] + [1.0], dtype=torch.float64)
        lr = out["lr"]
        if bar is not None:
            bar.update(task, advance=1, info=f"loss {out['loss']:.3f} hm {out['hm']:.3f} lr {lr:.2e}")
    if d.enabled:
        dist.all_reduce(sums)  # mean over every rank's batches
    means = (sums[:-1] / sums[-1].clamp(min=1)).tolist()
    return dict(zip(LOSS_PARTS, means)) | {"lr": lr}


def measure_step_time(model: nn.Module, dataset: DetectionDataset, *, batch_size: int, qat: bool, steps: int = 10,
                      lr: float = 1e-3) -> float:
    """Median seconds per training step over `steps` steps, timed on a deep copy (the model itself,
    its quantiser statistics included, is untouched). Two warm-up steps are not counted: the first
    steps of a fresh model are slower (allocator, oneDNN primitive caches)."""
    probe = copy.deepcopy(unwrap(model))
    set_quant_mode(probe, "qat" if qat else "float")
    opt = torch.optim.Adam(probe.parameters(), lr=lr)
    device = next(probe.parameters()).device
    step = _Step(probe, opt, probe.cfg.num_classes, steps + 2, lr, 0, 1.0, None, device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    batches = [b for _, b in zip(range(steps + 2), itertools.cycle(loader))]
    probe.train()
    times = []
    for i, batch in enumerate(batches):
        t0 = time.perf_counter()
        step(i, *batch)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[2:])


# ------------------------------------------------------------------ bookkeeping

def _is_better(record: dict[str, Any], best: dict[str, Any] | None) -> bool:
    """Validated epochs beat unvalidated ones and compete on AP50; otherwise lower loss wins."""
    if best is None:
        return True
    mine, theirs = record.get("val_AP50"), best.get("val_AP50")
    if mine is not None or theirs is not None:
        return mine is not None and (theirs is None or mine > theirs)
    return record["loss"] < best["loss"]


def _check_resume(path: str | Path, ckpt: dict[str, Any], mode: str, options: dict[str, Any]) -> None:
    if ckpt["quant_mode"] != mode:
        raise CheckpointError(
            f"{path} was saved in {ckpt['quant_mode']!r} mode but train() was asked for {mode!r}: resume "
            f"continues the same phase; to start QAT from a float checkpoint, load it with "
            f"checkpoint.load_checkpoint(path, model) and call train(..., qat=True) without resume")
    saved = ckpt["extra"].get("options", {})
    changed = {k: (saved[k], v) for k, v in options.items() if k in saved and saved[k] != v}
    if changed:
        warnings.warn(f"resuming {path} with changed options {changed}: the run will not equal an uninterrupted one",
                      stacklevel=3)


def _out_of_time(started: float, max_time_s: float, d: _Dist) -> bool:
    flag = torch.tensor([float(time.perf_counter() - started > max_time_s)])
    if d.enabled:
        dist.broadcast(flag, src=0)  # rank 0's clock decides, so every rank stops together
    return bool(flag.item())


def _broadcast(record: dict[str, Any], d: _Dist) -> dict[str, Any]:
    if not d.enabled:
        return record
    box = [record]
    dist.broadcast_object_list(box, src=0)  # only rank 0 evaluated: share its record
    return box[0]


@dataclass
class _Run:
    """Per-call state of train(): what the end of an epoch evaluates, records and writes."""

    net: nn.Module
    optimizer: torch.optim.Optimizer
    d: _Dist
    out_dir: Path
    options: dict[str, Any]
    val_set: DetectionDataset | None
    eval_batch_size: int
    eval_every: int
    eval_max_images: int | None
    history: list[dict[str, Any]]
    class_names: tuple[str, ...] = ()
    provenance: dict[str, Any] | None = None
    best: dict[str, Any] | None = None

    @property
    def last_path(self) -> Path:
        return self.out_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.out_dir / "best.pt"

    def _validate(self, record: dict[str, Any], final: bool) -> dict[str, Any]:
        due = final or record["epoch"] % self.eval_every == 0
        if self.d.main and self.val_set is not None and due:
            m = evaluate(self.net, self.val_set, batch_size=self.eval_batch_size, max_images=self.eval_max_images)
            record |= {"val_AP": m["AP"], "val_AP50": m["AP50"], "val_images": m["n_images"]}
        return _broadcast(record, self.d)

    def _write(self, record: dict[str, Any], improved: bool) -> None:
        extra = {"options": self.options, "history": self.history, "best": self.best,
                 "class_names": list(self.class_names), "trained": self.provenance}
        for path in (self.last_path, self.best_path) if improved else (self.last_path,):
            save_checkpoint(path, self.net, epoch=record["epoch"], optimizer=self.optimizer, metrics=record,
                            extra=extra)
        _write_log(self.out_dir, self.options, self.history, self.best, self.net)

    def end_epoch(self, record: dict[str, Any], final: bool) -> None:
        record = self._validate(record, final)
        self.history.append(record)
        improved = _is_better(record, self.best)
        self.best = record if improved else self.best
        if self.d.main:
            self._write(record, improved)
        if self.d.enabled:
            dist.barrier()  # nobody races ahead of rank 0's files


def _write_log(out_dir: Path, options: dict[str, Any], history: list[dict], best: dict | None,
               model: nn.Module) -> None:
    log = {"config": config_to_dict(unwrap(model).cfg), "options": options, "history": history, "best": best}
    atomic_write_text(out_dir / "log.json", json.dumps(log, indent=1) + "\n")


# ------------------------------------------------------------------ train

def train(model: nn.Module, train_set: DetectionDataset, *, epochs: int, batch_size: int, lr: float,
          out_dir: str | Path, seed: int, val_set: DetectionDataset | None = None, resume: str | Path | None = None,
          qat: bool = False, progress: bool = True, warmup_steps: int | None = None, min_lr_ratio: float = 0.01,
          weight_decay: float = 0.0, grad_clip: float | None = 10.0, eval_batch_size: int = 32,
          eval_every: int = 1, eval_max_images: int | None = None, max_time_s: float | None = None,
          fold_bn_epochs: int = 0, provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train `model` (a CenterNet from build_detector) in place; see the module docstring.

    `epochs` is the total count (a resumed run continues up to it); `warmup_steps` defaults to
    min(200, 5% of all steps). `max_time_s` is a safety net for budgeted runs: training stops after
    the first epoch that ends past it (the schedule is then cut short; "stopped_early" says so).
    `fold_bn_epochs` (QAT only): the last N epochs train with BN folded into the quantised weights
    and integer biases (models.fold_batchnorm), i.e. exactly what is deployed; BN statistics freeze.
    `provenance`: plain data about the training data (data set, splits, input size) kept in the
    checkpoints as extra["trained"] (export writes it into the program's metadata).
    Returns {"history": per-epoch records (loss parts, lr, time_s, val_AP/val_AP50 when evaluated),
    "best": the best record, "last_checkpoint", "best_checkpoint", "log", "quant_mode",
    "world_size", "calibration_steps_left", "stopped_early"}.
    """
    d = _setup_distributed()
    try:
        return _train(model, train_set, d, epochs=epochs, batch_size=batch_size, lr=lr, out_dir=Path(out_dir),
                      seed=seed, val_set=val_set, resume=resume, qat=qat, progress=progress,
                      warmup_steps=warmup_steps, min_lr_ratio=min_lr_ratio, weight_decay=weight_decay,
                      grad_clip=grad_clip, eval_batch_size=eval_batch_size, eval_every=eval_every,
                      eval_max_images=eval_max_images, max_time_s=max_time_s, fold_bn_epochs=fold_bn_epochs,
                      provenance=provenance)
    finally:
        if d.owns_group:
            dist.destroy_process_group()


def _loader(train_set: DetectionDataset, batch_size: int, seed: int, d: _Dist
            ) -> tuple[DataLoader, DistributedSampler]:
    # One code path for 1 and N processes: the sampler shards (N > 1) and shuffles by (seed, epoch).
    sampler = DistributedSampler(train_set, num_replicas=d.world_size, rank=d.rank, shuffle=True, seed=seed)
    loader = DataLoader(train_set, batch_size=batch_size, sampler=sampler, collate_fn=collate,
                        drop_last=len(sampler) >= batch_size)  # equal batches, unless the set is tiny
    return loader, sampler


def _train(model: nn.Module, train_set: DetectionDataset, d: _Dist, *, epochs: int, batch_size: int, lr: float,
           out_dir: Path, seed: int, val_set: DetectionDataset | None, resume: str | Path | None, qat: bool,
           progress: bool, warmup_steps: int | None, min_lr_ratio: float, weight_decay: float,
           grad_clip: float | None, eval_batch_size: int, eval_every: int, eval_max_images: int | None,
           max_time_s: float | None, fold_bn_epochs: int, provenance: dict[str, Any] | None) -> dict[str, Any]:
    started = time.perf_counter()
    net = unwrap(model)
    if train_set.num_classes != net.cfg.num_classes:
        raise ValueError(f"the dataset has {train_set.num_classes} classes, the detector "
                         f"{net.cfg.name!r} predicts {net.cfg.num_classes}: build it with num_classes=...")
    if fold_bn_epochs and not qat:
        raise ValueError("fold_bn_epochs needs qat=True: folding quantises the BN-scaled weights")
    seed_everything(seed)
    mode = "qat" if qat else "float"
    set_quant_mode(net, mode)
    fold_batchnorm(net, False)  # folding starts at epoch `epochs - fold_bn_epochs`, below
    optimizer = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    loader, sampler = _loader(train_set, batch_size, seed, d)
    total_steps = epochs * len(loader)
    warmup = min(200, total_steps // 20) if warmup_steps is None else warmup_steps
    options = dict(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, qat=qat, warmup_steps=warmup,
                   min_lr_ratio=min_lr_ratio, weight_decay=weight_decay, grad_clip=grad_clip,
                   world_size=d.world_size, train_images=len(train_set), fold_bn_epochs=fold_bn_epochs)
    run = _Run(net, optimizer, d, out_dir, options, val_set, eval_batch_size, eval_every, eval_max_images, [],
               tuple(train_set.class_names), provenance)
    if resume is not None:
        ckpt = load_checkpoint(resume, net, optimizer=optimizer)
        _check_resume(resume, ckpt, mode, options)
        run.history, run.best = ckpt["extra"]["history"], ckpt["extra"]["best"]
        set_rng_state(ckpt["rng"])
    start_epoch = len(run.history)

    # Float mode leaves the activation scales out of the graph, so DDP must tolerate unused parameters.
    ddp = DistributedDataParallel(net, find_unused_parameters=not qat) if d.enabled else net
    step_fn = _Step(ddp, optimizer, net.cfg.num_classes, total_steps, lr, warmup, min_lr_ratio, grad_clip,
                    next(net.parameters()).device)
    # out_dir is created by the first checkpoint write: a run that fails before it leaves no folder.
    stopped_early = False
    with _progress(progress and d.main) as bar:
        task = bar.add_task(mode, total=(epochs - start_epoch) * len(loader), info="") if bar else None
        for epoch in range(start_epoch, epochs):
            if bar is not None:
                bar.update(task, description=f"{mode} epoch {epoch + 1}/{epochs}")
            fold_batchnorm(net, epoch >= epochs - fold_bn_epochs)
            if hasattr(train_set, "set_epoch"):  # augmentation drawn from (seed, epoch, index)
                train_set.set_epoch(epoch)
            t0 = time.perf_counter()
            record = {"epoch": epoch + 1, "quant_mode": mode, "bn_folded": bn_folded(net)}
            record |= _run_epoch(step_fn, loader, sampler, epoch, epoch * len(loader), bar, task, d)
            record["time_s"] = round(time.perf_counter() - t0, 3)
            run.end_epoch(record, final=epoch + 1 == epochs)
            if progress and d.main:
                print(_epoch_line(run.history[-1], epochs), flush=True)
            if max_time_s is not None and epoch + 1 < epochs and _out_of_time(started, max_time_s, d):
                stopped_early = True
                break

    return {"history": run.history, "best": run.best, "last_checkpoint": str(run.last_path),
            "best_checkpoint": str(run.best_path), "log": str(out_dir / "log.json"), "quant_mode": get_quant_mode(net),
            "world_size": d.world_size, "calibration_steps_left": calibration_steps_left(net),
            "stopped_early": stopped_early}
