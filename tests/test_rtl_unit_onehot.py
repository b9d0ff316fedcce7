"""OneHotFSM: a small counter machine simulated against its Python model; one flag at a time."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.hdl import Elaboratable, Module, Signal
from amaranth.sim import Simulator

from hwconv.rtl.onehot import OneHotFSM


class _Machine(Elaboratable):
    """IDLE -go-> COUNT (3 cycles) -> DONE -> IDLE; `stop` in COUNT goes back to IDLE (a later
    goto overriding an earlier one, as m.next does)."""

    def __init__(self):
        self.go, self.stop, self.count = Signal(), Signal(), Signal(2)
        self.flags = None

    def elaborate(self, platform):
        m = Module()
        fsm = OneHotFSM(m, ["IDLE", "COUNT", "DONE"], name="t")
        self.flags = fsm.flags
        with fsm.state("IDLE"):
            with m.If(self.go):
                m.d.sync += self.count.eq(0)
                fsm.goto("COUNT")
        with fsm.state("COUNT"):
            m.d.sync += self.count.eq(self.count + 1)
            with m.If(self.count == 2):
                fsm.goto("DONE")
            with m.If(self.stop):
                fsm.goto("IDLE")
        with fsm.state("DONE"):
            fsm.goto("IDLE")
        return m


def test_one_hot_machine_follows_its_model():
    dut = _Machine()
    rng = np.random.default_rng(3)
    visited = set()

    async def bench(ctx):
        state, count = "IDLE", 0
        for _ in range(400):
            go, stop = int(rng.random() < 0.5), int(rng.random() < 0.15)
            ctx.set(dut.go, go)
            ctx.set(dut.stop, stop)
            flags = {s: ctx.get(f) for s, f in dut.flags.items()}
            assert sum(flags.values()) == 1 and flags[state] == 1, (state, flags)
            visited.add(state)
            await ctx.tick()
            if state == "IDLE" and go:
                state, count = "COUNT", 0
            elif state == "COUNT":
                state = "IDLE" if stop else "DONE" if count == 2 else "COUNT"
                count = (count + 1) % 4
            elif state == "DONE":
                state = "IDLE"

    m = Module()
    m.submodules.dut = dut
    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert visited == {"IDLE", "COUNT", "DONE"}


def test_misuse_is_refused():
    m = Module()
    fsm = OneHotFSM(m, ["A", "B"], name="t")
    with pytest.raises(RuntimeError, match="outside"):
        fsm.goto("B")
    with pytest.raises(ValueError, match="distinct"):
        OneHotFSM(m, ["A", "A"], name="u")
