"""`simulate_program`: a program on the RTL bench, checked bit-exactly against the golden model.

Steps: refuse unless the engine top runs programs; write the job (program, inputs as .npy) into
`<out>/job/`; run hwconv/sim/cocotb_program.py on the cached build of the program's engine
config (progress from the job's progress.json); compare the final arena with the golden one
(`compare`); build the report: per-layer and total cycles, fps at the clock, MAC-array
utilisation (useful MACs / (cycles * pe_in * pe_out)), match or the first mismatching layer.
`write_report` writes report.json and the cycles-per-layer plot, each atomically.
"""

from __future__ import annotations

import io
import json
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..compiler.cost import layer_macs, peak_macs_per_cycle
from ..fileio import atomic_write_bytes, atomic_write_text
from ..rtl.clock import EngineClock, clock_for
from ..spec.program import Program
from ..spec.registers import ErrorCode
from .compare import Comparison, compare_arenas, golden_arena
from .runner import run

__all__ = ["CODENET_FPS", "SimReport", "simulate_program", "write_report"]

CODENET_FPS = 32.2    # CoDeNet config a on Ultra96 (FPGA 2021), the figure to beat
DEFAULT_TIMEOUT_CYCLES = 200_000_000


@dataclass
class SimReport:
    program: str
    sim: str
    clock_mhz: float
    data: dict                     # what report.json holds
    comparison: Comparison | None

    @property
    def passed(self) -> bool:
        return bool(self.data["match"])


def simulate_program(program: Program, inputs: dict[str, np.ndarray], out_dir: Path, *,
                     source: str = "program", sim: str | None = None, waves: bool = False,
                     clock_mhz: float | None = None, clock: EngineClock | None = None,
                     backpressure: float = 0.0,
                     timeout_cycles: int = DEFAULT_TIMEOUT_CYCLES, wall_timeout_s: float = 3600,
                     progress: Callable[[int, int, int], None] | None = None,
                     log: Callable[[str], None] | None = None) -> SimReport:
    """Run `program` on the RTL; `progress(layers_done, n_layers, cycles)` is called as it goes.

    fps figures use `clock` (from `hwconv.rtl.clock.clock_for`: min(board clock, estimated Fmax));
    without it, clock_for(program.config); `clock_mhz` forces a clock, labelled unverified."""
    out_dir = Path(out_dir)
    job = out_dir / "job"
    shutil.rmtree(job, ignore_errors=True)
    job.mkdir(parents=True)
    program.save(job / "program.hwc")
    for name, value in inputs.items():
        buf = io.BytesIO()
        np.save(buf, np.asarray(value), allow_pickle=False)
        atomic_write_bytes(job / f"{name}.npy", buf.getvalue())
    atomic_write_text(job / "job.json", json.dumps({
        "inputs": sorted(inputs), "backpressure": backpressure, "seed": 0,
        "timeout_cycles": timeout_cycles}))

    outcome: dict = {}

    def target() -> None:
        try:
            outcome["run"] = run("hwconv.sim.cocotb_program", config=program.config, sim=sim,
                                 waves=waves, name="simulate", timeout_s=wall_timeout_s,
                                 env={"HWCONV_SIM_JOB": str(job.resolve())}, log=log)
        except BaseException as exc:  # re-raised in the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    n = len(program.layers)
    while worker.is_alive():
        worker.join(0.5)
        if progress is not None:
            try:
                p = json.loads((job / "progress.json").read_text())
                progress(int(p["layers_done"]), n, int(p["cycles"]))
            except (OSError, ValueError, KeyError):
                pass
    if "error" in outcome:
        raise outcome["error"]
    result = json.loads((job / "result.json").read_text())
    if progress is not None:
        progress(result["status"]["layers_done"], n, result["sim_cycles"])

    want = golden_arena(program, inputs)
    got = np.frombuffer((job / "arena.bin").read_bytes(), dtype=np.uint8)
    status = result["status"]
    ok_run = status["done"] and not status["busy"] and status["error"] == ErrorCode.NONE
    cmp = compare_arenas(program, got, want) if ok_run else None
    sim_run = outcome["run"]
    clock = _figure_clock(program, clock_mhz, clock)
    data = _report_data(program, source, sim_run.build.sim, clock.mhz, result, cmp)
    data["clock"] = clock.to_dict()
    data["sim"] = {"simulator": sim_run.build.sim, "build_seconds": round(sim_run.build.seconds, 1),
                   "wall_seconds": round(result["wall_seconds"], 2),
                   "cycles_per_second": round(result["sim_cycles"] / max(result["wall_seconds"], 1e-9)),
                   "waves": str(sim_run.waves) if sim_run.waves else None,
                   "log": str(sim_run.log)}
    return SimReport(source, sim_run.build.sim, clock.mhz, data, cmp)


def _figure_clock(program: Program, clock_mhz: float | None, clock: EngineClock | None) -> EngineClock:
    """The clock the report's fps figures use (a speed figure is cycles x a clock it can meet)."""
    if clock is not None:
        return clock
    if clock_mhz is not None:
        return EngineClock(float(clock_mhz), f"{clock_mhz:g} MHz, given by the caller (unverified)",
                           float(clock_mhz), None, None)
    return clock_for(program.config)


def _report_data(program: Program, source: str, sim: str, clock_mhz: float, result: dict,
                 cmp: Comparison | None) -> dict:
    cfg = program.config
    counters = result["counters"]
    layers = []
    for i, (d, name) in enumerate(zip(program.layers, program.layer_names)):
        c = counters["layers"][i] if i < len(counters["layers"]) else {"cycles": 0, "macs": 0}
        useful = layer_macs(d)
        peak = peak_macs_per_cycle(d, cfg.pe_in, cfg.pe_out)
        layers.append({
            "index": i, "name": name, "op": d.opcode.name, "cycles": c["cycles"],
            "macs_counter": c["macs"], "macs": useful,
            "utilisation": useful / (c["cycles"] * peak) if c["cycles"] else None,
            "peak_macs_per_cycle": peak,
        })
    total = counters["cycles"]
    useful_total = sum(layer["macs"] for layer in layers)
    # Over the frame: the useful MACs over what the array could have made in each layer's cycles
    # (at its peak for the layer's op), and in the cycles between layers at P x P.
    between = max(0, total - sum(layer["cycles"] for layer in layers))
    capacity = (sum(layer["cycles"] * layer["peak_macs_per_cycle"] for layer in layers)
                + between * cfg.pe_in * cfg.pe_out)
    fps = clock_mhz * 1e6 / total if total else None
    status = result["status"]
    error = ErrorCode(status["error"]).name if status["error"] in {int(e) for e in ErrorCode} \
        else f"unknown code {status['error']}"
    return {
        "program": source, "engine": cfg.name, "config_hash": f"0x{cfg.config_hash:08x}",
        "pe": [cfg.pe_in, cfg.pe_out], "clock_mhz": clock_mhz,
        "match": bool(cmp is not None and cmp.match),
        "comparison": None if cmp is None else {
            "differing_bytes": cmp.differing_bytes,
            "first_mismatch": None if cmp.first is None else {
                "layer": cmp.first.layer, "name": cmp.first.name, "y": cmp.first.yxc[0],
                "x": cmp.first.yxc[1], "c": cmp.first.yxc[2], "rtl": cmp.first.got,
                "golden": cmp.first.want, "elements": cmp.first.elements},
            "unchecked_layers": cmp.unchecked, "stray_bytes": cmp.stray_bytes,
            "outputs": cmp.outputs, "summary": cmp.describe()},
        "status": {**status, "error": error, "hang": result.get("hang"),
                   "dram_violations": result.get("violations", [])},
        "cycles": total, "stall_cycles": counters["stall_cycles"],
        "fps": fps, "codenet_fps": CODENET_FPS,
        "fps_vs_codenet": fps / CODENET_FPS if fps else None,
        "macs": useful_total,
        "utilisation": useful_total / capacity if capacity else None,
        "layers": layers,
    }


def write_report(report: SimReport, out_dir: Path) -> list[Path]:
    """report.json and cycles_per_layer.png into `out_dir` (atomic writes)."""
    out_dir = Path(out_dir)
    paths = [out_dir / "report.json", out_dir / "cycles_per_layer.png"]
    atomic_write_text(paths[0], json.dumps(report.data, indent=2) + "\n")
    atomic_write_bytes(paths[1], _plot(report.data))
    return paths


def _plot(data: dict) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = data["layers"]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.22 * len(layers) + 2), 4.5))
    xs = np.arange(len(layers))
    cycles = [layer["cycles"] for layer in layers]
    pe = data["pe"][0] * data["pe"][1]
    ideal = [layer["macs"] / layer.get("peak_macs_per_cycle", pe) for layer in layers]
    ax.bar(xs, cycles, color="#4477aa", label="RTL cycles (PERF_LAYER_CYCLES)")
    ax.plot(xs, ideal, "o", color="#cc6677", markersize=3,
            label=f"ideal: MACs / the {data['pe'][0]}x{data['pe'][1]} array's peak "
                  f"({pe}, {2 * pe} for a packed 4-bit CONV)")
    ax.set_yscale("log")
    ax.set_xticks(xs)
    ax.set_xticklabels([layer["name"] for layer in layers], rotation=90, fontsize=6)
    ax.set_ylabel("cycles")
    fps = f"{data['fps']:.1f} fps" if data["fps"] else "no fps"
    ax.set_title(f"{data['program']} on {data['engine']} @ {data['clock_mhz']:.1f} MHz: "
                 f"{data['cycles']:,} cycles, {fps}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()

