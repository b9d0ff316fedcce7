"""Store: places each requantised output block's bytes at their place in the row buffer.

An output whose channels are one run takes a whole block per cycle (per copy when upsampling:
four copies, two per output row); a two-way interleaved one (group_channels 1, group_stride 2:
ShuffleNet's shuffle) half a block per cycle; other grouped ones a byte per cycle. Each write
is lanes of 9 bits (a byte and its strobe) at a lane address of the row as it lies in DRAM,
counted from the beat the row starts in, into row-buffer half ``w_half``.

Pipelined for the clock: the block being placed sits in a register (``i.ready`` comes from
registers only: the block register is empty or on its last use), the four copies' pixel
addresses are kept in registers (stepped by a pixel each pixel), the per-layer constants and
the counters' "last" compares are registered, and every ``w_*`` output is a register. The
row's constants are taken the cycle after ``start`` (``align_a``/``align_b`` then hold).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from ..spec.config import EngineConfig
from .geometry import geometry_layout
from .layouts import descriptor_layout

__all__ = ["Store", "row_word_lanes", "row_lane_bits"]


def row_word_lanes(config: EngineConfig) -> int:
    """Lanes of a row-buffer word: a bus beat, or an output block if wider."""
    return max(config.pe_out, config.bus_bytes)


def row_lane_bits(config: EngineConfig) -> int:
    """Bits of a lane address in one half of the row buffer (what its memories decode)."""
    return max(1, (config.row_buffer_bytes // 2 - 1).bit_length())


class Store(wiring.Component):
    """``start`` (a pulse, before the row's first block): a new output row; ``align_a``/``align_b``
    (read the cycle after ``start``) are where its first (second, when upsampling) output row
    starts in its bus beat, and ``odd_row`` which half it goes to when not upsampling. ``done``:
    the whole row is placed (its last write was on ``w_*`` the cycle before or earlier)."""

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

    def elaborate(self, platform) -> Module:  # noqa: C901 - one placement loop, read top to bottom
        m = Module()
        P = self.config.pe_out
        LP = P.bit_length() - 1
        RW = row_word_lanes(self.config)
        AB = row_lane_bits(self.config)
        half = P // 2
        o, geo = self.desc.out, self.geo

        # -- the row's constants, registered the cycle after start -------------------------------
        prep = Signal()
        up, run, pair, odd = Signal(), Signal(), Signal(), Signal()
        byte = Signal()  # neither: a byte per cycle
        ps, pix_step = Signal(AB), Signal(AB)
        gs = Signal(AB)
        channels = Signal(16)
        # counters' "last" compares without an adder: next == n - 1 is now == n - 2
        ob_m2, wo_m2, gc_m2 = Signal(16), Signal(16), Signal(16)
        ob_one, gc_one = Signal(), Signal()
        with m.If(prep):
            m.d.sync += [
                up.eq(geo.upsample), odd.eq(self.odd_row),
                run.eq(o.group_channels == o.channels),
                byte.eq((o.group_channels != o.channels)
                        & ~((o.group_channels == 1) & (o.group_stride == 2) if half else 0)),
                pair.eq((o.group_channels == 1) & (o.group_stride == 2) & (o.group_channels != o.channels)
                        if half else 0),
                ps.eq(o.pixel_stride), pix_step.eq(Mux(geo.upsample, o.pixel_stride << 1, o.pixel_stride)),
                gs.eq(o.group_stride), channels.eq(o.channels),
                ob_m2.eq(geo.ob_n - 2), wo_m2.eq(geo.wo - 2), gc_m2.eq(o.group_channels - 2),
                ob_one.eq(geo.ob_n == 1), gc_one.eq(o.group_channels == 1),
            ]

        # -- the block being placed --------------------------------------------------------------
        cur = Signal(8 * P)
        cur_v = Signal()
        done = Signal(init=1)  # no row before the first start
        act = Signal()     # placing a piece of `cur` this cycle
        last_use = Signal()
        row_end = Signal()  # the row's last piece was placed last cycle: done from the next
        running = Signal()  # a register: ~done & ~row_end & ~prep
        m.d.comb += [act.eq(cur_v & running),
                     self.i.ready.eq(~cur_v | act & last_use),
                     self.done.eq(done)]
        with m.If(self.i.ready):
            m.d.sync += [cur.eq(self.i.payload), cur_v.eq(self.i.valid)]

        # -- counters: copy u, half h, byte j, block ob, pixel ox, group member r ------------------
        st_u = Signal(2)
        st_h = Signal()
        st_j = Signal(range(P))
        st_ob, st_ox, st_r = Signal(16), Signal(16), Signal(16)
        left = Signal(17)  # channels from this block on: channels - ob * P
        off = Signal(AB)   # the byte's offset in the pixel in byte mode: group * group_stride + r
        grp = Signal(AB)   # the group's offset
        base = [Signal(AB, name=f"base{k}") for k in range(4)]  # the copies' pixel addresses
        ob_last, ox_last, r_last = Signal(), Signal(), Signal()
        u_last = Signal()  # the last copy of the piece (no upsample: every piece)
        j_valid = Signal()  # byte j of the block is a channel
        j_last = Signal()
        # st_u, st_j and left through their next values, so that their flags are registers too.
        u_n, j_n, left_n = Signal.like(st_u), Signal.like(st_j), Signal.like(left)
        m.d.comb += [u_n.eq(st_u), j_n.eq(st_j), left_n.eq(left)]
        m.d.sync += [st_u.eq(u_n), st_j.eq(j_n), left.eq(left_n),
                     ]

        def u_step(inc):  # st_u + 1 or 0, its flag from registers only
            m.d.comb += u_n.eq(st_u + 1 if inc else 0)
            m.d.sync += u_last.eq(~up | (st_u == 2) if inc else ~up)
        next_chan = ~j_valid | u_last
        m.d.comb += last_use.eq(run & u_last | pair & u_last & st_h | byte & next_chan & j_last)
        next_pixel = act & last_use & ob_last

        with m.If(self.start):
            m.d.sync += [prep.eq(1), done.eq(0)]
        with m.Elif(row_end):
            m.d.sync += done.eq(1)
        with m.Elif(prep):
            m.d.sync += prep.eq(0)
        m.d.sync += row_end.eq(next_pixel & ox_last)
        with m.If(self.start | next_pixel & ox_last):
            m.d.sync += running.eq(0)
        with m.Elif(prep):
            m.d.sync += running.eq(1)

        # Registered "last" compares: each is set from the counter's next value.
        def step_ob(to_zero):
            if to_zero:
                m.d.sync += [st_ob.eq(0), ob_last.eq(ob_one)]
                m.d.comb += left_n.eq(channels)
            else:
                m.d.sync += [st_ob.eq(st_ob + 1), ob_last.eq(st_ob == ob_m2)]
                m.d.comb += left_n.eq(left - P)

        with m.If(prep):
            m.d.comb += [u_n.eq(0), j_n.eq(0), left_n.eq(o.channels)]
            m.d.sync += u_last.eq(~geo.upsample)
            m.d.sync += [j_valid.eq(1), j_last.eq(P == 1)]
            m.d.sync += [st_h.eq(0), st_ob.eq(0), st_ox.eq(0), st_r.eq(0), off.eq(0), grp.eq(0),
                         ob_last.eq(geo.ob_n == 1), ox_last.eq(geo.wo == 1), r_last.eq(o.group_channels == 1),
                         base[0].eq(self.align_a), base[1].eq(self.align_a + o.pixel_stride),
                         base[2].eq(self.align_b), base[3].eq(self.align_b + o.pixel_stride)]
        with m.Elif(act):
            with m.If(run | pair):
                with m.If(~last_use):
                    u_step(True)
                    with m.If(pair & u_last):
                        u_step(False)
                        m.d.sync += st_h.eq(1)
                with m.Else():
                    u_step(False)
                    m.d.sync += st_h.eq(0)
            with m.Else():
                with m.If(~next_chan):
                    u_step(True)
                with m.Else():
                    u_step(False)
                    with m.If(r_last):
                        m.d.sync += [st_r.eq(0), r_last.eq(gc_one), grp.eq(grp + gs), off.eq(grp + gs)]
                    with m.Else():
                        m.d.sync += [st_r.eq(st_r + 1), r_last.eq(st_r == gc_m2), off.eq(off + 1)]
                    # j's flags from registers only (left changes with j back at 0, never to 0)
                    m.d.comb += j_n.eq(st_j + 1)
                    m.d.sync += [j_valid.eq(st_j + 1 < left), j_last.eq(st_j == P - 2)]
                    with m.If(j_last):
                        m.d.comb += j_n.eq(0)
                        m.d.sync += [j_valid.eq(1), j_last.eq(P == 1)]
                        with m.If(ob_last):
                            m.d.sync += [st_r.eq(0), r_last.eq(gc_one), grp.eq(0), off.eq(0)]
            # The block's last piece, whatever the mode: the next block (flat, for the clock).
            with m.If(last_use):
                step_ob(False)
                with m.If(ob_last):
                    step_ob(True)
            with m.If(next_pixel):
                m.d.sync += [st_ox.eq(st_ox + 1), ox_last.eq(st_ox == wo_m2)]
                m.d.sync += [b.eq(b + pix_step) for b in base]

        # -- the write, registered -----------------------------------------------------------------
        pos = Signal(AB)  # the copy's pixel address (no upsample: st_u stays 0)
        m.d.comb += pos.eq(Mux(st_u[1], Mux(st_u[0], base[3], base[2]), Mux(st_u[0], base[1], base[0])))
        w_en, w_addr, w_data, w_mask, w_half = (Signal(), Signal(AB), Signal(RW * 9), Signal(RW), Signal())
        m.d.comb += [self.w_en.eq(w_en), self.w_addr.eq(w_addr), self.w_data.eq(w_data),
                     self.w_mask.eq(w_mask), self.w_half.eq(w_half)]
        m.d.sync += w_en.eq(act)
        block = Cat(*[Cat(cur.word_select(j, 8), 1) for j in range(P)])
        therm = Signal(P)  # lanes of the block that are channels: min(left, P) ones
        m.d.comb += therm.eq(Mux(left >= P, (1 << P) - 1, (Const(1, P + 1) << left[:LP + 1]) - 1))
        with m.If(act):
            m.d.sync += w_half.eq(Mux(up, st_u[1], odd))  # upsampled: a half per output row
            with m.If(run):
                m.d.sync += [w_addr.eq(pos + (st_ob << LP)), w_data.eq(block), w_mask.eq(therm)]
            with m.Elif(pair):
                # Two-way interleaved: its bytes two lanes apart span no more than a block's lanes.
                hb_off = (st_ob << (LP + 1)) + Mux(st_h, P, 0)
                sel = Mux(st_h, cur[8 * half:], cur[:8 * half])
                h_mask = Mux(st_h, therm[half:], therm[:half])
                m.d.sync += [
                    w_addr.eq(pos + hb_off),
                    w_data.eq(Cat(*[Cat(sel[8 * j:8 * j + 8], 1, Const(0, 9)) for j in range(half)])),
                    w_mask.eq(Cat(*[Cat(h_mask[j], 0) for j in range(half)])),
                ]
            with m.Else():
                m.d.sync += [w_addr.eq(pos + off), w_data.eq(Cat(cur.word_select(st_j, 8), 1)),
                             w_mask.eq(j_valid)]
        return m
