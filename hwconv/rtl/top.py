"""EngineTop: the accelerator as delivered — control registers around the engine core.

Ports (Vivado/Vitis-style names, so interface inference and PYNQ find them):
``ap_clk``, ``ap_rst_n`` (active-low, synchronous), the AXI4-Lite ``s_axi_control_*`` port of
`ControlRegisters`, the AXI4 manager ``m_axi_gmem_*`` (DRAM: descriptors, parameters, activations)
and ``irq`` (level: IRQ_STATUS.done & IRQ_ENABLE.done).

A run: the host writes DESC_BASE, PARAMS_BASE/SIZE, ARENA_BASE/SIZE, then CONTROL.start; the
core (`engine.EngineCore`) walks the whole program and ends with STATUS.done and IRQ_STATUS.done,
with STATUS.error, ERROR and ERROR_LAYER set when it stopped on an error. CONTROL.soft_reset
stops a run at the next row boundary (no AXI transaction is left half done) without raising done.
"""

from __future__ import annotations

from amaranth.hdl import ClockDomain, Module, Mux
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..spec.config import EngineConfig
from .axi4 import AXI4Signature
from .axi_lite import AXI4LiteSignature
from .csr import CSR_ADDR_WIDTH, REG_BITS, ControlRegisters
from .engine import EngineCore

__all__ = ["EngineTop"]


class EngineTop(wiring.Component):
    """The generated top level (see the module docstring)."""

    def __init__(self, config: EngineConfig):
        self.config = config
        super().__init__({
            "ap_clk": In(1),
            "ap_rst_n": In(1),
            "s_axi_control": In(AXI4LiteSignature(CSR_ADDR_WIDTH, REG_BITS)),
            "m_axi_gmem": Out(AXI4Signature(config.addr_width, config.axi_data_width)),
            "irq": Out(1),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        # The sync domain is clocked from our own ports, so the Verilog has ap_clk/ap_rst_n
        # rather than Amaranth's implicit clk/rst (active high).
        m.domains.sync = cd = ClockDomain("sync")
        m.d.comb += [cd.clk.eq(self.ap_clk), cd.rst.eq(~self.ap_rst_n)]

        m.submodules.csr = csr = ControlRegisters(self.config)
        m.submodules.core = core = EngineCore(self.config)
        wiring.connect(m, wiring.flipped(self.s_axi_control), csr.bus)
        wiring.connect(m, wiring.flipped(self.m_axi_gmem), core.bus)
        m.d.comb += [
            self.irq.eq(csr.irq),
            core.start.eq(csr.start),
            core.soft_reset.eq(csr.soft_reset),
            core.desc_base.eq(csr.desc_base),
            core.params_base.eq(csr.params_base),
            core.params_size.eq(csr.params_size),
            core.arena_base.eq(csr.arena_base),
            core.arena_size.eq(csr.arena_size),
            core.perf_select.eq(csr.perf_select),
            csr.status.busy.eq(core.busy),
            csr.status.done.eq(core.done),
            csr.status.error.eq(core.error != 0),
            csr.error.eq(core.error),
            csr.error_layer.eq(Mux(core.error != 0, core.error_layer, 0)),
            csr.done_pulse.eq(core.done_pulse),
            csr.layers_done.eq(core.layers_done),
            csr.cycles.eq(core.cycles),
            csr.perf_layer_cycles.eq(core.perf_layer_cycles),
            csr.perf_layer_macs.eq(core.perf_layer_macs),
            csr.stall_cycles.eq(core.stall_cycles),
        ]
        return m
