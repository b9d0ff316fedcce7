"""PerfCounters against a Python model: random busy / layer-start / MAC / record sequences, then
every recorded layer read back through `select`."""

from __future__ import annotations

import numpy as np
from amaranth.sim import Simulator

from hwconv.rtl.perf_counters import PerfCounters
from hwconv.spec import EngineConfig

CFG = EngineConfig(pe_in=4, pe_out=4, max_layers=16)


def test_counters_match_model():
    rng = np.random.default_rng(0)
    steps = []
    for layer in range(6):
        steps.append(dict(busy=1, layer_start=1, macs=0, record=0, layer=layer))
        for _ in range(int(rng.integers(5, 40))):
            steps.append(dict(busy=int(rng.random() < 0.9), layer_start=0, macs=int(rng.integers(0, 300)),
                              record=0, layer=layer))
        steps.append(dict(busy=1, layer_start=0, macs=0, record=1, layer=layer))
    # the model: registers update at the end of each step
    cycles = layer_cycles = layer_macs = 0
    want = {}
    for s in steps:
        if s["record"]:
            want[s["layer"]] = (layer_cycles, layer_macs)
        cycles += s["busy"]
        layer_cycles += s["busy"]
        layer_macs += s["macs"]
        if s["layer_start"]:
            layer_cycles = layer_macs = 0
    dut = PerfCounters(CFG)
    got = {}

    async def bench(ctx):
        ctx.set(dut.run_start, 1)
        await ctx.tick()
        ctx.set(dut.run_start, 0)
        for s in steps:
            for name, v in s.items():
                ctx.set(getattr(dut, name), v)
            await ctx.tick()
        ctx.set(dut.busy, 0)
        ctx.set(dut.record, 0)
        got["cycles"] = ctx.get(dut.cycles)
        for layer in want:
            ctx.set(dut.select, layer)
            await ctx.tick()   # the memory's read: not yet on sel_* (the output is registered)
            stale = (ctx.get(dut.sel_cycles), ctx.get(dut.sel_macs))
            await ctx.tick()
            got[layer] = (ctx.get(dut.sel_cycles), ctx.get(dut.sel_macs))
            if len(want) > 1 and got[layer] != stale:
                got.setdefault("changed_late", 0)
                got["changed_late"] += 1

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert got.pop("cycles") == cycles
    assert got.pop("changed_late", 0) >= 1   # some selection shows only after the register
    assert got == want
