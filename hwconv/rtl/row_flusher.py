"""RowFlusher: the row buffer, and its rows written back to DRAM in full bursts.

The row buffer has two halves with a write port each: the store fills one while the flush
drains the other (clearing its strobes behind it, so the next row starts empty); an upsampled
row fills both (its two output rows). A flush writes whole bus beats, the strobes keeping every
byte that is not the tensor's (other channels of a concat) as it was in DRAM.

``clear`` (a pulse, at the start of a run) zeroes every strobe first: a run cut short by a reset
must not leak its bytes into the next.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..spec.config import EngineConfig
from .dma import command_layout, write_beat_layout
from .split_buffer import SplitBuffer
from .store import row_word_lanes

__all__ = ["RowFlusher"]


class RowFlusher(wiring.Component):
    """``start`` (a pulse, with the row's ``row_addr`` (its first byte), ``row_stride`` (to the
    second output row when upsampling), ``row_len`` (bytes), ``upsample`` and ``odd_row``): flush
    that row; ``done`` pulses when DRAM has acknowledged it, ``idle`` when no flush or clear runs.
    ``s_*``: the store's writes into half ``s_half``."""

    def __init__(self, config: EngineConfig):
        self.config = config
        RW = row_word_lanes(config)
        aw = config.addr_width
        super().__init__({
            "start": In(1),
            "row_addr": In(aw),
            "row_stride": In(32),
            "row_len": In(32),
            "upsample": In(1),
            "odd_row": In(1),
            "clear": In(1),
            "idle": Out(1),
            "done": Out(1),
            "s_en": In(1), "s_addr": In(32), "s_data": In(RW * 9), "s_mask": In(RW), "s_half": In(1),
            "cmd": Out(stream.Signature(command_layout(aw))),
            "beats": Out(stream.Signature(write_beat_layout(config.axi_data_width))),
            "written": In(1),   # the DMA writer's done: one pulse per acknowledged command
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        cfg = self.config
        BB = cfg.bus_bytes
        LB = BB.bit_length() - 1
        aw = cfg.addr_width
        RW = row_word_lanes(cfg)
        rb_words = cfg.row_buffer_bytes // RW // 2  # per half
        rbh = [SplitBuffer(RW, 9, rb_words) for _ in range(2)]
        m.submodules.rowbuf0, m.submodules.rowbuf1 = rbh

        # Clearing at the start of a run.
        clearing = Signal()
        clear_addr = Signal(range(rb_words + 1))
        with m.If(self.clear):
            m.d.sync += [clearing.eq(1), clear_addr.eq(0)]
        with m.Elif(clearing):
            m.d.sync += clear_addr.eq(clear_addr + 1)
            with m.If(clear_addr == rb_words - 1):
                m.d.sync += clearing.eq(0)

        # The row's addresses are latched at the start: the sequencer moves on to the next row.
        fl_half = Signal()
        fl_word = Signal(range(rb_words + 1))
        fl_dones = Signal(2)
        fl_two = Signal()  # an upsampled row: two output rows, one per half
        fl_a_addr, fl_b_addr = Signal(aw), Signal(aw)
        fl_a_beats, fl_b_beats = Signal(32), Signal(32)
        fl_a_half = Signal()
        fl_addr = Mux(fl_half, fl_b_addr, fl_a_addr)
        fl_beats = Mux(fl_half, fl_b_beats, fl_a_beats)
        fl_lane = fl_word << LB
        row_a = self.row_addr
        row_b = Signal(aw)
        m.d.comb += row_b.eq(row_a + self.row_stride)
        with m.If(self.start):
            m.d.sync += [fl_a_addr.eq(row_a), fl_b_addr.eq(row_b), fl_two.eq(self.upsample),
                         fl_a_beats.eq((row_a[:LB] + self.row_len + BB - 1) >> LB),
                         fl_b_beats.eq((row_b[:LB] + self.row_len + BB - 1) >> LB),
                         fl_a_half.eq(~self.upsample & self.odd_row)]
        with m.If(self.written):
            m.d.sync += fl_dones.eq(fl_dones + 1)

        f_half = Signal()
        f_w_en, f_r_en = Signal(), Signal()
        f_w_addr, f_r_addr = Signal(32), Signal(32)
        m.d.comb += f_half.eq(Mux(fl_half, 1, fl_a_half))
        for h, buf in enumerate(rbh):
            with m.If(clearing):
                m.d.comb += [buf.w_addr.eq(clear_addr * RW), buf.w_data.eq(0), buf.w_mask.eq(-1), buf.w_en.eq(1)]
            with m.Elif(f_w_en & (f_half == h)):  # the flush clears the strobes of a beat it sent
                m.d.comb += [buf.w_addr.eq(f_w_addr), buf.w_data.eq(0), buf.w_mask.eq((1 << BB) - 1),
                             buf.w_en.eq(1)]
            with m.Elif(self.s_en & (self.s_half == h)):
                m.d.comb += [buf.w_addr.eq(self.s_addr), buf.w_data.eq(self.s_data), buf.w_mask.eq(self.s_mask),
                             buf.w_en.eq(1)]
            m.d.comb += [buf.r_addr.eq(f_r_addr), buf.r_en.eq(f_r_en & (f_half == h))]
        fr_data = Mux(f_half, rbh[1].r_data, rbh[0].r_data)
        with m.FSM(name="flush"):
            with m.State("IDLE"):
                m.d.comb += self.idle.eq(~clearing)
                with m.If(self.start):
                    m.d.sync += [fl_half.eq(0), fl_word.eq(0), fl_dones.eq(0)]
                    m.next = "CMD"
            with m.State("CMD"):
                m.d.comb += [self.cmd.valid.eq(1), self.cmd.p.addr.eq(fl_addr >> LB << LB),
                             self.cmd.p.length.eq(fl_beats << LB)]
                with m.If(self.cmd.ready):
                    m.d.sync += fl_word.eq(0)
                    m.next = "READ"
            with m.State("READ"):
                m.d.comb += [f_r_addr.eq(fl_lane), f_r_en.eq(1)]
                m.next = "BEAT"
            with m.State("BEAT"):
                lanes = [fr_data[9 * j:9 * j + 9] for j in range(BB)]
                m.d.comb += [self.beats.valid.eq(1), self.beats.p.data.eq(Cat(*[v[:8] for v in lanes])),
                             self.beats.p.strb.eq(Cat(*[v[8] for v in lanes]))]
                with m.If(self.beats.ready):  # clear the strobes behind us: the next row starts empty
                    m.d.comb += [f_w_addr.eq(fl_lane), f_w_en.eq(1)]
                    m.d.sync += fl_word.eq(fl_word + 1)
                    with m.If(fl_word == fl_beats - 1):
                        with m.If(fl_two & ~fl_half):
                            m.d.sync += fl_half.eq(1)
                            m.next = "CMD"
                        with m.Else():
                            m.next = "WAIT"
                    with m.Else():  # read the next word now: one beat per cycle
                        m.d.comb += [f_r_addr.eq(fl_lane + BB), f_r_en.eq(1)]
            with m.State("WAIT"):
                with m.If(fl_dones == Mux(fl_two, 2, 1)):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"
        return m
