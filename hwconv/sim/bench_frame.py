"""The RTL frame benchmark: one CoDeNet-shaped frame on the simulated engine of a board.

    python -m hwconv.sim.bench_frame [--model a] [--board ultra96v2] [-o out/bench_rtl]
    hwconv bench --rtl [--model a] [--board ultra96v2]

Builds the program of the detector config (the PyTorch detector with random weights, lowered by
the exporter, calibrated requantisation: `compiler.synthetic`) for the board's default engine, runs it on the Verilator bench with random
inputs, checks the arena against the golden model bit for bit, and prints the engine's own
counters: cycles, fps at the board clock, MAC utilisation, the ratio to CoDeNet's 32.2 fps, and
how far the analytical cycle model (`hwconv.compiler.cycles`) is from the counters per layer.
Writes report.json, cycles_per_layer.png and model_vs_rtl.json into the output folder.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from ..fileio import atomic_write_text

__all__ = ["main", "run_frame_bench"]

# cocotbext-axi's AxiRam answers a read in about this many cycles: the model's DRAM latency here.
BENCH_MEM_LATENCY = 2


def run_frame_bench(model: str = "a", board: str = "ultra96v2", out_dir: str | Path = "out/bench_rtl", *,
                    sim: str | None = None, backpressure: float = 0.0, seed: int = 0,
                    progress: bool = True) -> dict:
    from ..boards import load_board
    from ..compiler.cycles import program_cycles
    from ..compiler.synthetic import codenet_program
    from ..quant.registry import get_config
    from ..rtl.clock import clock_for
    from .simulate import simulate_program, write_report

    published_fps = get_config(model).published.get("fps")  # CoDeNet's figure for this config, if any
    b = load_board(board)
    cfg = b.default_engine_config()
    clock = clock_for(b, cfg)   # min(board clock, estimated Fmax): the clock fps figures use
    program, _ = codenet_program(cfg, model, reuse_memory=False)  # every layer's output survives
    rng = np.random.default_rng(seed)
    inputs = {}
    for t in program.inputs:
        lo, hi = (-128, 128) if t.signed else (0, 256)
        inputs[t.name] = rng.integers(lo, hi, size=(t.ref.height, t.ref.width, t.ref.channels))

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    bar = None
    if progress:
        from rich.progress import Progress
        bar = Progress()
        bar.start()
        task = bar.add_task(f"RTL {model} on {board}", total=len(program.layers))

    def tick(done: int, n: int, cycles: int) -> None:
        if bar is not None:
            bar.update(task, completed=done, description=f"RTL {model}: {cycles:,} cycles")

    try:
        report = simulate_program(program, inputs, out, source=f"config {model} (random weights)", sim=sim,
                                  clock=clock, backpressure=backpressure, progress=tick)
    finally:
        if bar is not None:
            bar.stop()
    write_report(report, out)
    data = report.data
    model_cycles = program_cycles(program.layers, cfg, mem_latency=BENCH_MEM_LATENCY)
    rows = []
    for layer, mc in zip(data["layers"], model_cycles):
        got = layer["cycles"]
        rows.append({"index": layer["index"], "name": layer["name"], "op": layer["op"], "rtl": got,
                     "model": mc.total, "error": (mc.total - got) / got if got else None, "bound": mc.bound})
    errors = [abs(r["error"]) for r in rows if r["error"] is not None]
    summary = {
        "model": model, "board": board, "engine": cfg.name, "clock_mhz": clock.mhz,
        "clock": clock.to_dict(), "fps_at_board_clock": data["cycles"] and b.default_clock_mhz * 1e6 / data["cycles"],
        "match": data["match"], "cycles": data["cycles"], "fps": data["fps"],
        "codenet_fps": published_fps, "fps_vs_codenet": data["fps"] / published_fps if published_fps else None,
        "mac_utilisation": data["utilisation"], "macs": data["macs"],
        "model_cycles": sum(r["model"] for r in rows),
        "model_max_layer_error": max(errors) if errors else None,
        "model_layers_within_10pct": sum(e <= 0.10 for e in errors), "layers": len(rows),
        "sim_cycles_per_second": data["sim"]["cycles_per_second"], "wall_s": round(time.perf_counter() - t0, 1),
    }
    atomic_write_text(out / "model_vs_rtl.json", json.dumps({"summary": summary, "layers": rows}, indent=1) + "\n")
    return summary


def format_summary(s: dict) -> str:
    verdict = "RTL == golden (bit-exact)" if s["match"] else "RTL != golden: see report.json"
    return "\n".join([
        f"Detector config {s['model']} frame on {s['board']} ({s['engine']}): {verdict}",
        f"  clock: {s['clock']['source']}",
        f"  cycles {s['cycles']:,}  ->  {s['fps']:.1f} fps at {s['clock_mhz']:.1f} MHz"
        + (f", {s['fps_vs_codenet']:.2f}x CoDeNet's {s['codenet_fps']} fps" if s["codenet_fps"] else "")
        + f"; MAC utilisation {s['mac_utilisation']:.1%} of {s['macs'] / 1e9:.3f} GMAC",
        f"  cycle model {s['model_cycles']:,} cycles; {s['model_layers_within_10pct']}/{s['layers']} layers "
        f"within 10% (worst {s['model_max_layer_error']:.1%})",
        f"  simulated {s['sim_cycles_per_second']:,} cycles/s, {s['wall_s']} s in all",
    ])


def main(argv: list[str] | None = None) -> int:
    from ..quant.registry import DEFAULT_MODEL, MODEL_NAMES

    p = argparse.ArgumentParser(prog="python -m hwconv.sim.bench_frame", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL, choices=MODEL_NAMES)
    p.add_argument("--board", default="ultra96v2")
    p.add_argument("--sim", choices=["verilator", "icarus"])
    p.add_argument("--backpressure", type=float, default=0.0)
    p.add_argument("-o", "--out", default="out/bench_rtl")
    args = p.parse_args(argv)
    s = run_frame_bench(args.model, args.board, args.out, sim=args.sim, backpressure=args.backpressure)
    print(format_summary(s))
    return 0 if s["match"] else 1


if __name__ == "__main__":
    sys.exit(main())
