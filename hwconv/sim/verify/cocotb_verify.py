"""cocotb module behind `hwconv verify`: run a batch of programs on one simulator instance.

The batch is the folder named by HWCONV_VERIFY_JOB: ``batch.json`` lists the programs (name,
input names, backpressure probability and seed, cycle limit); each has ``<name>.hwc`` and
``<name>.<input>.npy`` (loaded with allow_pickle=False). For each program the testbench is
loaded, run and read back into ``<name>.arena.bin`` and ``<name>.result.json`` (status, cycles,
hang or DRAM violation). A hang or violation is recorded and the engine hard-reset, so one bad
program never stops the batch; the parent (`run`) compares every arena with the golden model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

import cocotb

from ...fileio import atomic_write_bytes, atomic_write_text
from ...spec.program import Program
from ...driver.protocol import EngineTimeout
from ..testbench import AccessViolation, EngineTestbench
from ..layout import place_program, ram_bytes_for
from ..runner import config_from_env

JOB_ENV = "HWCONV_VERIFY_JOB"


@cocotb.test()
async def run_batch(dut):
    job = Path(os.environ[JOB_ENV])
    batch = json.loads((job / "batch.json").read_text())
    config = config_from_env()
    programs = [Program.load(job / f"{p['name']}.hwc", expect=config) for p in batch]
    ram = ram_bytes_for(max(place_program(p).end for p in programs))
    tb = EngineTestbench(dut, config, ram_bytes=ram)
    await tb.reset()
    for entry, program in zip(batch, programs):
        name = entry["name"]
        inputs = {n: np.load(job / f"{name}.{n}.npy", allow_pickle=False) for n in entry["inputs"]}
        tb.violations.clear()
        tb.set_backpressure(float(entry["backpressure"]), seed=int(entry["bp_seed"]))
        await tb.load_program(program, inputs)
        result: dict = {"hang": None, "violation": None}
        try:
            st = await tb.host.run(int(entry["timeout_cycles"]))
            tb.check_no_violations()
        except EngineTimeout as exc:
            st, result["hang"] = await tb.host.status(), str(exc)
        except AccessViolation as exc:
            st, result["violation"] = await tb.host.status(), str(exc)
        tb.set_backpressure(0.0)
        cycles = await tb.host.read64("CYCLES")
        atomic_write_bytes(job / f"{name}.arena.bin", tb.arena())
        result.update({"busy": st.busy, "done": st.done, "error": int(st.error),
                       "error_layer": st.error_layer, "layers_done": st.layers_done,
                       "cycles": cycles})
        atomic_write_text(job / f"{name}.result.json", json.dumps(result) + "\n")
        if result["hang"] or result["violation"] or st.busy:
            await tb.reset()     # the next program starts from a clean engine
