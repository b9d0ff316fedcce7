"""PerfCounters: the run's cycle count and, per layer, its cycles and multiply-accumulates, kept in
small memories the host reads back one layer at a time (PERF_SELECT -> PERF_LAYER_*)."""

from __future__ import annotations

from amaranth.hdl import Module, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..spec.config import EngineConfig

__all__ = ["PerfCounters"]


class PerfCounters(wiring.Component):
    """``run_start``: clear the run's count; ``busy``: count this cycle; ``layer_start``: the
    layer's counters restart (held while high); ``macs``: products done this cycle; ``record``:
    store the layer's counters at ``layer``. ``select`` picks the layer read on ``sel_*``, two
    cycles later (the memory, then a register)."""

    def __init__(self, config: EngineConfig):
        self.config = config
        super().__init__({
            "run_start": In(1),
            "busy": In(1),
            "layer_start": In(1),
            "macs": In(16),
            "record": In(1),
            "layer": In(32),
            "select": In(32),
            "cycles": Out(64),
            "layer_cycles": Out(32),
            "sel_cycles": Out(32),
            "sel_macs": Out(64),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        n = self.config.max_layers
        m.submodules.cycles_mem = cyc = Memory(shape=unsigned(32), depth=n, init=[])
        m.submodules.macs_mem = mac = Memory(shape=unsigned(64), depth=n, init=[])
        cw, cr, mw, mr = cyc.write_port(), cyc.read_port(), mac.write_port(), mac.read_port()
        layer_macs = Signal(64)
        with m.If(self.busy):
            m.d.sync += [self.cycles.eq(self.cycles + 1), self.layer_cycles.eq(self.layer_cycles + 1)]
        with m.If(self.run_start):
            m.d.sync += self.cycles.eq(0)
        m.d.sync += layer_macs.eq(layer_macs + self.macs)
        with m.If(self.layer_start):
            m.d.sync += [self.layer_cycles.eq(0), layer_macs.eq(0)]
        m.d.comb += [
            cw.addr.eq(self.layer), cw.data.eq(self.layer_cycles), cw.en.eq(self.record),
            mw.addr.eq(self.layer), mw.data.eq(layer_macs), mw.en.eq(self.record),
            cr.addr.eq(self.select), mr.addr.eq(self.select),
        ]
        # The selected layer's counters, registered after the memories (their slow clock-to-out
        # then meets no logic): a new `select` shows two cycles later.
        m.d.sync += [self.sel_cycles.eq(cr.data), self.sel_macs.eq(mr.data)]
        return m
