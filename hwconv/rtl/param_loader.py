"""ParamLoader: a layer's requant records and weights, from the reader's byte stream into the
on-chip banks, and the two read sides the datapath uses.

Bank o of each kind holds output channels o, o + P, ...: a record per channel (params bank), and
for the weights the words [block][tap][in block] of P weights (CONV) or [block][tap] with one
weight in lane 0 (depthwise; the other lanes 0). 4-bit weights are unpacked two per cycle (the
whole byte) when both land in the same word.

Read sides:
- ``w_addr``/``w_en`` -> ``w_data`` the next cycle (held while ``w_en`` is low): lane b's word;
- ``lookup``: a stage that takes each finished block of accumulators (tagged with its output
  block) and hands it on to the requantiser with its channels' records (identity records for
  MAXPOOL and COPY).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..spec.config import EngineConfig
from .geometry import geometry_layout
from .layouts import descriptor_layout, requant_record_layout
from .mac_array import mac_out_layout
from .requant import lane_layout

__all__ = ["ParamLoader", "byte_layout"]


def byte_layout() -> data.StructLayout:
    return data.StructLayout({"byte": unsigned(8), "last": unsigned(1)})


class ParamLoader(wiring.Component):
    """``records``/``weights``: high while the reader's bytes on ``i`` are the layer's records /
    weights (the sequencer issued that read); ``new_layer`` (a pulse) restarts the unpackers."""

    def __init__(self, config: EngineConfig):
        self.config = config
        P = config.pe_in
        super().__init__({
            "i": In(stream.Signature(byte_layout())),
            "records": In(1),
            "weights": In(1),
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
        for b in range(P):
            m.d.comb += [pb_w[b].addr.eq(rec_c >> LP), pb_w[b].data.eq(rec_full),
                         pb_w[b].en.eq(rec_take & (rec_i == 7) & (rec_c[:LP] == b))]

        # -- weights -> weight banks -----------------------------------------------------------
        # The layer's bounds, registered (desc and geo hold still from the check on, long before
        # the first weight byte), and the counters' "last" flags kept as registers one step
        # ahead: each next flag is a counter compared with a registered bound, no adder in front.
        cin_eff = Mux(geo.conv, desc.in0.channels, 1)
        cin_m = [Signal(16, name=f"cin_m{k}") for k in range(1, 5)]  # cin_eff - 1 .. - 4
        taps_m2, o_m2 = Signal(5), Signal(16)
        cin_is1, cin_is2, taps_is1, o_is1 = Signal(), Signal(), Signal(), Signal()
        bits8, bits4 = Signal(), Signal()
        m.d.sync += [*(c.eq(cin_eff - k) for k, c in enumerate(cin_m, 1)),
                     taps_m2.eq(geo.taps - 2), o_m2.eq(o.channels - 2),
                     cin_is1.eq(cin_eff == 1), cin_is2.eq(cin_eff == 2), taps_is1.eq(geo.taps == 1),
                     o_is1.eq(o.channels == 1),
                     bits8.eq(desc.weight_bits == 8), bits4.eq(desc.weight_bits == 4)]
        w_o, w_ci, w_cb = Signal(16), Signal(16), Signal(16)
        w_t = Signal(5)
        w_bank = Signal(P, init=1)  # one-hot, w_o % P: the bank of the channel being unpacked
        w_lane = Signal(P, init=1)  # one-hot: the lane of the word the next weight goes to
        w_high = Signal()
        w_stage = Signal(P * 8)
        # w_ci == cin_eff - 1 / - 2, w_t == taps - 1, w_o == channels - 1; outside the weights
        # (the counters are at 0 from new_layer to the first weight byte) they hold the values
        # for counters at 0.
        ci_last, ci_last2, t_last, o_last = Signal(), Signal(), Signal(), Signal()
        # The word address, kept incrementally (no multiplier): block base + tap base + in block.
        w_block_base = Signal(range(cfg.weight_depth + 1))
        w_tap_base = Signal(range(cfg.weight_depth + 1))
        cbw = geo.cbi_n
        byte = self.i.p.byte
        nib = Mux(w_high, byte[4:8], byte[0:4])
        w_val = Mux(bits8, byte, Cat(nib, nib[3].replicate(4)))
        hi_nib = byte[4:8]
        lane_last = w_lane[P - 1]
        lane_last2 = w_lane[P - 2] if P >= 2 else 0
        # Two 4-bit weights of one byte go in one cycle when both land in this word.
        w_pair = Signal()
        m.d.comb += w_pair.eq(bits4 & ~w_high & ~lane_last & ~ci_last)
        # Mux(w_pair, ci_last2, ci_last) and, below, Mux(w_pair, lane_last2, lane_last) |
        # w_last_in_chan, written out so that no path goes through w_pair's wide fanout (a pair is
        # never taken at the last lane or channel).
        pair_ok = bits4 & ~w_high
        w_last_in_chan = Signal()
        m.d.comb += w_last_in_chan.eq(ci_last | (pair_ok & ~lane_last & ci_last2))
        w_last = o_last & t_last & w_last_in_chan
        w_take = self.weights & self.i.valid
        with m.If(self.weights):
            # A 4-bit weight's byte is held for its high nibble unless both go in this cycle.
            m.d.comb += self.i.ready.eq(bits8 | w_high | w_last | w_pair)
        with m.If(self.records):
            m.d.comb += self.i.ready.eq(1)
        w_word = Cat(*[Mux(w_lane[j], w_val,
                           Mux(w_pair & (w_lane[j - 1] if j else 0), Cat(hi_nib, hi_nib[3].replicate(4)),
                               w_stage[8 * j:8 * j + 8])) for j in range(P)])
        w_commit = Signal()
        m.d.comb += w_commit.eq(lane_last | ci_last | (pair_ok & (lane_last2 | ci_last2)))
        with m.If(self.new_layer):
            m.d.sync += [w_o.eq(0), w_bank.eq(1), w_t.eq(0), w_ci.eq(0), w_cb.eq(0), w_lane.eq(1),
                         w_high.eq(0), w_stage.eq(0), w_block_base.eq(0), w_tap_base.eq(0)]
        with m.Elif(w_take):
            m.d.sync += w_high.eq(bits4 & ~w_high & ~w_last & ~w_pair)
            with m.If(w_commit):
                m.d.sync += [w_stage.eq(0), w_lane.eq(1), w_cb.eq(w_cb + 1)]
            with m.Else():
                m.d.sync += [w_stage.eq(w_word), w_lane.eq(Mux(w_pair, w_lane << 2, w_lane << 1))]
            with m.If(w_last_in_chan):
                m.d.sync += [w_ci.eq(0), w_cb.eq(0)]
                with m.If(t_last):
                    m.d.sync += [w_t.eq(0), w_o.eq(w_o + 1),
                                 w_bank.eq(w_bank.rotate_left(1)), w_tap_base.eq(w_block_base)]
                    with m.If(w_bank[P - 1]):  # the next channel starts the next block
                        m.d.sync += [w_block_base.eq(w_tap_base + cbw), w_tap_base.eq(w_tap_base + cbw)]
                with m.Else():
                    m.d.sync += [w_t.eq(w_t + 1), w_tap_base.eq(w_tap_base + cbw)]
            with m.Else():
                m.d.sync += w_ci.eq(w_ci + Mux(w_pair, 2, 1))
        # The flags follow the counters (new_layer only comes outside the weights).
        with m.If(~self.weights):
            m.d.sync += [ci_last.eq(cin_is1), ci_last2.eq(cin_is2), t_last.eq(taps_is1), o_last.eq(o_is1)]
        with m.Elif(self.i.valid):
            with m.If(w_last_in_chan):
                m.d.sync += [ci_last.eq(cin_is1), ci_last2.eq(cin_is2)]
                with m.If(t_last):
                    m.d.sync += [t_last.eq(taps_is1), o_last.eq(w_o == o_m2)]
                with m.Else():
                    m.d.sync += t_last.eq(w_t == taps_m2)
            with m.Else():
                # w_ci + 1 == cin_eff - 1 is ci_last2; + 2 needs the bounds minus 3 and 4.
                m.d.sync += [ci_last.eq(Mux(w_pair, w_ci == cin_m[2], ci_last2)),
                             ci_last2.eq(Mux(w_pair, w_ci == cin_m[3], w_ci == cin_m[2]))]
        # The write, one stage later from registers: address, word and each bank's enable
        # (((w_o >> LP) * taps + w_t) * cbw + w_cb, the word, bank w_o % P).
        wr_addr = Signal(range(cfg.weight_depth))
        wr_data = Signal(P * 8)
        wr_en = Signal(P)
        m.d.sync += [wr_addr.eq(w_tap_base + w_cb), wr_data.eq(w_word),
                     wr_en.eq(Mux(w_take & w_commit, w_bank, 0))]
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
