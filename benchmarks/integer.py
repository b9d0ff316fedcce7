"""Integer path vs fake-quant path on a trained detector: output elements and COCO AP.

    python -m benchmarks.integer OUT_DIR [--checkpoint qat/last.pt] [--val-images 200]

Takes a W4A8 checkpoint (or, without one, trains the tiny config on the semi-synthetic set for
`--train-minutes`), exports it to an engine program, and runs the validation images through the
program on the golden integer model and through the Brevitas fake-quant model, evaluated in
float64 (the reference: the model's exact values) and in float32 (as PyTorch trains it; its
rounding noise flips rare requantisation near-ties, see verify.py). Each path's output integers are
dequantised with the output scales the program metadata carries and decoded alike (CenterNet
decode, top 100, score >= 0.01), then scored by pycocotools.

Reports, per output, the share of identical integers and the largest difference in LSBs, and
AP50/AP of every path with the differences (issue 3: >= 99.9 % identical, AP50 within 0.2 points).
Writes OUT_DIR/bench_integer.json, OUT_DIR/integer_vs_fakequant.md, the program, and
golden_detections.png (the first validation images with the golden model's detections).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from hwconv.fileio import atomic_write_text

from hwconv.quant.checkpoint import model_from_checkpoint
from hwconv.quant.data import load_dataset
from hwconv.quant.integer_ap import integer_vs_fakequant, meets_targets, validation_set
from hwconv.spec import EngineConfig, Program

# ------------------------------------------------------------------ training when no checkpoint is given

def train_tiny(work: Path, *, minutes: float, train_images: int, seed: int, progress: bool) -> dict[str, Any]:
    """Float then W4A8 QAT of the tiny config on the semi-synthetic set within about `minutes`
    (70 % float, 30 % QAT; epochs planned from a measured step time; the last QAT epoch BN-folded)."""
    from hwconv.quant.checkpoint import calibration_steps_left
    from hwconv.quant.models import build_detector
    from hwconv.quant.train import InMemoryDataset, measure_step_time, train

    t0 = time.perf_counter()
    data = InMemoryDataset(load_dataset("synthetic", "train", num_images=train_images, seed=seed))
    torch.manual_seed(seed)
    net = build_detector("tiny")
    batch = 8
    steps_per_epoch = max(1, len(data) // batch)
    phases = {}
    budget = minutes * 60 - (time.perf_counter() - t0)
    for name, share, lr, qat in (("float", 0.7, 5e-3, False), ("qat", 0.3, 5e-4, True)):
        step_s = measure_step_time(net, data, batch_size=batch, qat=qat)
        epochs = max(1, int(budget * share / (step_s * steps_per_epoch)))
        if qat:  # activation scales calibrate over their first steps; then >= 1 epoch learns them, BN folded
            epochs = max(epochs, -(-calibration_steps_left(net) // steps_per_epoch) + 1)
        # Only float training may be cut short on a busy machine: QAT must finish its BN-folded epoch.
        r = train(net, data, epochs=epochs, batch_size=batch, lr=lr, out_dir=work / name, seed=seed, qat=qat,
                  progress=progress, max_time_s=None if qat else budget * share * 1.25,
                  fold_bn_epochs=1 if qat else 0)
        phases[name] = {"epochs": len(r["history"]), "epochs_planned": epochs, "step_s": round(step_s, 4),
                        "final_loss": r["history"][-1]["loss"], "stopped_early": r["stopped_early"]}
        if qat:
            phases[name]["calibration_steps_left"] = r["calibration_steps_left"]
            checkpoint = r["last_checkpoint"]
    return {"checkpoint": checkpoint, "train_images": len(data), "batch_size": batch, "phases": phases,
            "train_s": round(time.perf_counter() - t0, 1)}


# ------------------------------------------------------------------ report

def _pct(x: float) -> str:
    return f"{100 * x:.3f} %"


def _ap(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}"


def _element_table(outputs: dict[str, dict], identical: float) -> list[str]:
    lines = ["| output | elements | identical | off by 1 LSB | off by > 1 LSB | max diff (LSB) |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, s in outputs.items():
        lines.append(f"| {name} | {s['total']} | {_pct(s['identical'])} | {s['diff_1']} | {s['diff_gt1']} | "
                     f"{s['max_diff']} |")
    total = sum(s["total"] for s in outputs.values())
    return lines + [f"| all | {total} | {_pct(identical)} | | | |"]


def format_markdown(r: dict[str, Any]) -> str:
    f32 = r["float32"]
    lines = [f"Detector `{r['model']}` ({r['variant']}, W{r['weight_bits']}A8), checkpoint `{r['checkpoint']}`, "
             f"{r['images']} {r['data']} validation images, engine `{r['engine']}`.", "",
             "Output integers, golden program vs the fake-quant model evaluated in float64 (reference):", "",
             *_element_table(r["outputs"], r["identical"]), "",
             "Output integers, golden program vs the fake-quant model evaluated in float32 (as PyTorch trains it):", "",
             *_element_table(f32["outputs"], f32["identical"]), "",
             "| path | AP50 | AP |", "|---|---:|---:|",
             f"| fake-quant, float64 (reference) | {_ap(r['fake_quant']['AP50'])} | {_ap(r['fake_quant']['AP'])} |",
             f"| fake-quant, float32 | {_ap(r['fake_quant_float32']['AP50'])} | {_ap(r['fake_quant_float32']['AP'])} |",
             f"| integer (program on the golden model) | {_ap(r['integer']['AP50'])} | {_ap(r['integer']['AP'])} |",
             f"| integer - fake-quant float64 (points) | {r['delta_AP50_points']} | {r['delta_AP_points']} |",
             f"| integer - fake-quant float32 (points) | {r['delta_AP50_points_float32']} | |", "",
             f"Targets (issue 3), vs the float64 reference: >= 99.9 % identical elements, |AP50 difference| <= "
             f"0.2 points: **{'met' if r['meets_targets'] else 'NOT met'}**. "
             f"Golden model {r['golden_s_per_image']} s/image."]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> dict[str, Any]:
    from hwconv.quant.draw import draw_detections, montage, save_png, upscale
    from hwconv.quant.data.preview import to_uint8_hwc
    from hwconv.quant.export import export_program

    torch.set_num_threads(args.threads)
    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    progress = not args.quiet
    training = None
    checkpoint = args.checkpoint
    if checkpoint is None:
        training = train_tiny(out / "train", minutes=args.train_minutes, train_images=args.train_images,
                              seed=args.seed, progress=progress)
        checkpoint = training["checkpoint"]
    net, ckpt = model_from_checkpoint(checkpoint)
    if ckpt.get("quant_mode") != "qat":
        raise ValueError(f"{checkpoint}: quantisation mode {ckpt.get('quant_mode')!r}; give the W4A8 (QAT) checkpoint")
    config = EngineConfig.load(args.engine) if args.engine else EngineConfig()
    program = export_program(net, config)
    program_path = out / f"{net.cfg.name}_{config.name}.hwc"
    program.save(program_path)
    program = Program.load(program_path, expect=config)  # what a user's file holds, metadata scales included

    dataset = validation_set(args.data, net.cfg.input_size, images=args.val_images, root=args.data_root,
                             seed=args.seed)
    r = integer_vs_fakequant(net, program, dataset, images=args.val_images, progress=progress)
    detections = r.pop("golden_detections")
    r.pop("fake_quant_detections")
    tiles = [draw_detections(upscale(to_uint8_hwc(dataset[i][0]), 2), d["boxes"] * 2, d["scores"], d["labels"],
                             dataset.class_names or None, score_threshold=0.3)
             for i, d in enumerate(detections[:4])]
    save_png(out / "golden_detections.png", montage(tiles, columns=len(tiles)))
    r = {"model": net.cfg.name, "variant": net.cfg.variant, "weight_bits": net.cfg.weight_bits,
         "checkpoint": str(checkpoint), "data": args.data, "engine": config.name, "program": str(program_path),
         **r, "meets_targets": None, "training": training,
         "machine": {"python": sys.version.split()[0], "torch": torch.__version__, "threads": args.threads,
                     "platform": platform.platform()}}
    r["meets_targets"] = meets_targets(r)
    atomic_write_text(out / "bench_integer.json", json.dumps(r, indent=2) + "\n")
    atomic_write_text(out / "integer_vs_fakequant.md", format_markdown(r))
    return r


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.integer", description=__doc__.splitlines()[0])
    p.add_argument("out_dir", type=Path, help="output folder (report, program, training run)")
    p.add_argument("--checkpoint", help="W4A8 checkpoint (qat/last.pt of `hwconv quantize`); default: train "
                                        "the tiny config for --train-minutes")
    p.add_argument("--train-minutes", type=float, default=4.0, help="training budget without --checkpoint (default 4)")
    p.add_argument("--train-images", type=int, default=2000, help="synthetic training images (default 2000)")
    p.add_argument("--data", default="synthetic", choices=["synthetic", "deepforest", "voc", "coco"])
    p.add_argument("--data-root", help="dataset folder for voc/coco")
    p.add_argument("--val-images", type=int, default=200, help="validation images (default 200)")
    p.add_argument("--engine", help="engine config (.toml or .json); default: the reference engine")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.train_minutes <= 0 or args.train_images < 8 or args.val_images < 1 or args.threads < 1:
        p.error("--train-minutes must be > 0, --train-images >= 8, --val-images and --threads >= 1")
    if args.checkpoint is None and args.data != "synthetic":
        p.error("without --checkpoint the tiny config is trained on the synthetic set: use --data synthetic")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    try:
        r = run(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"bench_integer: error: {exc}", file=sys.stderr)
        return 2
    print(format_markdown(r), end="")
    print(f"wrote {args.out_dir / 'bench_integer.json'} and {args.out_dir / 'integer_vs_fakequant.md'}")
    return 0 if r["meets_targets"] else 1


if __name__ == "__main__":
    sys.exit(main())
