"""ParamLoader: a layer's requant records (from the reader's byte stream) and weights (from raw
bus beats, up to a bank word per cycle) into the on-chip banks, and the two read sides the
datapath uses.

Bank o of each kind holds output channels o, o + P, ...: a record per channel (params bank), and
for the weights the words [block][tap][in block] of P weights (CONV) or [block][kernel row]
with the row's `kernel` weights in lanes 0.. (depthwise; the other lanes 0): the MAC array takes a
depthwise kernel row per beat.

Weights: the sequencer reads the blob's enclosing beats (raw) and pulses ``w_start`` with
``w_skip``, the blob's first byte in its first beat; ``w_busy`` is high from then until the last
word is written. The beats wait in a three-entry ring (its ``ready`` a register); each cycle a
chunk of the blob (P weights, or the row's last r = cin - (blocks - 1) * P, or a kernel row
for depthwise) is cut from the two oldest beats at a registered nibble offset (an 8-bit weight is two
nibbles), the window shifted by the offset's high bits, then by its low three bits (a registered
stage each), then the lanes formed (a byte, or a nibble sign-extended; those past the chunk 0)
into the write register: a word per cycle, max(words, beats) + 3 cycles from the first beat. The
bytes before the blob and after its end are dropped. Buses narrower than P bytes gather
ceil(P / bus bytes) beats into one first.

Read sides:
- ``w_addr``/``w_en`` -> ``w_data`` the next cycle (held while ``w_en`` is low): lane b's word;
  ``w_addr2`` -> ``w_data2`` alike (a packed CONV reads block 2q + 1's word beside block 2q's),
  on the write's BRAM port: ``w_data2`` is undefined after a load until the next read;
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
            "w_addr2": In(range(config.weight_depth)),   # a second read (packed: block 2q + 1's word)
            "w_data2": Out(8 * P * P),
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

        wb_w, wb_r, wb_r2, pb_w, pb_r = [], [], [], [], []
        for b in range(P):
            wm = Memory(shape=unsigned(P * 8), depth=cfg.weight_depth, init=[])
            pm = Memory(shape=requant_record_layout(), depth=-(-cfg.max_channels // P), init=[])
            m.submodules[f"weights{b}"] = wm
            m.submodules[f"params{b}"] = pm
            wb_w.append(wm.write_port())
            wb_r.append(wm.read_port())
            wb_r2.append(wm.read_port())
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
        # The write one stage later, from registers (the bank one-hot, rotated per record).
        rec_bank = Signal(P, init=1)
        rw_addr, rw_data, rw_en = Signal.like(pb_w[0].addr), Signal(64), Signal(P)
        with m.If(self.new_layer):
            m.d.sync += rec_bank.eq(1)
        with m.Elif(rec_take & (rec_i == 7)):
            m.d.sync += rec_bank.eq(rec_bank.rotate_left(1))
        m.d.sync += [rw_addr.eq(rec_c >> LP), rw_data.eq(rec_full),
                     rw_en.eq(Mux(rec_take & (rec_i == 7), rec_bank, 0))]
        for b in range(P):
            m.d.comb += [pb_w[b].addr.eq(rw_addr), pb_w[b].data.eq(rw_data), pb_w[b].en.eq(rw_en[b])]

        # -- weights -> weight banks, from raw bus beats ---------------------------------------
        # The blob is a run of weights (nibbles, low first, or bytes) in the order
        # [out channel][tap][in channel] ([channel][ky][kx] for depthwise: rows of `kernel`
        # weights, one per kernel row); each (channel, tap) row of cin_eff weights is cut into
        # chunks of P (the row's last one r = cin_eff - (cbw - 1) * P lanes, the other lanes 0),
        # a chunk per bank word. A chunk is taken per cycle from a window of two beats (cur, nxt)
        # at a nibble offset `off` (an 8-bit weight is two nibbles), so a chunk that crosses into
        # the next beat is whole. A chunk must fit in a window of two beats: with P > bus bytes,
        # G beats are gathered into one wider beat first (G = 1 on every board).
        G = -(-P // cfg.bus_bytes)
        BB = cfg.bus_bytes * G
        DW = 8 * BB
        NB = 2 * BB                                # nibbles of a beat
        OB = (NB - 1).bit_length()                 # bits of a nibble offset (< NB)
        # Per-layer constants, registered (desc and geo hold from the check on).
        cin_eff = Mux(geo.conv, desc.in0.channels, Mux(geo.depthwise, desc.kernel, 1))
        bits8 = Signal()
        r_mask = Signal(P)                         # the lanes of a row's last chunk
        r_n = Signal(range(P + 1))                 # how many: ((cin_eff - 1) % P) + 1
        r_nib, p_nib, first_nib = Signal(OB + 1), Signal(OB + 1), Signal(OB + 1)  # chunks' nibbles
        # The chunk and channel counters' "next step is the last" compares are registered as the
        # counters step (with the bound minus three; "the bound is two" on a restart), so no
        # wide compare sits in front of n_cur and the last flags. Widths: the checker's bounds
        # (channels <= max_channels), with room for a bound minus three of -1 or -2.
        CB = (-(-cfg.max_channels // P) + 1).bit_length()
        OCB = (cfg.max_channels + 1).bit_length()
        cbw_m3, taps_m2, o_m3 = Signal(CB), Signal(5), Signal(OCB)
        cbw_is2, o_is2 = Signal(), Signal()
        cbw_is1, taps_is1, o_is1 = Signal(), Signal(), Signal()
        r_low = Signal(max(LP, 1))
        m.d.sync += [bits8.eq(desc.weight_bits == 8), r_low.eq((cin_eff - 1)[:LP] if LP else 0),
                     r_n.eq(r_low + 1), r_mask.eq((Const(1, P + 1) << r_n) - 1),
                     r_nib.eq(Mux(bits8, r_n << 1, r_n)), p_nib.eq(Mux(bits8, 2 * P, P)),
                     first_nib.eq(Mux(cbw_is1, r_nib, p_nib)),
                     cbw_m3.eq(geo.cbi_n - 3), taps_m2.eq(geo.taps - 2), o_m3.eq(o.channels - 3),
                     cbw_is2.eq(geo.cbi_n == 2), o_is2.eq(o.channels == 2),
                     cbw_is1.eq(geo.cbi_n == 1), taps_is1.eq(geo.taps == 1), o_is1.eq(o.channels == 1)]

        # The start, registered (W_CMD's state decode and the skip's adder end here).
        w_start = Signal()
        w_skip = Signal.like(self.w_skip)
        m.d.sync += [w_start.eq(self.w_start), w_skip.eq(self.w_skip)]
        active = Signal()       # from the start until the last beat has left and the last word is written
        m.d.comb += self.w_busy.eq(active | w_start)

        in_valid, in_data, in_last, in_ready = Signal(), Signal(DW), Signal(), Signal()
        if G == 1:
            m.d.comb += [in_valid.eq(self.beats.valid), in_data.eq(self.beats.p.data),
                         in_last.eq(self.beats.p.last), self.beats.ready.eq(in_ready)]
        else:
            # G bus beats shifted into one (the last, possibly short, one flagged) before the queue.
            g_cnt = Signal(range(G))
            g_full, g_last = Signal(), Signal()
            g_data = Signal(DW)
            g_take = self.beats.valid & self.beats.ready
            m.d.comb += [self.beats.ready.eq(~g_full), in_valid.eq(g_full), in_data.eq(g_data),
                         in_last.eq(g_last)]
            with m.If(in_valid & in_ready):
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

        # The beats: a three-entry ring (write and read pointers one-hot, the fill level a
        # thermometer c1..c3), so a pop moves a few pointer bits, no beat register. `in_ready`
        # is ~c3, a register: nothing from the chunk logic reaches the reader.
        qd = [Signal(DW, name=f"q{k}_data") for k in range(3)]
        wp, rp = Signal(3, init=1), Signal(3, init=1)
        c1, c2, c3 = Signal(), Signal(), Signal()
        seen_last = Signal()    # the command's last beat is in the ring (or gone)
        m.d.comb += in_ready.eq(~c3)
        push = in_valid & in_ready
        for k in range(3):
            with m.If(push & wp[k]):
                m.d.sync += qd[k].eq(in_data)
        with m.If(push):
            m.d.sync += wp.eq(wp.rotate_left(1))
            with m.If(in_last):
                m.d.sync += seen_last.eq(1)

        off = Signal(OB)        # the chunk's first nibble in cur
        # off's copy for the window's select (163 loads), so that `off` drives only the adder
        # into the ring's pop. It steps with an adder of its own: two registers with one D would
        # be merged back into one by yosys.
        off_w = Signal(OB)
        n_cur = Signal(OB + 1)  # the chunk's nibbles
        cb, t, oc = Signal(CB), Signal(5), Signal(OCB)
        cb_at, oc_at = Signal(), Signal()   # cb == cbi_n - 2, oc == channels - 2
        cb_last, t_last, o_last = Signal(), Signal(), Signal()
        go, cdone = Signal(), Signal()  # chunks to issue / every chunk issued
        w_bank = Signal(P, init=1)  # one-hot: oc % P
        w_block_base = Signal(range(cfg.weight_depth + 1))
        w_tap_base = Signal(range(cfg.weight_depth + 1))
        cbw = geo.cbi_n

        emit, pop = Signal(), Signal()
        nxt_off = Signal(OB + 1)
        # One beat in the ring after the last was pushed: it is the last, the chunk is in it.
        m.d.comb += [
            nxt_off.eq(off + n_cur),
            emit.eq(go & (c2 | c1 & seen_last)),
            pop.eq(c1 & (emit & nxt_off[OB] | cdone)),   # the chunk ends at or past cur's end
        ]
        with m.If(pop):
            m.d.sync += rp.eq(rp.rotate_left(1))
        with m.If(push & ~pop):
            m.d.sync += [c1.eq(1), c2.eq(c1), c3.eq(c2)]
        with m.Elif(pop & ~push):
            m.d.sync += [c1.eq(c2), c2.eq(c3), c3.eq(0)]

        # The chunk counters, their "last" flags a step ahead (ct_last: the chunk ends its
        # channel, cto_last: the blob), the word address kept incrementally.
        ct_last, cto_last, ct_first = Signal(), Signal(), Signal()
        m.d.sync += ct_first.eq(cbw_is1 & taps_is1)  # a channel of one chunk
        with m.If(w_start):
            # (the first beat may come in the same cycle)
            m.d.sync += [active.eq(1), go.eq(1), cdone.eq(0), seen_last.eq(push & in_last),
                         cb.eq(0), t.eq(0), oc.eq(0), w_bank.eq(1), cb_at.eq(cbw_is2), oc_at.eq(o_is2),
                         cb_last.eq(cbw_is1), t_last.eq(taps_is1), o_last.eq(o_is1), n_cur.eq(first_nib),
                         ct_last.eq(ct_first), cto_last.eq(ct_first & o_is1),
                         w_block_base.eq(0), w_tap_base.eq(0), off.eq(Cat(Const(0, 1), w_skip)),
                         off_w.eq(Cat(Const(0, 1), w_skip))]
        with m.Elif(emit):
            m.d.sync += [off.eq(nxt_off[:OB]), off_w.eq(off_w + n_cur)]
            with m.If(cto_last):
                m.d.sync += [go.eq(0), cdone.eq(1)]
            with m.If(ct_last):  # the next chunk starts a channel
                m.d.sync += [cb.eq(0), cb_last.eq(cbw_is1), n_cur.eq(first_nib), cb_at.eq(cbw_is2),
                             t.eq(0), t_last.eq(taps_is1), oc.eq(oc + 1), o_last.eq(oc_at),
                             oc_at.eq(oc == o_m3),
                             ct_last.eq(ct_first), cto_last.eq(ct_first & oc_at),
                             w_bank.eq(w_bank.rotate_left(1)), w_tap_base.eq(w_block_base)]
                with m.If(w_bank[P - 1]):  # the next channel starts the next block
                    m.d.sync += [w_block_base.eq(w_tap_base + cbw), w_tap_base.eq(w_tap_base + cbw)]
            with m.Elif(cb_last):  # the next chunk starts a tap
                m.d.sync += [cb.eq(0), cb_last.eq(cbw_is1), n_cur.eq(first_nib), cb_at.eq(cbw_is2),
                             t.eq(t + 1), t_last.eq(t == taps_m2),
                             ct_last.eq(cbw_is1 & (t == taps_m2)), cto_last.eq(cbw_is1 & (t == taps_m2) & o_last),
                             w_tap_base.eq(w_tap_base + cbw)]
            with m.Else():
                m.d.sync += [cb.eq(cb + 1), cb_last.eq(cb_at), cb_at.eq(cb == cbw_m3),
                             ct_last.eq(cb_at & t_last), cto_last.eq(cb_at & t_last & o_last),
                             n_cur.eq(Mux(cb_at, r_nib, p_nib))]

        # Stage 1: the window's nibbles (cur then nxt, picked by the read pointer) shifted by the
        # offset's high bits; stage 2: by its low bits; stage 3: the lanes (a byte, or a nibble
        # sign-extended), those past the chunk zeroed, then the write.
        def win_nib(i):
            beat, at = divmod(i, NB)   # beat 0: cur (entry rp), 1: nxt (entry rp + 1)
            v = Const(0, 4)
            for k in range(3):
                v = Mux(rp[k], qd[(k + beat) % 3][4 * at:4 * at + 4], v)
            return v
        LO = min(3, OB)
        n1 = 2 * P + (1 << LO) - 1
        hi, hi_n = off_w[LO:], 1 << (OB - LO)
        sel1 = []
        for i in range(n1):
            v = Const(0, 4)
            for h in range(hi_n):
                if i + (h << LO) < 2 * NB:
                    v = Mux(hi == h, win_nib(i + (h << LO)), v)
            sel1.append(v)
        s1_nib, s1_lo = Signal(4 * n1), Signal(LO)
        s1_valid, s1_mask, s1_bank = Signal(), Signal(P), Signal(P)
        s1_addr = Signal(range(cfg.weight_depth))
        m.d.sync += [s1_nib.eq(Cat(*sel1)), s1_lo.eq(off_w[:LO]), s1_valid.eq(emit),
                     s1_mask.eq(Mux(cb_last, r_mask, (1 << P) - 1)), s1_bank.eq(w_bank),
                     s1_addr.eq(w_tap_base + cb)]
        s2_nib = Signal(8 * P)
        s2_valid, s2_mask, s2_bank = Signal(), Signal(P), Signal(P)
        s2_addr = Signal(range(cfg.weight_depth))
        sel2 = []
        for k in range(2 * P):
            v = s1_nib[4 * k:4 * k + 4]
            for lo in range(1, 1 << LO):
                v = Mux(s1_lo == lo, s1_nib[4 * (k + lo):4 * (k + lo) + 4], v)
            sel2.append(v)
        m.d.sync += [s2_nib.eq(Cat(*sel2)), s2_valid.eq(s1_valid), s2_mask.eq(s1_mask), s2_bank.eq(s1_bank),
                     s2_addr.eq(s1_addr)]
        lanes = []
        for j in range(P):
            nib = s2_nib[4 * j:4 * j + 4]
            lanes.append(Mux(s2_mask[j], Mux(bits8, s2_nib[8 * j:8 * j + 8], Cat(nib, nib[3].replicate(4))), 0))
        wr_addr = Signal(range(cfg.weight_depth))
        wr_data = Signal(P * 8)
        wr_en = Signal(P)
        m.d.sync += [wr_addr.eq(s2_addr), wr_data.eq(Cat(*lanes)), wr_en.eq(Mux(s2_valid, s2_bank, 0))]
        # Done: every chunk issued, the last beat gone (the rest of it dropped) and the last
        # word through the stages.
        with m.If(active & cdone & seen_last & ~c1 & ~s1_valid & ~s2_valid & ~w_start):
            m.d.sync += active.eq(0)
        # The second read shares the write's address: a layer's weights are written before it
        # computes, never while the datapath reads, so the write and the second read are one
        # read-write port of a true dual-port BRAM (a read port of its own is a second copy of
        # every bank: 32 BRAM36 more on the Pynq-Z2, whose banks are deep and narrow; the
        # Ultra96-V2's wide, shallow banks take as many BRAM36 either way, a TDP port being half
        # as wide as a simple dual-port one). Its enable covers the bank's writes,
        # so yosys need not emulate the read data's hold across a write in flip-flops.
        rw2_addr = Signal(range(cfg.weight_depth))
        m.d.comb += rw2_addr.eq(Mux(active, wr_addr, self.w_addr2))
        for b in range(P):
            m.d.comb += [wb_w[b].addr.eq(rw2_addr), wb_w[b].data.eq(wr_data), wb_w[b].en.eq(wr_en[b]),
                         wb_r[b].addr.eq(self.w_addr), wb_r[b].en.eq(self.w_en),
                         wb_r2[b].addr.eq(rw2_addr), wb_r2[b].en.eq(self.w_en | wr_en[b])]
        m.d.comb += [self.w_data.eq(Cat(*[wb_r[b].data for b in range(P)])),
                     self.w_data2.eq(Cat(*[wb_r2[b].data for b in range(P)]))]

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
