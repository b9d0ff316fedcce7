"""Simulation speed: simulated engine cycles per wall-clock second, per simulator.

`measure(sim, config)` runs hwconv/sim/cocotb_speed.py on the cached build and returns both
figures (bare clock; full bench with AXI traffic and backpressure), excluding the build and the
simulator's start-up. `hwconv simulate --speed` prints them for Verilator and Icarus.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..spec.config import EngineConfig
from .runner import run

__all__ = ["SpeedResult", "measure"]


@dataclass(frozen=True)
class SpeedResult:
    sim: str
    bare_cycles_per_s: float
    bench_cycles_per_s: float
    bench_cycles: int
    workload: str
    build_seconds: float        # 0 when the build came from the cache
    run_seconds: float          # the whole simulator process, start-up included

    def describe(self) -> str:
        return (f"{self.sim:9s} bare clock {self.bare_cycles_per_s:12,.0f} cycles/s   "
                f"full bench {self.bench_cycles_per_s:10,.0f} cycles/s "
                f"({self.bench_cycles} cycles of {self.workload}; process {self.run_seconds:.1f} s)")


def measure(sim: str, config: EngineConfig | None = None, cycles: int = 20000) -> SpeedResult:
    config = config or EngineConfig()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "speed.json"
        r = run("hwconv.sim.cocotb_speed", config=config, sim=sim, name="speed",
                env={"HWCONV_SPEED_OUT": str(out), "HWCONV_SPEED_CYCLES": str(cycles)},
                timeout_s=600)
        data = json.loads(out.read_text())
    bare, bench = data["bare_clock"], data["bench"]
    return SpeedResult(sim, bare["cycles"] / bare["seconds"], bench["cycles"] / bench["seconds"],
                       bench["cycles"], bench["workload"], r.build.seconds, r.seconds)
