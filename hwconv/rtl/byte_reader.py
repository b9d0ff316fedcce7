"""ByteReader: any byte range of DRAM as a stream of bytes, one per cycle.

The DMA moves whole aligned bus beats; tensors, descriptors and parameter records start at any
byte. The reader asks the DMA for the enclosing beats and hands out exactly the requested bytes,
dropping the ones before the start and after the end.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..spec.config import EngineConfig
from .axi4 import AXI4Signature
from .dma import DMAReader, command_layout, read_beat_layout

__all__ = ["ByteReader"]


class ByteReader(wiring.Component):
    """``cmd``: {addr, length} in bytes (length > 0); ``o``: the bytes in address order, ``last``
    on the final one. A command is taken only when the previous one has been fully handed out.

    With ``raw`` high when the command is taken, the enclosing beats come out whole on ``beats``
    instead (``last`` on the final one), a bus width per cycle, and ``o`` stays idle.
    ``error``/``clear``/``stall_cycles`` are the DMA reader's."""

    def __init__(self, config: EngineConfig):
        self.config = config
        super().__init__({
            "cmd": In(stream.Signature(command_layout(config.addr_width))),
            "o": Out(stream.Signature(data.StructLayout({"byte": unsigned(8), "last": unsigned(1)}))),
            "raw": In(1),
            "beats": Out(stream.Signature(read_beat_layout(config.axi_data_width))),
            "bus": Out(AXI4Signature(config.addr_width, config.axi_data_width, write=False)),
            "clear": In(1),
            "error": Out(1),
            "stall_cycles": Out(32),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        cfg = self.config
        bb = cfg.bus_bytes
        sh = bb.bit_length() - 1
        m.submodules.dma = dma = DMAReader(cfg)
        wiring.connect(m, wiring.flipped(self.bus), dma.bus)
        m.d.comb += [dma.clear.eq(self.clear), self.error.eq(dma.error),
                     self.stall_cycles.eq(dma.stall_cycles)]

        remaining = Signal(32)  # bytes of the current command not yet handed out
        idx = Signal(range(bb))  # byte of the held beat to hand out next
        first = Signal()  # the next beat is the command's first: start at the address offset
        skip = Signal(range(bb))
        beat = Signal(cfg.axi_data_width)
        have = Signal()

        # A new command once the last one is fully out; the DMA gets the enclosing beats.
        end = Signal(cfg.addr_width + 1)
        raw_active = Signal()  # a raw command's beats are still to come
        idle = (remaining == 0) & ~have & ~raw_active
        m.d.comb += [
            end.eq(self.cmd.p.addr + self.cmd.p.length + bb - 1),
            dma.cmd.p.addr.eq(self.cmd.p.addr >> sh << sh),
            dma.cmd.p.length.eq((end >> sh << sh) - (self.cmd.p.addr >> sh << sh)),
            dma.cmd.valid.eq(self.cmd.valid & idle),
            self.cmd.ready.eq(dma.cmd.ready & idle),
        ]
        with m.If(self.cmd.valid & self.cmd.ready):
            with m.If(self.raw):
                m.d.sync += raw_active.eq(1)
            with m.Else():
                m.d.sync += [remaining.eq(self.cmd.p.length), first.eq(1), skip.eq(self.cmd.p.addr[:sh])]

        # raw: beats straight through
        m.d.comb += [self.beats.valid.eq(raw_active & dma.o.valid), self.beats.p.eq(dma.o.p)]
        with m.If(self.beats.valid & self.beats.ready & dma.o.p.last):
            m.d.sync += raw_active.eq(0)

        take = Signal()
        release = Signal()
        m.d.comb += [
            self.o.valid.eq(have),
            self.o.p.byte.eq(beat.word_select(idx, 8)),
            self.o.p.last.eq(remaining == 1),
            release.eq(have & self.o.ready & ((idx == bb - 1) | (remaining == 1))),
            dma.o.ready.eq(Mux(raw_active, self.beats.ready,
                               (~have | release) & (remaining != 0) & ~(release & (remaining == 1)))),
            take.eq(dma.o.valid & dma.o.ready & ~raw_active),
        ]
        with m.If(have & self.o.ready):
            m.d.sync += [remaining.eq(remaining - 1), idx.eq(idx + 1)]
        with m.If(release):
            m.d.sync += have.eq(0)
        with m.If(take):
            m.d.sync += [beat.eq(dma.o.p.data), have.eq(1), first.eq(0), idx.eq(Mux(first, skip, 0))]
        return m
