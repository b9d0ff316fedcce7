"""The regression: random programs in batches on every core, judged against golden, with coverage.

`verify(config, seed=S, programs=N, layers=L)` runs the programs of seeds S .. S+N-1 (each a
pure function of its seed and L: `generate`). The Verilator build is made once (cached by
`runner.build`); batches of programs then run in a process pool, each batch in one simulator
process (`cocotb_verify`), so the simulator's start-up is paid once per batch. A worker
generates its programs, writes them, runs the batch and compares each final arena with the
golden model's (`compare`); the parent gathers the verdicts and the coverage records and
writes the report (`report.write_report`). A failing program is reported with its seed and the
command that runs it alone; `minimise` shrinks it.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ...compiler.cycles import program_cycles
from ...fileio import atomic_write_bytes, atomic_write_text
from ...spec.config import EngineConfig
from ...spec.program import Program
from ...spec.registers import ErrorCode
from ..compare import compare_arenas, golden_arena
from ..runner import SimError, build as build_sim, run as run_sim
from .coverage import Coverage, LayerRecord, classify_layers
from .generate import DEFAULT_LAYERS, generate
from .spec import ProgramSpec, build

__all__ = ["Outcome", "RunSummary", "run_specs", "verify"]

MODULE = "hwconv.sim.verify.cocotb_verify"
JOB_ENV = "HWCONV_VERIFY_JOB"
DEFAULT_BATCH = 4
BATCH_WALL_S = 3600


@dataclass
class Outcome:
    """What one program did on the RTL."""

    name: str
    seed: int
    layers: int
    ok: bool
    why: str = ""                   # mismatch report, hang, violation or run error
    cycles: int = 0
    records: list = field(default_factory=list)   # LayerRecord.to_list() per layer
    concat_reads: int = 0


def _timeout_cycles(program: Program, backpressure: float) -> int:
    model = sum(c.total for c in program_cycles(program.layers, program.config))
    slow = 1.0 / (1.0 - backpressure) ** 2
    return int(4 * model * slow) + 200_000


def _write_program(job: Path, name: str, program: Program, inputs: dict[str, np.ndarray],
                   backpressure: float, bp_seed: int) -> dict:
    program.save(job / f"{name}.hwc")
    for n, value in inputs.items():
        buf = io.BytesIO()
        np.save(buf, np.asarray(value), allow_pickle=False)
        atomic_write_bytes(job / f"{name}.{n}.npy", buf.getvalue())
    return {"name": name, "inputs": sorted(inputs), "backpressure": backpressure,
            "bp_seed": bp_seed, "timeout_cycles": _timeout_cycles(program, backpressure)}


def _concat_reads(spec: ProgramSpec) -> int:
    writers: dict[int, int] = {}
    n = 0
    for L in spec.layers:
        if any(v is not None and writers.get(v.buf, 0) > 1 for v in (L.in0, L.in1)):
            n += 1
        writers[L.out.buf] = writers.get(L.out.buf, 0) + 1
    return n


def run_specs(config: EngineConfig, specs: list[tuple[str, ProgramSpec]], job: Path, *,
              keep: bool = False, wall_s: float = BATCH_WALL_S) -> list[Outcome]:
    """Run named specs as one simulator batch in `job` and judge each against golden. The job
    folder is removed afterwards unless a program failed or `keep`."""
    shutil.rmtree(job, ignore_errors=True)
    job.mkdir(parents=True)
    entries, built = [], []
    for name, spec in specs:
        program, inputs = build(config, spec)
        built.append((name, spec, program, inputs))
        entries.append(_write_program(job, name, program, inputs, spec.backpressure, spec.seed))
    atomic_write_text(job / "batch.json", json.dumps(entries, indent=1) + "\n")
    outcomes: list[Outcome] = []
    try:
        run_sim(MODULE, config=config, name=f"verify-{job.name}", timeout_s=wall_s,
                env={JOB_ENV: str(job.resolve())})
        run_error = None
    except SimError as exc:     # a crash or wall-clock limit: judge what was written
        run_error = str(exc).splitlines()[0]
    for name, spec, program, inputs in built:
        outcomes.append(_judge(name, spec, program, inputs, job, run_error))
    if keep is False and all(o.ok for o in outcomes):
        shutil.rmtree(job, ignore_errors=True)
    return outcomes


def _judge(name: str, spec: ProgramSpec, program: Program, inputs: dict, job: Path,
           run_error: str | None) -> Outcome:
    want = golden_arena(program, inputs)
    records = [r.to_list() for r in classify_layers(program, want, spec.backpressure > 0)]
    out = Outcome(name, spec.seed, len(program.layers), False, records=records,
                  concat_reads=_concat_reads(spec))
    try:
        result = json.loads((job / f"{name}.result.json").read_text())
        got = np.frombuffer((job / f"{name}.arena.bin").read_bytes(), dtype=np.uint8)
    except (OSError, ValueError):
        out.why = f"no result from the simulator ({run_error or 'the batch stopped before it'})"
        return out
    out.cycles = int(result["cycles"])
    if result["hang"] or result["violation"]:
        out.why = result["hang"] or result["violation"]
        return out
    if result["busy"] or not result["done"] or result["error"] != ErrorCode.NONE \
            or result["layers_done"] != len(program.layers):
        code = result["error"]
        name_ = ErrorCode(code).name if code in {int(e) for e in ErrorCode} else f"code {code}"
        out.why = (f"engine stopped with {name_} at layer {result['error_layer']} after "
                   f"{result['layers_done']} of {len(program.layers)} layers (golden: no error)")
        return out
    cmp = compare_arenas(program, got, want)
    out.ok = cmp.match
    out.why = "" if cmp.match else cmp.describe(program.layer_names)
    return out


def _batch(config_json: str, seeds: list[int], layers: int, root: str) -> list[Outcome]:
    """Worker: generate, run and judge the programs of `seeds` (one simulator process)."""
    config = EngineConfig.from_dict(json.loads(config_json))
    specs = [(f"seed{s}", generate(config, s, layers)) for s in seeds]
    return run_specs(config, specs, Path(root) / f"batch{seeds[0]}")


@dataclass
class RunSummary:
    config: EngineConfig
    seed: int
    programs: int
    layers_per_program: int
    outcomes: list[Outcome]
    coverage: Coverage
    wall_s: float
    build_s: float
    workers: int

    @property
    def layers(self) -> int:
        return sum(o.layers for o in self.outcomes)

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]


def verify(config: EngineConfig, *, seed: int = 0, programs: int = 200,
           layers: int = DEFAULT_LAYERS, workers: int | None = None, batch: int = DEFAULT_BATCH,
           out_dir: Path = Path("out/verify"), budget_s: float | None = None,
           log: Callable[[str], None] | None = None) -> RunSummary:
    """Run the regression (module docstring) and return its summary (nothing written here).
    With `budget_s`, batches not started within that many seconds are dropped (the summary
    counts only the programs that ran)."""
    say = log or (lambda s: None)
    workers = workers or os.cpu_count() or 1
    t0 = time.perf_counter()
    sim = build_sim(config, sim="verilator", log=say)
    build_s = time.perf_counter() - t0
    seeds = list(range(seed, seed + programs))
    chunks = [seeds[i:i + batch] for i in range(0, len(seeds), batch)]
    root = Path(out_dir) / "jobs"
    coverage = Coverage()
    outcomes: list[Outcome] = []
    t1 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(_batch, config.canonical_json(), c, layers, str(root)): c
                   for c in chunks}
        for fut in as_completed(futures):
            if budget_s is not None and time.perf_counter() - t0 > budget_s:
                for f in futures:
                    f.cancel()      # batches already running finish; the rest never start
            if fut.cancelled():
                continue
            try:
                got = fut.result()
            except Exception as exc:  # noqa: BLE001  (a worker crash fails its seeds, loudly)
                got = [Outcome(f"seed{s}", s, 0, False, f"worker failed: {exc!r}")
                       for s in futures[fut]]
            for o in got:
                outcomes.append(o)
                for r in o.records:
                    coverage.add(LayerRecord.from_list(r))
                coverage.add_concat_reads(o.concat_reads)
            done_layers = sum(o.layers for o in outcomes)
            bad = sum(not o.ok for o in outcomes)
            rate = done_layers / max(1e-9, time.perf_counter() - t1)
            say(f"{len(outcomes)}/{programs} programs, {done_layers} layers, {bad} failing, "
                f"{rate:.2f} layers/s" + "".join(f"\n  FAIL seed {o.seed}: {o.why}"
                                                  for o in got if not o.ok))
    outcomes.sort(key=lambda o: o.seed)
    del sim
    return RunSummary(config, seed, len(outcomes), layers, outcomes, coverage,
                      time.perf_counter() - t0, build_s, workers)
