"""Store: places each requantised output block's bytes at their place in the row buffer.

An output whose channels are one run takes a whole block per cycle (per copy when upsampling:
four copies, two per output row); a two-way interleaved one (group_channels 1, group_stride 2:
ShuffleNet's shuffle) half a block per cycle; other grouped ones a byte per cycle. Each write
is lanes of 9 bits (a byte and its strobe) at a lane address of the row as it lies in DRAM,
counted from the beat the row starts in, into row-buffer half ``w_half``.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..spec.config import EngineConfig
from .geometry import geometry_layout
from .layouts import descriptor_layout

__all__ = ["Store", "row_word_lanes"]


def row_word_lanes(config: EngineConfig) -> int:
    """Lanes of a row-buffer word: a bus beat, or an output block if wider."""
    return max(config.pe_out, config.bus_bytes)


class Store(wiring.Component):
    """``start`` (a pulse, before the row's first block): a new output row; ``align_a``/``align_b``
    are where its first (second, when upsampling) output row starts in its bus beat, and
    ``odd_row`` which half it goes to when not upsampling. ``done``: the whole row is placed."""

    def __init__(self, config: EngineConfig):
        self.config = config
        RW = row_word_lanes(config)
        LB = config.bus_bytes.bit_length() - 1
        super().__init__({
            "i": In(stream.Signature(8 * config.pe_out)),
            "start": In(1),
            "align_a": In(LB),
            "align_b": In(LB),
            "odd_row": In(1),
            "desc": In(descriptor_layout()),
            "geo": In(geometry_layout()),
            "done": Out(1),
            "w_en": Out(1), "w_addr": Out(32), "w_data": Out(RW * 9), "w_mask": Out(RW), "w_half": Out(1),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        P = self.config.pe_out
        LP = P.bit_length() - 1
        o, geo = self.desc.out, self.geo
        upsample, ob_n, wo = geo.upsample, geo.ob_n, geo.wo
        data = self.i.payload

        st_ox, st_ob, st_pix, st_grp, st_r = Signal(16), Signal(16), Signal(32), Signal(32), Signal(16)
        st_j = Signal(range(P))
        st_u = Signal(2)   # which copy of an upsampled pixel
        st_h = Signal()    # which half of the block (two-way interleaved outputs)
        st_done = Signal()
        st_c = (st_ob << LP) + st_j
        st_valid_c = st_c < o.channels
        st_byte = data.word_select(st_j, 8)
        st_active = self.i.valid & ~st_done
        run = o.group_channels == o.channels
        half = P // 2
        pair = ((o.group_channels == 1) & (o.group_stride == 2) & ~run) if half else Const(0)
        n_valid = Signal(range(P + 1))
        m.d.comb += [n_valid.eq(Mux(o.channels - (st_ob << LP) >= P, P, o.channels - (st_ob << LP))),
                     self.w_half.eq(Mux(upsample, st_u[1], self.odd_row)),  # upsampled: a half per output row
                     self.done.eq(st_done)]
        pos = Mux(upsample & st_u[1], self.align_b, self.align_a) + st_pix + Mux(st_u[0], o.pixel_stride, 0)
        block = Cat(*[Cat(data.word_select(j, 8), 1) for j in range(P)])
        with m.If(st_active & run):
            m.d.comb += [self.w_addr.eq(pos + (st_ob << LP)), self.w_data.eq(block),
                         self.w_mask.eq((1 << n_valid) - 1), self.w_en.eq(1)]
        with m.If(st_active & ~run & ~pair):
            m.d.comb += [self.w_addr.eq(pos + st_grp + st_r), self.w_data.eq(Cat(st_byte, 1)),
                         self.w_mask.eq(st_valid_c), self.w_en.eq(1)]
        # Two-way interleaved: its bytes two lanes apart span no more than a block's lanes.
        if half:
            hb = Signal(16)
            m.d.comb += hb.eq((st_ob << LP) + Mux(st_h, half, 0))
            halves = [data[8 * half * h: 8 * half * (h + 1)] for h in range(2)]
            sel = Mux(st_h, halves[1], halves[0])
            with m.If(st_active & pair):
                m.d.comb += [
                    self.w_addr.eq(pos + (hb << 1)),
                    self.w_data.eq(Cat(*[Cat(sel[8 * j:8 * j + 8], 1, Const(0, 9)) for j in range(half)])),
                    self.w_mask.eq(Cat(*[Cat(hb + j < o.channels, 0) for j in range(half)])),
                    self.w_en.eq(1),
                ]
        next_chan = st_active & (~st_valid_c | ~upsample | (st_u == 3))
        next_block = st_active & (~upsample | (st_u == 3)) & (~pair | st_h)
        pix_step = Mux(upsample, o.pixel_stride << 1, o.pixel_stride)
        with m.If(self.start):
            m.d.sync += [st_ox.eq(0), st_ob.eq(0), st_pix.eq(0), st_grp.eq(0), st_r.eq(0), st_j.eq(0), st_h.eq(0),
                         st_u.eq(0), st_done.eq(0)]
        with m.Elif(st_active & (run | pair)):
            with m.If(~next_block):
                m.d.sync += st_u.eq(st_u + 1)
                with m.If(pair & (~upsample | (st_u == 3))):
                    m.d.sync += [st_u.eq(0), st_h.eq(1)]
            with m.Else():
                m.d.sync += [st_u.eq(0), st_h.eq(0)]
                m.d.comb += self.i.ready.eq(1)
                with m.If(st_ob == ob_n - 1):
                    m.d.sync += [st_ob.eq(0), st_ox.eq(st_ox + 1), st_pix.eq(st_pix + pix_step)]
                    with m.If(st_ox == wo - 1):
                        m.d.sync += st_done.eq(1)
                with m.Else():
                    m.d.sync += st_ob.eq(st_ob + 1)
        with m.Elif(st_active):
            with m.If(~next_chan):
                m.d.sync += st_u.eq(st_u + 1)
            with m.Else():
                m.d.sync += st_u.eq(0)
                with m.If(st_r == o.group_channels - 1):
                    m.d.sync += [st_r.eq(0), st_grp.eq(st_grp + o.group_stride)]
                with m.Else():
                    m.d.sync += st_r.eq(st_r + 1)
                with m.If(st_j == P - 1):
                    m.d.comb += self.i.ready.eq(1)
                    m.d.sync += st_j.eq(0)
                    with m.If(st_ob == ob_n - 1):
                        m.d.sync += [st_ob.eq(0), st_ox.eq(st_ox + 1), st_grp.eq(0), st_r.eq(0),
                                     st_pix.eq(st_pix + pix_step)]
                        with m.If(st_ox == wo - 1):
                            m.d.sync += st_done.eq(1)
                    with m.Else():
                        m.d.sync += st_ob.eq(st_ob + 1)
                with m.Else():
                    m.d.sync += st_j.eq(st_j + 1)
        return m
