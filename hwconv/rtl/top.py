"""EngineTop: the integration shell of issue 4, NOT the engine.

The full engine (descriptor fetcher, DMA, PE array, deformable sampler) is not built yet. This
top level exists so that `hwconv generate`, Verilator lint and the yosys resource report run end
to end today, on the real control port and the real requantiser; the engine's parts will replace
the self-test below piece by piece.

Ports (Vivado/Vitis-style names, so interface inference and PYNQ find them):
``ap_clk``, ``ap_rst_n`` (active-low, synchronous), the AXI4-Lite ``s_axi_control_*`` port of
`ControlRegisters`, the AXI4 manager ``m_axi_gmem_*`` (DRAM; the shell issues no transactions,
its ready outputs are held high so a subordinate never waits on it) and ``irq`` (level:
IRQ_STATUS.done & IRQ_ENABLE.done).

Self-test, started by CONTROL.start: `SELFTEST_BEATS` vectors of `pe_out` accumulators from a
32-bit LFSR go through the `Requantizer`, a checksum folds its outputs, then STATUS.done and
IRQ_STATUS.done are raised. Until the engine exists the shell borrows registers as knobs, so
that no part of the requantiser is constant and synthesis keeps all of it:

    DESC_BASE[31:0]   LFSR seed              ARENA_SIZE        bias of every lane
    PARAMS_SIZE       mult [23:0], shift [29:24]
    PERF_SELECT       clamp_lo [15:0], clamp_hi [31:16] (signed)
    CYCLES            cycles from start to done
    LAYERS_DONE       beats out of the requantiser
    PERF_LAYER_MACS   64-bit checksum of the requantiser's outputs

ERROR, ERROR_LAYER, STALL_CYCLES and PERF_LAYER_CYCLES read 0.
"""

from __future__ import annotations

from amaranth.hdl import Cat, ClockDomain, Const, Module, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..spec.config import EngineConfig
from ..spec.params import REQUANT_MULT_BITS, REQUANT_SHIFT_BITS
from .axi4 import AXI4Signature
from .axi_lite import AXI4LiteSignature
from .csr import CSR_ADDR_WIDTH, REG_BITS, ControlRegisters
from .requant import Requantizer

__all__ = ["EngineTop", "SELFTEST_BEATS", "CHECKSUM_BITS"]

SELFTEST_BEATS = 8
CHECKSUM_BITS = 64
_LFSR_TAPS = 0x80200003  # x^32 + x^22 + x^2 + x + 1, maximal length (Galois form)


class EngineTop(wiring.Component):
    """Integration shell: control registers + requantiser self-test (see the module docstring)."""

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
        cfg = self.config

        # The sync domain is clocked from our own ports, so the Verilog has ap_clk/ap_rst_n
        # rather than Amaranth's implicit clk/rst (active high).
        m.domains.sync = cd = ClockDomain("sync")
        m.d.comb += [cd.clk.eq(self.ap_clk), cd.rst.eq(~self.ap_rst_n)]

        m.submodules.csr = csr = ControlRegisters(cfg)
        m.submodules.requant = rq = Requantizer(cfg)
        wiring.connect(m, wiring.flipped(self.s_axi_control), csr.bus)
        m.d.comb += [self.irq.eq(csr.irq), self.m_axi_gmem.bready.eq(1), self.m_axi_gmem.rready.eq(1)]

        busy = Signal()
        done = Signal()
        lfsr = Signal(32)
        sent = Signal(range(SELFTEST_BEATS + 1))
        received = Signal(range(SELFTEST_BEATS + 1))
        cycles = Signal(2 * REG_BITS)
        checksum = Signal(CHECKSUM_BITS)

        # -- knobs from the borrowed registers (module docstring) --
        mult = csr.params_size[:REQUANT_MULT_BITS]
        shift = csr.params_size[REQUANT_MULT_BITS:REQUANT_MULT_BITS + REQUANT_SHIFT_BITS]
        m.d.comb += [
            rq.clamp_lo.eq(csr.perf_select[:16].as_signed()),
            rq.clamp_hi.eq(csr.perf_select[16:].as_signed()),
            rq.i.valid.eq(busy & (sent < SELFTEST_BEATS)),
            rq.o.ready.eq(1),
        ]
        for lane in range(rq.lanes):
            p = rq.i.payload[lane]
            rot = (3 * lane) % 32  # each lane sees a different rotation: no two lanes are equal
            m.d.comb += [
                p.acc.eq(lfsr.rotate_left(rot)[:cfg.acc_bits].as_signed()),
                p.bias.eq(csr.arena_size.as_signed()),
                p.mult.eq(mult),
                p.shift.eq(shift),
            ]

        # -- self-test sequencing --
        step = Cat(lfsr[1:], Const(0, 1)) ^ (lfsr[0].replicate(32) & _LFSR_TAPS)
        with m.If(rq.i.valid & rq.i.ready):
            m.d.sync += [lfsr.eq(step), sent.eq(sent + 1)]
        with m.If(rq.o.valid & rq.o.ready):
            m.d.sync += [received.eq(received + 1),
                         checksum.eq(checksum.rotate_left(1) ^ _fold(Cat(*rq.o.payload)))]
        with m.If(busy):
            m.d.sync += cycles.eq(cycles + 1)
            with m.If(received == SELFTEST_BEATS):
                m.d.sync += [busy.eq(0), done.eq(1)]
                m.d.comb += csr.done_pulse.eq(1)
        with m.If(csr.start & ~busy):
            m.d.sync += [busy.eq(1), done.eq(0), sent.eq(0), received.eq(0), cycles.eq(0),
                         checksum.eq(0), lfsr.eq(csr.desc_base[:32] | 1)]  # LFSR must not be 0
        with m.If(csr.soft_reset):
            # Returns the core to idle; beats still in the requantiser drain unobserved.
            m.d.sync += [busy.eq(0), done.eq(0)]

        m.d.comb += [
            csr.status.busy.eq(busy),
            csr.status.done.eq(done),
            csr.cycles.eq(cycles),
            csr.layers_done.eq(received),
            csr.perf_layer_macs.eq(checksum),
        ]
        return m


def _fold(bits: Value) -> Value:
    """XOR of `bits` cut into CHECKSUM_BITS-wide words: every input bit reaches the result."""
    words = [bits[i:i + CHECKSUM_BITS] for i in range(0, len(bits), CHECKSUM_BITS)]
    acc = Const(0, CHECKSUM_BITS)
    for w in words:
        acc = acc ^ w
    return acc[:CHECKSUM_BITS]
