"""cocotb test module behind `hwconv simulate`: run one program on the RTL and save what it did.

The job comes from the folder named by HWCONV_SIM_JOB: ``program.hwc``, ``job.json`` (input
file names, backpressure, cycle limit) and one ``<input>.npy`` per program input (loaded with
allow_pickle=False). Results go to the same folder: ``arena.bin`` (the final arena),
``result.json`` (status, counters, simulated cycles, wall time) and, while running,
``progress.json`` (layers done, cycles) for the progress bar.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

import cocotb
from cocotb.simtime import get_sim_time
from cocotb.triggers import ClockCycles

from ..fileio import atomic_write_bytes, atomic_write_text
from ..spec.program import Program
from ..driver.protocol import EngineTimeout
from .testbench import EngineTestbench
from .runner import config_from_env

JOB_ENV = "HWCONV_SIM_JOB"
PROGRESS_EVERY_CYCLES = 5000


@cocotb.test()
async def run_program_on_rtl(dut):
    job_dir = Path(os.environ[JOB_ENV])
    job = json.loads((job_dir / "job.json").read_text())
    config = config_from_env()
    program = Program.load(job_dir / "program.hwc", expect=config)
    inputs = {name: np.load(job_dir / f"{name}.npy", allow_pickle=False) for name in job["inputs"]}

    tb = EngineTestbench.for_program(dut, program)
    await tb.reset()
    if job.get("backpressure"):
        tb.set_backpressure(float(job["backpressure"]), seed=int(job.get("seed", 0)))
    await tb.load_program(program, inputs)
    t0, ps0 = time.perf_counter(), get_sim_time("ps")
    await tb.host.start(irq=True)

    async def report_progress() -> None:
        while True:
            await ClockCycles(dut.ap_clk, PROGRESS_EVERY_CYCLES)
            done = await tb.host.read("LAYERS_DONE")
            cycles = int((get_sim_time("ps") - ps0) // tb.clock_period_ps)
            atomic_write_text(job_dir / "progress.json",
                              json.dumps({"layers_done": done, "cycles": cycles}))

    progress = cocotb.start_soon(report_progress())
    result: dict = {}
    try:
        st = await tb.host.wait_done(int(job["timeout_cycles"]))
        result["hang"] = None  # DRAM violations, if any, are in the result below
    except EngineTimeout as exc:
        st = await tb.host.status()
        result["hang"] = str(exc)
    finally:
        progress.cancel()
    wall = time.perf_counter() - t0
    counters = await tb.host.counters(len(program.layers))
    atomic_write_bytes(job_dir / "arena.bin", tb.arena())
    result.update({
        "status": {"busy": st.busy, "done": st.done, "error": int(st.error),
                   "error_layer": st.error_layer, "layers_done": st.layers_done},
        "counters": counters.to_dict(),
        "sim_cycles": int((get_sim_time("ps") - ps0) // tb.clock_period_ps),
        "wall_seconds": wall,
        "violations": tb.violations,
    })
    atomic_write_text(job_dir / "result.json", json.dumps(result, indent=2) + "\n")
