"""cocotb test module behind `hwconv.sim.speed.measure`: simulated cycles per wall-clock second.

Two figures on the same build: the bare clock (the simulator and cocotb's clock, one Python
wake-up per cycle for the cycle count) and the full testbench (AXI-Lite master, DRAM model with
random backpressure on all ten channels, the engine running a CoDeNet-shaped 32x32 program, or
the shell's self-test while the top runs no programs). Results go to the JSON file named by
HWCONV_SPEED_OUT.
"""

from __future__ import annotations

import json
import os
import time

import cocotb
from cocotb.clock import Clock
from cocotb.simtime import get_sim_time
from cocotb.triggers import ClockCycles

from ..fileio import atomic_write_text
from ..compiler.synthetic import BackboneShape, codenet_program
from .testbench import EngineTestbench
from .programs import random_inputs
from .runner import config_from_env

SMALL_CODENET = BackboneShape(32, 4, (8, 16, 32, 64), (1, 1, 1), (32, 16, 16), 16, 2)


@cocotb.test()
async def measure_speed(dut):
    cfg = config_from_env()
    cycles = int(os.environ.get("HWCONV_SPEED_CYCLES", "20000"))
    out = os.environ["HWCONV_SPEED_OUT"]

    # Bare clock: cocotb's clock and one Python wake-up at the end.
    clock = Clock(dut.ap_clk, 4000, unit="ps")
    clock.start()
    dut.ap_rst_n.value = 0
    t0 = time.perf_counter()
    await ClockCycles(dut.ap_clk, cycles)
    bare_s = time.perf_counter() - t0
    clock.stop()

    # Full testbench: bus models with backpressure on every channel, running a CoDeNet-shaped 32x32
    # frame again and again.
    program, _ = codenet_program(cfg, SMALL_CODENET)
    tb = EngineTestbench.for_program(dut, program)
    await tb.reset()
    await tb.load_program(program, random_inputs(program, 0))
    tb.set_backpressure(0.5, seed=1)
    runs, t0, ps0 = 0, time.perf_counter(), get_sim_time("ps")
    while (get_sim_time("ps") - ps0) < cycles * tb.clock_period_ps:
        await tb.host.start(irq=True)
        await tb.host.wait_done(50_000_000)
        tb.check_no_violations()
        runs += 1
    bench_s = time.perf_counter() - t0
    clocked = int((get_sim_time("ps") - ps0) // tb.clock_period_ps)
    atomic_write_text(out, json.dumps({
        "bare_clock": {"cycles": cycles, "seconds": bare_s},
        "bench": {"cycles": clocked, "seconds": bench_s, "runs": runs,
                  "workload": "codenet 32x32 program"},
    }) + "\n")
