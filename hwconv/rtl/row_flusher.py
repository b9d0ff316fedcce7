"""RowFlusher: the row buffer, and its rows written back to DRAM in full bursts.

The row buffer has two halves with a write port each: the store fills one while the flush
drains the other (clearing its strobes behind it, so the next row starts empty); an upsampled
row fills both (its two output rows). A flush writes whole bus beats, the strobes keeping every
byte that is not the tensor's (other channels of a concat) as it was in DRAM.

``clear`` (a pulse, at the start of a run) zeroes every strobe first: a run cut short by a reset
must not leak its bytes into the next.

Pipelined for the clock: each half's write (a strobe clear of the run, the flush's clear behind
a beat it read, or the store's bytes) is chosen and registered before the memory; the flush
reads ahead, a word per cycle while it holds credit, into a registered read stage and a small
FIFO whose output register drives ``beats`` (so ``beats.valid`` and its payload are registers
and no read waits on ``beats.ready``); the command's address and length are registers worked
out in the cycle after ``start``. A store write in the cycle of ``start`` or before is in the
memory before the flush reads it (its two write registers: this unit's choice, then the split
buffer's shifted lanes).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..spec.config import EngineConfig
from .dma import command_layout, write_beat_layout
from .fifo import FastFIFO, thermometer_step
from .split_buffer import SplitBuffer
from .store import row_word_lanes

__all__ = ["RowFlusher"]

_FIFO_DEPTH = 8  # >= the read credit's round trip (issue, memory, read register, FIFO 2, credit)


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

    def elaborate(self, platform) -> Module:  # noqa: C901 - one flush sequence, read top to bottom
        m = Module()
        cfg = self.config
        BB = cfg.bus_bytes
        LB = BB.bit_length() - 1
        aw = cfg.addr_width
        RW = row_word_lanes(cfg)
        rb_words = cfg.row_buffer_bytes // RW // 2  # per half
        rbh = [SplitBuffer(RW, 9, rb_words, write_register=True) for _ in range(2)]
        m.submodules.rowbuf0, m.submodules.rowbuf1 = rbh
        lane_bits = len(rbh[0].w_addr)
        words_per_half = rb_words * RW // BB  # bus words
        word_bits = max(1, (words_per_half + 1).bit_length())

        # -- clearing at the start of a run ---------------------------------------------------------
        clearing = Signal()
        clear_addr = Signal(range(rb_words + 1))
        last_clear = Signal()  # clear_addr == rb_words - 1, registered a step ahead
        with m.If(self.clear):
            m.d.sync += [clearing.eq(1), clear_addr.eq(0), last_clear.eq(rb_words == 1)]
        with m.Elif(clearing):
            m.d.sync += [clear_addr.eq(clear_addr + 1), last_clear.eq(clear_addr == rb_words - 2)]
            with m.If(last_clear):
                m.d.sync += clearing.eq(0)

        # -- the row, latched at start; its commands worked out the next cycle ------------------------
        a_addr, stride, length = Signal(aw), Signal(32), Signal(32)
        two, a_half = Signal(), Signal()
        b_addr = Signal(aw)
        a_beats, b_beats = Signal(32), Signal(32)
        with m.If(self.start):
            m.d.sync += [a_addr.eq(self.row_addr), stride.eq(self.row_stride), length.eq(self.row_len),
                         two.eq(self.upsample), a_half.eq(~self.upsample & self.odd_row)]
        b_skip = Signal(LB + 1)  # where the second row starts in its beat: (a + stride) mod BB
        m.d.comb += b_skip.eq((a_addr[:LB] + stride[:LB])[:LB])

        # -- the flush: command, reads (a word per cycle while credit lasts), then the acknowledgements
        cmd_addr, cmd_len = Signal(aw), Signal(32)
        rd_half = Signal()     # the half being read
        rd_word = Signal(word_bits)
        rd_last = Signal()     # rd_word is the command's last word
        rd_m1 = Signal(word_bits)  # the command's words - 1 (a row fits its half)
        rd_m2 = Signal(word_bits)  # ... - 2: rd_last's compare one word ahead, without an adder
        second = Signal()      # on the upsampled row's second half
        dones = Signal(2)
        with m.If(self.written):
            m.d.sync += dones.eq(dones + 1)

        m.submodules.fifo = fifo = FastFIFO(width=BB * 9, depth=_FIFO_DEPTH)
        # words read and not yet taken by `beats`, as a thermometer (held[i]: more than i), so
        # the taker's ready moves each bit by one LUT and reaches no adder
        held = Signal(_FIFO_DEPTH)
        credit = Signal(init=1)  # a register: fewer than depth held
        issue = Signal()   # read rd_word of rd_half this cycle
        give = self.beats.valid & self.beats.ready
        up, down = issue & ~give, give & ~issue
        m.d.sync += held.eq(thermometer_step(held, up, down))
        # credit after this cycle: one more held leaves room unless depth - 1 were held
        m.d.sync += credit.eq(Mux(up, ~held[_FIFO_DEPTH - 2], Mux(down, 1, credit)))

        # One-hot state registers (not an FSM): `issue` is two registers ANDed.
        s_idle = Signal(init=1)
        s_prep, s_prep2, s_cmd, s_read, s_wait = Signal(), Signal(), Signal(), Signal(), Signal()

        def goto(frm, to):
            m.d.sync += [frm.eq(0), to.eq(1)]

        # `idle` is a register, worked out from the next values of s_idle and clearing: the
        # engine's layer loop reads it in several states, and a gate in front of that fanout
        # was the engine's worst path.
        idle = Signal(init=1)
        wait_done = Signal()
        m.d.comb += [wait_done.eq(dones == Mux(two, 2, 1)), self.idle.eq(idle)]
        # (as conditions, not one expression: Icarus may leave a never-driven `start` at x, which
        # an `if` reads as false)
        with m.If(self.clear | clearing & ~last_clear):
            m.d.sync += idle.eq(0)
        with m.Elif(s_wait & wait_done):
            m.d.sync += idle.eq(1)
        with m.Elif(s_idle & self.start):
            m.d.sync += idle.eq(0)
        with m.Else():
            m.d.sync += idle.eq(s_idle)
        with m.If(s_idle):
            with m.If(self.start):
                m.d.sync += [dones.eq(0), second.eq(0)]
                goto(s_idle, s_prep)
        # Two prep steps: the beats first, then what is derived from them (no two adders in a row).
        with m.If(s_prep):
            m.d.sync += [b_addr.eq(a_addr + stride), a_beats.eq((a_addr[:LB] + length + (BB - 1)) >> LB),
                         b_beats.eq((b_skip + length + (BB - 1)) >> LB),
                         cmd_addr.eq(a_addr >> LB << LB), rd_half.eq(a_half)]
            goto(s_prep, s_prep2)
        with m.If(s_prep2):
            m.d.sync += [cmd_len.eq(a_beats << LB), rd_m1.eq(a_beats - 1), rd_m2.eq(a_beats - 2)]
            goto(s_prep2, s_cmd)
        with m.If(s_cmd):
            m.d.comb += [self.cmd.valid.eq(1), self.cmd.p.addr.eq(cmd_addr), self.cmd.p.length.eq(cmd_len)]
            with m.If(self.cmd.ready):
                m.d.sync += [rd_word.eq(0), rd_last.eq(rd_m1 == 0)]
                goto(s_cmd, s_read)
        with m.If(s_read):
            m.d.comb += issue.eq(credit)
            with m.If(credit):
                m.d.sync += [rd_word.eq(rd_word + 1), rd_last.eq(rd_word == rd_m2)]
                with m.If(rd_last):
                    with m.If(two & ~second):
                        m.d.sync += [second.eq(1), rd_half.eq(1), cmd_addr.eq(b_addr >> LB << LB),
                                     cmd_len.eq(b_beats << LB), rd_m1.eq(b_beats - 1), rd_m2.eq(b_beats - 2)]
                        goto(s_read, s_cmd)
                    with m.Else():
                        goto(s_read, s_wait)
        with m.If(s_wait):
            with m.If(wait_done):
                m.d.comb += self.done.eq(1)
                goto(s_wait, s_idle)

        # -- reads: memory, a registered read stage, the FIFO --------------------------------------
        r_lane = Signal(lane_bits)
        m.d.comb += r_lane.eq(Cat(Const(0, LB), rd_word))
        rd_v = Signal(2)          # a word in the memory's output / in the read register
        rd_sel = Signal()         # the half it came from
        rd_data = Signal(BB * 9)
        m.d.sync += [rd_v.eq(Cat(issue, rd_v[0])), rd_sel.eq(rd_half)]
        for h, buf in enumerate(rbh):
            m.d.comb += [buf.r_addr[0].eq(r_lane), buf.r_en.eq(issue & (rd_half == h))]
        m.d.sync += rd_data.eq(Mux(rd_sel, rbh[1].r_data[0], rbh[0].r_data[0])[:BB * 9])
        lanes = [fifo.r_data[9 * j:9 * j + 9] for j in range(BB)]
        m.d.comb += [fifo.w_en.eq(rd_v[1]), fifo.w_data.eq(rd_data),
                     self.beats.valid.eq(fifo.r_rdy), fifo.r_en.eq(self.beats.ready),
                     self.beats.p.data.eq(Cat(*[v[:8] for v in lanes])),
                     self.beats.p.strb.eq(Cat(*[v[8] for v in lanes]))]

        # -- writes: each half's, chosen and registered before its memory ----------------------------
        # The flush clears the strobes of the word it read (later: read before write).
        clr_en, clr_lane = Signal(2), Signal(lane_bits)
        m.d.sync += [clr_en.eq(Mux(issue, Mux(rd_half, 0b10, 0b01), 0)), clr_lane.eq(r_lane)]
        for h, buf in enumerate(rbh):
            w_en, w_addr, w_data, w_mask = Signal(), Signal(lane_bits), Signal(RW * 9), Signal(RW)
            m.d.comb += [buf.w_en.eq(w_en), buf.w_addr.eq(w_addr), buf.w_data.eq(w_data), buf.w_mask.eq(w_mask)]
            with m.If(clearing):
                m.d.sync += [w_addr.eq(clear_addr * RW), w_data.eq(0), w_mask.eq(-1), w_en.eq(1)]
            with m.Elif(clr_en[h]):
                m.d.sync += [w_addr.eq(clr_lane), w_data.eq(0), w_mask.eq((1 << BB) - 1), w_en.eq(1)]
            with m.Elif(self.s_en & (self.s_half == h)):
                m.d.sync += [w_addr.eq(self.s_addr), w_data.eq(self.s_data), w_mask.eq(self.s_mask), w_en.eq(1)]
            with m.Else():
                m.d.sync += w_en.eq(0)
        return m
