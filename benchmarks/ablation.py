"""Deformable-variant ablation: the tiny detector trained once per (variant, sampling) on the
semi-synthetic set, each within the same time budget; float AP50 vs W4A8 AP50 per variant.

    python -m benchmarks.ablation OUT_DIR --minutes-per-run 1.5

Each run is float training then W4A8 QAT of one model (bench_train.float_then_qat, the same
recipe for every variant), from the same seed and the same rendered images. A run's figures go to
OUT_DIR/runs/<variant>_<sampling>.json as soon as it ends; runs already there are skipped, so an
interrupted ablation resumes, and several processes (say one per GPU or per pair of cores) can
share OUT_DIR with disjoint --variants. Every invocation then rewrites the report from all run
files present: ablation.json, ablation.md (table) and ablation.png (plot); `--report-only` does
just that.

An equal time budget, not an equal epoch count, is the fair comparison here: the dense and
18-offset variants cost more per step, and what the ablation asks is what each buys within the
same training effort. The epochs each run got are in the table.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from hwconv.fileio import atomic_write_bytes, atomic_write_text

from benchmarks.train import Recipe, add_recipe_arguments, float_then_qat, recipe_from_args, synthetic_data
from hwconv.quant.deform import SAMPLINGS, VARIANTS, QuantDeformConv
from hwconv.quant.info import model_stats
from hwconv.quant.models import CenterNet, build_detector, unfolded

# What hwconv's engine runs (DESIGN.md: square + depthwise + integer, bounded by max_dilation).
ENGINE_MODE = ("square_depthwise", "integer")
DEFAULT_RECIPE = Recipe(batch_size=32, lr=5e-3, eval_every=4)  # one process on a GPU: bigger batches


def _names(text: str, valid: tuple[str, ...], what: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    bad = [n for n in names if n not in valid]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"{what} {','.join(bad) or repr(text)}: choose from {','.join(valid)}")
    return names


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ablation", description=__doc__.splitlines()[0])
    p.add_argument("out_dir", type=Path, help="folder for runs/*.json, ablation.json, ablation.md, ablation.png")
    p.add_argument("--minutes-per-run", type=float, default=1.5, help="budget of each (variant, sampling) run")
    p.add_argument("--variants", type=lambda t: _names(t, VARIANTS, "variant"), default=VARIANTS,
                   help=f"comma-separated subset of {','.join(VARIANTS)} (default: all)")
    p.add_argument("--samplings", type=lambda t: _names(t, SAMPLINGS, "sampling"), default=("bilinear", "integer"),
                   help="comma-separated subset of bilinear,integer (default: both)")
    p.add_argument("--train-images", type=int, default=8000)
    p.add_argument("--val-images", type=int, default=500)
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--force", action="store_true", help="rerun runs whose result file exists")
    p.add_argument("--report-only", action="store_true", help="only rebuild the report from runs/*.json")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_recipe_arguments(p, DEFAULT_RECIPE)
    args = p.parse_args(argv)
    if args.minutes_per_run <= 0 or args.train_images < 1 or args.val_images < 1:
        p.error("--minutes-per-run must be > 0, --train-images and --val-images >= 1")
    try:
        args.recipe = recipe_from_args(args)
    except ValueError as exc:
        p.error(str(exc))
    return args


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: torch sees no CUDA device here (use cpu or auto)")
    return device


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (cuda)"
    return f"cpu, {torch.get_num_threads()} threads"


@torch.no_grad()
def detector_gmac(model: CenterNet) -> float:
    """MACs of one frame, deformable taps included: info.model_stats counts every nn.Conv2d it
    sees run, but a deformable conv applies its tap weights in an einsum (QuantDeformConv.deform),
    so its 3x3 (dense: H*W*Cout*Cin*9, depthwise: H*W*C*9) is added here."""
    taps = 0

    def hook(mod: QuantDeformConv, inputs: tuple, _out: torch.Tensor) -> None:
        nonlocal taps
        _, c, h, w = inputs[0].shape
        taps += h * w * c * 9 * (1 if mod.depthwise else mod.out_channels)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, QuantDeformConv)]
    was_training = model.training
    model.eval()
    try:
        size = model.cfg.input_size
        with unfolded(model):  # folded blocks call deform() directly, past the hook
            model(torch.rand(1, 3, size, size, device=next(model.parameters()).device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return model_stats(model)["gmac"] + taps / 1e9


def run_path(out_dir: Path, variant: str, sampling: str) -> Path:
    return out_dir / "runs" / f"{variant}_{sampling}.json"


def run_one(variant: str, sampling: str, data: dict, recipe: Recipe, *, minutes: float, device: torch.device,
            progress: bool) -> dict[str, Any]:
    """One (variant, sampling) run: float then W4A8 QAT within `minutes`; its figures."""
    start = time.perf_counter()
    torch.manual_seed(recipe.seed)  # same initialisation of every shared layer across variants
    model = build_detector("tiny", variant=variant, sampling=sampling)
    stats = model_stats(model) | {"gmac": detector_gmac(model)}
    model.to(device)
    with tempfile.TemporaryDirectory(prefix=f"hwconv-ablation-{variant}-{sampling}-") as work:
        r = float_then_qat(model, data, recipe, deadline=start + minutes * 60, work=Path(work), progress=progress)
    assert r is not None  # one process: this is rank 0
    f, q = r["float"], r["qat"]
    return {"variant": variant, "sampling": sampling, "engine_mode": (variant, sampling) == ENGINE_MODE,
            "float_AP50": r["float_AP50"], "w4a8_AP50": r["w4a8_AP50"], "float_AP": r["float_AP"],
            "w4a8_AP": r["w4a8_AP"], "delta_AP50_points": r["delta_AP50_points"],
            "gmac": round(stats["gmac"], 5), "weight_kbytes": round(stats["weight_mbytes"] * 1e3, 2),
            "float_epochs": f["epochs"], "qat_epochs": q["epochs"],
            "images_seen": f["images_seen"] + q["images_seen"], "budget_s": minutes * 60,
            "wall_s": round(time.perf_counter() - start, 1), "device": device_description(device),
            "recipe": asdict(recipe), "float": f, "qat": q}


# ------------------------------------------------------------------ report

def load_runs(out_dir: Path) -> list[dict[str, Any]]:
    """Every run file under out_dir/runs, in VARIANTS x SAMPLINGS order; a malformed one is an
    error naming the file."""
    runs = []
    for path in sorted((out_dir / "runs").glob("*.json")):
        try:
            r = json.loads(path.read_text())
            key = (r["variant"], r["sampling"])
            float(r["float_AP50"]), float(r["w4a8_AP50"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not an ablation run result ({type(exc).__name__}: {exc})") from None
        if key[0] not in VARIANTS or key[1] not in SAMPLINGS:
            raise ValueError(f"{path}: unknown variant/sampling {key}")
        runs.append(r)
    order = {(v, s): i for i, (v, s) in enumerate((v, s) for v in VARIANTS for s in SAMPLINGS)}
    return sorted(runs, key=lambda r: order[(r["variant"], r["sampling"])])


def markdown_table(runs: list[dict[str, Any]]) -> str:
    head = ("| variant | sampling | float AP50 | W4A8 AP50 | delta (points) | float AP | W4A8 AP | "
            "MMAC | weights (KB) | epochs float+QAT | budget (s) | device |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
    rows = []
    for r in runs:
        name = f"**{r['variant']}**" if r["engine_mode"] else r["variant"]
        rows.append(f"| {name} | {r['sampling']} | {r['float_AP50']:.3f} | {r['w4a8_AP50']:.3f} | "
                    f"{r['delta_AP50_points']:+.1f} | {r['float_AP']:.3f} | {r['w4a8_AP']:.3f} | "
                    f"{r['gmac'] * 1e3:.1f} | {r['weight_kbytes']:.1f} | {r['float_epochs']}+{r['qat_epochs']} | "
                    f"{r['budget_s']:.0f} | {r['device']} |")
    return head + "\n".join(rows) + "\n"


def plot_png(runs: list[dict[str, Any]]) -> bytes:
    """Grouped bars: per variant, float and W4A8 AP50 for each sampling."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = [v for v in VARIANTS if any(r["variant"] == v for r in runs)]
    samplings = [s for s in SAMPLINGS if any(r["sampling"] == s for r in runs)]
    by_key = {(r["variant"], r["sampling"]): r for r in runs}
    bars = [(s, kind) for s in samplings for kind in ("float", "w4a8")]
    width = 0.8 / len(bars)
    colours = {("bilinear", "float"): "#9ecae1", ("bilinear", "w4a8"): "#3182bd",
               ("integer", "float"): "#fdae6b", ("integer", "w4a8"): "#e6550d"}
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    for k, (s, kind) in enumerate(bars):
        xs, ys = [], []
        for i, v in enumerate(variants):
            if (v, s) in by_key:
                xs.append(i - 0.4 + (k + 0.5) * width)
                ys.append(by_key[(v, s)][f"{kind}_AP50"])
        ax.bar(xs, ys, width, label=f"{s}, {'float' if kind == 'float' else 'W4A8'}", color=colours[(s, kind)])
        for x, y in zip(xs, ys):
            ax.text(x, y + 0.01, f"{y:.2f}", ha="center", va="bottom", fontsize=7, rotation=90)
    ax.set_xticks(range(len(variants)), [v.replace("_", "\n") for v in variants])
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("AP50 (val)")
    budget = sorted({r["budget_s"] for r in runs})
    ax.set_title(f"tiny CenterNet on the semi-synthetic set, {'/'.join(f'{b:.0f}' for b in budget)} s per run")
    ax.legend(fontsize=8, ncol=2, loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_report(out_dir: Path) -> list[dict[str, Any]]:
    runs = load_runs(out_dir)
    if not runs:
        raise ValueError(f"{out_dir / 'runs'}: no run results to report")
    summary = [{k: r[k] for k in ("variant", "sampling", "engine_mode", "float_AP50", "w4a8_AP50", "float_AP",
                                  "w4a8_AP", "delta_AP50_points", "gmac", "weight_kbytes", "float_epochs",
                                  "qat_epochs", "images_seen", "budget_s", "wall_s", "device")} for r in runs]
    atomic_write_text(out_dir / "ablation.json", json.dumps({"runs": summary}, indent=1) + "\n")
    r0 = runs[0]
    note = (f"\nTiny config (128 px input, 10 digit classes), same seed and images for every run; "
            f"{r0['recipe']['float_share']:.0%} of each run's budget in float, then W4A8 QAT of the same "
            f"model. Recipe: {json.dumps(r0['recipe'])}. Bold: the mode hwconv's engine runs (square + "
            f"depthwise, integer sampling). Images seen per run: ablation.json.\n")
    atomic_write_text(out_dir / "ablation.md", markdown_table(runs) + note)
    atomic_write_bytes(out_dir / "ablation.png", plot_png(runs))
    return runs


# ------------------------------------------------------------------ main

def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if not args.report_only:
        device = resolve_device(args.device)
        if args.threads:
            torch.set_num_threads(args.threads)
        todo = [(v, s) for v in args.variants for s in args.samplings
                if args.force or not run_path(args.out_dir, v, s).exists()]
        data = synthetic_data(args.train_images, args.val_images, args.recipe.seed) if todo else {}
        for k, (v, s) in enumerate(todo, 1):
            print(f"[{k}/{len(todo)}] {v} / {s} on {device_description(device)}, {args.minutes_per_run} min",
                  flush=True)
            r = run_one(v, s, data, args.recipe, minutes=args.minutes_per_run, device=device,
                        progress=not args.quiet)
            atomic_write_text(run_path(args.out_dir, v, s), json.dumps(r, indent=1) + "\n")
            print(f"    float AP50 {r['float_AP50']:.4f}  W4A8 AP50 {r['w4a8_AP50']:.4f}  "
                  f"({r['float_epochs']}+{r['qat_epochs']} epochs, {r['wall_s']} s)", flush=True)
    runs = write_report(args.out_dir)
    print(f"report of {len(runs)} runs: {args.out_dir / 'ablation.md'}, ablation.png, ablation.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
