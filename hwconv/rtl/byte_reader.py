"""ByteReader: any byte range of DRAM as a stream of bytes, one per cycle.

The DMA moves whole aligned bus beats; tensors, descriptors and parameter records start at any
byte. The reader asks the DMA for the enclosing beats and hands out exactly the requested bytes,
dropping the ones before the start and after the end.

Pipelined for the clock: a command is registered when taken (with the enclosing beats' length,
one adder from the command) and goes to the DMA the next cycle as registers; the held beat is a
shift register whose low byte is the byte on offer (the start offset shifted out as the beat is
loaded), a second beat register takes each beat from the DMA, the following one while the held
one is handed out (so the DMA's ready is a register), the bytes leave through a two-entry skid
buffer (so `o.ready` steers only its registers), and the "last byte" / "last of the beat" tests
are flags kept a step ahead: every output and every ready comes from registers through a few
LUTs.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
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

        # -- commands: taken when the previous one is fully out, registered, then to the DMA ----
        free = Signal(init=1)  # no command taken and not yet fully handed out
        c_addr = Signal(cfg.addr_width)
        c_len = Signal(32)  # the enclosing beats' length in bytes
        c_pending = Signal()  # the registered command waits for the DMA
        m.d.comb += [
            self.cmd.ready.eq(free),
            dma.cmd.valid.eq(c_pending),
            dma.cmd.p.addr.eq(c_addr >> sh << sh),
            dma.cmd.p.length.eq(c_len),
        ]
        with m.If(dma.cmd.ready):
            m.d.sync += c_pending.eq(0)

        remaining = Signal(32)  # bytes of the current command not yet handed out
        rem1 = Signal()  # remaining == 1: the byte on offer is the last
        start = Signal(range(bb))  # where the next beat's first byte is: the offset, then 0
        # Two beat registers: `nxt` takes each beat from the DMA, shifted so that its first byte
        # to hand out is its lowest; `beat` holds the one being handed out (the byte on offer in
        # its low 8 bits, `at_end` when it is the beat's last byte) and loads from `nxt`. The
        # DMA's ready is `~nxt_valid`, a register: nothing from `o.ready`.
        beat = Signal(cfg.axi_data_width)
        have = Signal()
        idx = Signal(range(bb))  # byte of the held beat on offer
        at_end = Signal()  # idx == bb - 1
        nxt = Signal(cfg.axi_data_width)
        nxt_valid = Signal()
        nxt_idx = Signal(range(bb))
        nxt_at_end = Signal()
        raw_active = Signal()  # a raw command's beats are still to come

        cmd_take = self.cmd.valid & self.cmd.ready
        with m.If(cmd_take):
            length = self.cmd.p.length
            # the enclosing beats: (offset in the first beat + length + bb - 1), whole beats
            m.d.sync += [c_addr.eq(self.cmd.p.addr),
                         c_len.eq((length + self.cmd.p.addr[:sh] + (bb - 1)) >> sh << sh),
                         c_pending.eq(length != 0),
                         free.eq(~self.raw & (length == 0))]
            with m.If(self.raw):
                m.d.sync += raw_active.eq(1)
            with m.Else():
                m.d.sync += [remaining.eq(length), rem1.eq(length == 1), start.eq(self.cmd.p.addr[:sh])]

        # raw: whole beats through a two-entry skid buffer (`rh_*` on offer, `rs_*` the spare), so
        # the DMA's ready is a register (`~rs_valid`) and the taker's ready (the engine's sink
        # flags and a unit's state) steers only these registers, not the DMA's queue.
        rh_valid, rs_valid = Signal(), Signal()
        rh, rs = Signal.like(dma.o.p), Signal.like(dma.o.p)
        take_raw = raw_active & dma.o.valid & ~rs_valid
        m.d.comb += [self.beats.valid.eq(rh_valid), self.beats.p.eq(rh)]
        with m.If(~rh_valid | self.beats.ready):
            with m.If(rs_valid):
                m.d.sync += [rh.eq(rs), rs_valid.eq(0)]
            with m.Else():
                m.d.sync += [rh_valid.eq(take_raw), rh.eq(dma.o.p)]
        with m.Elif(take_raw):
            m.d.sync += [rs_valid.eq(1), rs.eq(dma.o.p)]
        with m.If(take_raw & dma.o.p.last):     # the command's beats are all in the skid
            m.d.sync += raw_active.eq(0)
        with m.If(self.beats.valid & self.beats.ready & self.beats.p.last):
            m.d.sync += free.eq(1)

        take = Signal()
        release = Signal()
        # `o` from a two-entry skid buffer (`o_*` on offer, `sp_*` the spare): the byte leaves the
        # beat register when the spare is empty (a register), so `o.ready` (the sequencer's state
        # decode in the engine) only steers these few registers.
        o_valid, o_byte, o_last = Signal(), Signal(8), Signal()
        sp_valid, sp_byte, sp_last = Signal(), Signal(8), Signal()
        hand = have & ~sp_valid
        m.d.comb += [
            self.o.valid.eq(o_valid),
            self.o.p.byte.eq(o_byte),
            self.o.p.last.eq(o_last),
            release.eq(hand & (at_end | rem1)),
            dma.o.ready.eq(Mux(raw_active, ~rs_valid, ~nxt_valid)),
            take.eq(dma.o.valid & ~nxt_valid & ~raw_active),
        ]
        with m.If(~o_valid | self.o.ready):
            with m.If(sp_valid):
                m.d.sync += [o_byte.eq(sp_byte), o_last.eq(sp_last), sp_valid.eq(0)]
            with m.Else():
                m.d.sync += [o_valid.eq(hand), o_byte.eq(beat[:8]), o_last.eq(rem1)]
        with m.Elif(hand):
            m.d.sync += [sp_valid.eq(1), sp_byte.eq(beat[:8]), sp_last.eq(rem1)]
        with m.If(self.o.valid & self.o.ready & self.o.p.last):
            m.d.sync += free.eq(1)
        with m.If(take):
            m.d.sync += [nxt.eq(dma.o.p.data >> Cat(Const(0, 3), start)), nxt_idx.eq(start),
                         nxt_at_end.eq(start == bb - 1), nxt_valid.eq(1), start.eq(0)]
        with m.If(hand):
            m.d.sync += [remaining.eq(remaining - 1), rem1.eq(remaining == 2),
                         idx.eq(idx + 1), at_end.eq(idx == bb - 2), beat.eq(beat >> 8)]
        with m.If(~have | release):
            # the held beat is free (or freed now): the next one if it is there
            m.d.sync += have.eq(nxt_valid)
            with m.If(nxt_valid):
                m.d.sync += [beat.eq(nxt), idx.eq(nxt_idx), at_end.eq(nxt_at_end), nxt_valid.eq(0)]
        return m
