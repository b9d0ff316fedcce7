"""ParamLoader: a layer's requant records (from the reader's byte stream) and weights (from raw
bus beats, up to a bank word per cycle) into the on-chip banks, and the two read sides the
datapath uses.

Bank o of each kind holds output channels o, o + P, ...: a record per channel (params bank), and
for the weights the words [block][tap][in block] of P weights (CONV) or [block][tap] with one
weight in lane 0 (depthwise; the other lanes 0).

Weights: the sequencer reads the blob's enclosing beats (raw) and pulses ``w_start`` with
``w_skip``, the blob's first byte in its first beat; ``w_busy`` is high from then until the last
word is written. The beats wait in a three-entry queue (its ``ready`` a register); each cycle a
chunk of the blob (P weights, or the row's last r = cin - (blocks - 1) * P, or one weight for
depthwise) is cut from the two oldest beats at a registered element offset (nibbles or bytes),
the window shifted in two registered stages (by the offset's high bits, then its low 3 bits;
the lanes past the chunk zeroed), and written to its bank one stage later. The bytes before the
blob and after its end are dropped. Buses narrower than P bytes gather ceil(P / bus bytes) beats
into one first.

Read sides:
- ``w_addr``/``w_en`` -> ``w_data`` the next cycle (held while ``w_en`` is low): lane b's word;
- ``lookup``: a stage that takes each finished block of accumulators (tagged with its output
  block) and hands it on to the requantiser with its channels' records (identity records for
  MAXPOOL and COPY).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..spec.config import EngineConfig
from .geometry import geometry_layout
from .dma import read_beat_layout
from .layouts import descriptor_layout, requant_record_layout
from .mac_array import mac_out_layout
from .requant import lane_layout

__all__ = ["ParamLoader", "byte_layout"]


def byte_layout() -> data.StructLayout:
    return data.StructLayout({"byte": unsigned(8), "last": unsigned(1)})


class ParamLoader(wiring.Component):
    """``records``: high while the reader's bytes on ``i`` are the layer's records; ``new_layer``
    (a pulse) restarts the records' counter. ``beats``/``w_start``/``w_skip``/``w_busy``: the
    weights (module docstring)."""

    def __init__(self, config: EngineConfig):
        self.config = config
        P = config.pe_in
        super().__init__({
            "i": In(stream.Signature(byte_layout())),
            "records": In(1),
            "beats": In(stream.Signature(read_beat_layout(config.axi_data_width))),
            "w_start": In(1),
            "w_skip": In(range(config.bus_bytes)),
            "w_busy": Out(1),
            "new_layer": In(1),
            "desc": In(descriptor_layout()),
            "geo": In(geometry_layout()),
            "w_addr": In(range(config.weight_depth)),
            "w_en": In(1),
            "w_data": Out(8 * P * P),
            "lookup_i": In(stream.Signature(mac_out_layout(P, config.acc_bits))),
            "lookup_o": Out(stream.Signature(data.ArrayLayout(lane_layout(config.acc_bits), P))),
            "bad_record": Out(1),  # a record of this layer sets the reserved bits (ErrorCode.BAD_REQUANT)
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        cfg = self.config
        P = cfg.pe_in
        LP = P.bit_length() - 1
        desc, geo = self.desc, self.geo
        o = desc.out

        wb_w, wb_r, pb_w, pb_r = [], [], [], []
        for b in range(P):
            wm = Memory(shape=unsigned(P * 8), depth=cfg.weight_depth, init=[])
            pm = Memory(shape=requant_record_layout(), depth=-(-cfg.max_channels // P), init=[])
            m.submodules[f"weights{b}"] = wm
            m.submodules[f"params{b}"] = pm
            wb_w.append(wm.write_port())
            wb_r.append(wm.read_port())
            pb_w.append(pm.write_port())
            pb_r.append(pm.read_port())

        # -- requant records -> params banks ---------------------------------------------------
        rec = Signal(64)
        rec_i = Signal(3)
        rec_c = Signal(16)
        rec_full = Cat(rec[8:], self.i.p.byte)
        rec_take = self.records & self.i.valid
        with m.If(self.new_layer):
            m.d.sync += [rec_i.eq(0), rec_c.eq(0), self.bad_record.eq(0)]
        with m.Elif(rec_take):
            m.d.sync += [rec.eq(rec_full), rec_i.eq(rec_i + 1)]
            with m.If(rec_i == 7):
                m.d.sync += rec_c.eq(rec_c + 1)
                # The word's reserved bits 31:30 (spec.params.REQUANT_RESERVED_MASK) must be 0.
                with m.If(requant_record_layout()(rec_full)["_reserved"] != 0):
                    m.d.sync += self.bad_record.eq(1)
        m.d.comb += self.i.ready.eq(1)
        for b in range(P):
            m.d.comb += [pb_w[b].addr.eq(rec_c >> LP), pb_w[b].data.eq(rec_full),
                         pb_w[b].en.eq(rec_take & (rec_i == 7) & (rec_c[:LP] == b))]

        # -- weights -> weight banks, from raw bus beats ---------------------------------------
        # The blob is a run of weights (nibbles, low first, or bytes) in the order
        # [out channel][tap][in channel]; each (channel, tap) row of cin_eff weights is cut into
        # chunks of P (the row's last one r = cin_eff - (cbw - 1) * P lanes, the other lanes 0),
        # a chunk per bank word. A chunk is taken per cycle from a window of two beats (`cur`,
        # `nxt`) at element offset `off`, so a chunk that crosses into the next beat is whole.
        # A chunk must fit in a window of two beats: with P > bus bytes, G beats are gathered
        # into one wider beat first (G = 1 on every board: the queue takes the bus beats).
        G = -(-P // cfg.bus_bytes)
        BB = cfg.bus_bytes * G
        DW = 8 * BB
        E4 = 2 * BB                                # elements of a beat: nibbles (4-bit weights)
        OB = (E4 - 1).bit_length()                 # bits of an element offset (< E4)
        # Per-layer constants, registered (desc and geo hold from the check on).
        cin_eff = Mux(geo.conv, desc.in0.channels, 1)
        bits8 = Signal()
        r_mask = Signal(P)                         # the lanes of a row's last chunk
        r_n = Signal(range(P + 1))                 # how many: ((cin_eff - 1) % P) + 1
        cbw_m2, taps_m2, o_m2 = Signal(16), Signal(5), Signal(16)
        cbw_is1, taps_is1, o_is1 = Signal(), Signal(), Signal()
        r_low = Signal(max(LP, 1))
        m.d.sync += [bits8.eq(desc.weight_bits == 8), r_low.eq((cin_eff - 1)[:LP] if LP else 0),
                     r_n.eq(r_low + 1), r_mask.eq((Const(1, P + 1) << r_n) - 1),
                     cbw_m2.eq(geo.cbi_n - 2), taps_m2.eq(geo.taps - 2), o_m2.eq(o.channels - 2),
                     cbw_is1.eq(geo.cbi_n == 1), taps_is1.eq(geo.taps == 1), o_is1.eq(o.channels == 1)]

        # The start, registered (W_CMD's state decode and the skip's adder end here).
        w_start = Signal()
        w_skip = Signal.like(self.w_skip)
        m.d.sync += [w_start.eq(self.w_start), w_skip.eq(self.w_skip)]
        active = Signal()       # from the start until the last beat has left and the last word is written
        m.d.comb += self.w_busy.eq(active | w_start)

        # The beats: a three-entry queue, cur (q0), nxt (q1) and a spare (q2). `ready` is the
        # spare's valid, a register: nothing from the chunk logic reaches the reader.
        qd = [Signal(DW, name=f"q{k}_data") for k in range(3)]
        ql = [Signal(name=f"q{k}_last") for k in range(3)]
        qv = [Signal(name=f"q{k}_valid") for k in range(3)]
        in_valid, in_data, in_last = Signal(), Signal(DW), Signal()
        if G == 1:
            m.d.comb += [in_valid.eq(self.beats.valid), in_data.eq(self.beats.p.data),
                         in_last.eq(self.beats.p.last), self.beats.ready.eq(~qv[2])]
        else:
            # G bus beats shifted into one (the last, possibly short, one flagged) before the queue.
            g_cnt = Signal(range(G))
            g_full, g_last = Signal(), Signal()
            g_data = Signal(DW)
            g_take = self.beats.valid & self.beats.ready
            m.d.comb += [self.beats.ready.eq(~g_full), in_valid.eq(g_full), in_data.eq(g_data),
                         in_last.eq(g_last)]
            with m.If(in_valid & ~qv[2]):
                m.d.sync += g_full.eq(0)
            with m.If(g_take):
                m.d.sync += [g_data.eq(Cat(g_data[cfg.axi_data_width:], self.beats.p.data)),
                             g_cnt.eq(Mux(g_cnt == G - 1, 0, g_cnt + 1)), g_last.eq(self.beats.p.last)]
                with m.If((g_cnt == G - 1) | self.beats.p.last):
                    m.d.sync += g_full.eq(1)
                with m.If(self.beats.p.last):
                    m.d.sync += g_cnt.eq(0)
                    # a short last group: its beats moved down to their places
                    for k in range(1, G):
                        with m.If(g_cnt == k - 1):
                            m.d.sync += g_data.eq(Cat(g_data[cfg.axi_data_width * (G - k + 1):],
                                                      self.beats.p.data, Const(0, DW))[:DW])
        push = in_valid & ~qv[2]

        off = Signal(OB)        # the chunk's first element in cur
        cb, t, oc = Signal(16), Signal(5), Signal(16)
        cb_last, t_last, o_last = Signal(), Signal(), Signal()
        cdone = Signal()        # every chunk issued
        w_bank = Signal(P, init=1)  # one-hot: oc % P
        w_block_base = Signal(range(cfg.weight_depth + 1))
        w_tap_base = Signal(range(cfg.weight_depth + 1))
        cbw = geo.cbi_n

        emit = Signal()
        pop = Signal()
        n = Mux(cb_last, r_n, P)
        nxt_off = Signal(OB + 1)
        wrap = Mux(bits8, nxt_off[OB - 1], nxt_off[OB])  # the chunk ends at or past cur's end
        m.d.comb += [
            nxt_off.eq(off + n),
            emit.eq(active & ~cdone & qv[0] & (qv[1] | ql[0])),
            pop.eq(emit & wrap | active & cdone & qv[0]),
        ]
        # The queue: shift down on pop, the pushed beat into the first free entry after it.
        for k in range(3):
            above_v = qv[k + 1] if k < 2 else Const(0)
            above_d = qd[k + 1] if k < 2 else qd[k]
            above_l = ql[k + 1] if k < 2 else ql[k]
            below_v = qv[k - 1] if k else Const(1)
            with m.If(pop):
                with m.If(above_v):
                    m.d.sync += [qd[k].eq(above_d), ql[k].eq(above_l)]
                with m.Else():
                    m.d.sync += [qd[k].eq(in_data), ql[k].eq(in_last),
                                 qv[k].eq(push & qv[k])]
                with m.If(above_v):
                    m.d.sync += qv[k].eq(1)
            with m.Else():
                with m.If(~qv[k] & below_v):
                    m.d.sync += [qd[k].eq(in_data), ql[k].eq(in_last), qv[k].eq(push)]

        # The chunk counters, their "last" flags a step ahead, the word address kept incrementally.
        with m.If(w_start):
            m.d.sync += [active.eq(1), cdone.eq(0), cb.eq(0), t.eq(0), oc.eq(0), w_bank.eq(1),
                         cb_last.eq(cbw_is1), t_last.eq(taps_is1), o_last.eq(o_is1),
                         w_block_base.eq(0), w_tap_base.eq(0),
                         off.eq(Mux(bits8, w_skip, Cat(Const(0, 1), w_skip)))]
        with m.Elif(emit):
            m.d.sync += off.eq(Mux(wrap, nxt_off - Mux(bits8, BB, E4), nxt_off))
            with m.If(cb_last):
                m.d.sync += [cb.eq(0), cb_last.eq(cbw_is1)]
                with m.If(t_last):
                    m.d.sync += [t.eq(0), t_last.eq(taps_is1), oc.eq(oc + 1), o_last.eq(oc == o_m2),
                                 w_bank.eq(w_bank.rotate_left(1)), w_tap_base.eq(w_block_base)]
                    with m.If(w_bank[P - 1]):  # the next channel starts the next block
                        m.d.sync += [w_block_base.eq(w_tap_base + cbw), w_tap_base.eq(w_tap_base + cbw)]
                    with m.If(o_last):
                        m.d.sync += cdone.eq(1)
                with m.Else():
                    m.d.sync += [t.eq(t + 1), t_last.eq(t == taps_m2), w_tap_base.eq(w_tap_base + cbw)]
            with m.Else():
                m.d.sync += [cb.eq(cb + 1), cb_last.eq(cb == cbw_m2)]

        # Stage 1: the window as elements (sign-extended nibbles, or bytes), shifted by the
        # offset's high bits. Stage 2: by its low bits, the lanes past the chunk zeroed.
        win = Cat(qd[0], qd[1])
        def elem(i):
            nib = win[4 * i:4 * i + 4]
            e4 = Cat(nib, nib[3].replicate(4))
            e8 = win[8 * i:8 * i + 8] if i < 2 * BB else Const(0, 8)
            return Mux(bits8, e8, e4)
        elems = [elem(i) for i in range(2 * E4)]
        LO = min(3, OB)
        n1 = P + (1 << LO) - 1
        s1_el = Signal(8 * n1)
        s1_lo = Signal(LO)
        s1_valid, s1_mask = Signal(), Signal(P)
        s1_bank = Signal(P)
        s1_addr = Signal(range(cfg.weight_depth))
        hi = off[LO:]
        hi_n = 1 << (OB - LO)
        sel1 = []
        for i in range(n1):
            cands = [elems[i + (h << LO)] if i + (h << LO) < len(elems) else Const(0, 8) for h in range(hi_n)]
            v = cands[0]
            for h in range(1, hi_n):
                v = Mux(hi == h, cands[h], v)
            sel1.append(v)
        m.d.sync += [s1_el.eq(Cat(*sel1)), s1_lo.eq(off[:LO]), s1_valid.eq(emit),
                     s1_mask.eq(Mux(cb_last, r_mask, (1 << P) - 1)), s1_bank.eq(w_bank),
                     s1_addr.eq(w_tap_base + cb)]
        lanes = []
        for j in range(P):
            v = s1_el[8 * j:8 * j + 8]
            for lo in range(1, 1 << LO):
                v = Mux(s1_lo == lo, s1_el[8 * (j + lo):8 * (j + lo) + 8], v)
            lanes.append(Mux(s1_mask[j], v, 0))
        wr_addr = Signal(range(cfg.weight_depth))
        wr_data = Signal(P * 8)
        wr_en = Signal(P)
        m.d.sync += [wr_addr.eq(s1_addr), wr_data.eq(Cat(*lanes)), wr_en.eq(Mux(s1_valid, s1_bank, 0))]
        # Done: every chunk issued, the last beat gone (the rest of it dropped) and the last
        # word through both stages.
        with m.If(active & cdone & ~qv[0] & ~s1_valid & (wr_en == 0) & ~w_start):
            m.d.sync += active.eq(0)
        for b in range(P):
            m.d.comb += [wb_w[b].addr.eq(wr_addr), wb_w[b].data.eq(wr_data), wb_w[b].en.eq(wr_en[b]),
                         wb_r[b].addr.eq(self.w_addr), wb_r[b].en.eq(self.w_en)]
        m.d.comb += self.w_data.eq(Cat(*[wb_r[b].data for b in range(P)]))

        # -- lookup: a finished block and its channels' records ----------------------------------
        lk_valid = Signal()
        lk_acc = Signal.like(self.lookup_i.p.acc)
        advance = ~lk_valid | self.lookup_o.ready
        m.d.comb += [self.lookup_i.ready.eq(advance), self.lookup_o.valid.eq(lk_valid)]
        with m.If(advance):
            m.d.sync += [lk_valid.eq(self.lookup_i.valid), lk_acc.eq(self.lookup_i.p.acc)]
        identity = geo.pool | geo.copy  # they pass the requantiser unchanged
        for b in range(P):
            lane, rec_b = self.lookup_o.p[b], pb_r[b].data
            m.d.comb += [pb_r[b].addr.eq(self.lookup_i.p.tag), pb_r[b].en.eq(advance),
                         lane.acc.eq(lk_acc[b]),
                         lane.bias.eq(Mux(identity, 0, rec_b.bias)),
                         lane.mult.eq(Mux(identity, 1, rec_b.mult)),
                         lane.shift.eq(Mux(identity, 0, rec_b.shift))]
        return m
