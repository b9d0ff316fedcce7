"""Store: places each requantised output block's bytes at their place in the row buffer.

An output whose channels are one run takes a whole block per cycle (per copy when upsampling:
four copies, two per output row); a two-way interleaved one (group_channels 1, group_stride 2:
ShuffleNet's shuffle) half a block per cycle; other grouped ones a byte per cycle. Each write
is lanes of 9 bits (a byte and its strobe) at a lane address of the row as it lies in DRAM,
counted from the beat the row starts in, into row-buffer half ``w_half``.

Pipelined for the clock: the block being placed sits in a register with a spare block register
in front (``i.ready`` is a register: the spare is empty), the four copies' pixel
addresses are kept in registers (stepped by a pixel each pixel), the per-layer constants and
the counters' "last" compares are registered, and every ``w_*`` output is a register. A block's
pieces (a piece is a write: a copy of the block, of half of it, or of one byte) are counted down
from a per-row constant (full blocks, and the row's last block), so "this piece is the block's
last use" is a register, and so is "placing a piece this cycle" (``act``); every update's
condition is ``act`` and a few registers. The row's constants are taken over three registered
steps after ``start`` (``align_a``/``align_b`` are read the cycle after it); the first block is
placed the cycle after at the earliest, long before the engine's MAC array and requantiser
deliver one.
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
    the whole row is placed (its last write was on ``w_*`` the cycle before or earlier).
    ``w_addr``/``w_data``/``w_mask``/``w_half`` mean something only with ``w_en``. ``desc`` and
    ``geo`` hold for the layer and must be set at least three cycles before its first ``start``
    (some of their per-layer values are registered over three steps)."""

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

        # -- the row's constants: three registered steps after start ------------------------------
        # prep: the mode and the counters' bounds from desc/geo; prep2: pieces per block from
        # those registers; prep3: the piece counter's start. The first block is placed the cycle
        # after prep3 at the earliest (in the engine it comes from the MAC array and the
        # requantiser much later).
        prep, prep2, prep3 = Signal(name="prep"), Signal(name="prep2"), Signal(name="prep3")
        up, run, pair, odd = Signal(name="up"), Signal(name="run"), Signal(name="pair"), Signal(name="odd")
        byte = Signal()  # neither: a byte per cycle
        pix_step = Signal(AB)
        gs = Signal(AB)
        # Lanes of the row's last block that are channels (every block before it is full): with
        # ob_n = ceil(channels / P) (the checker's), it holds channels mod P of them, or P.
        c_lo = o.channels[:LP]
        tl = Signal(P)
        # counters' "last" compares without an adder: next == n - 1 is now == n - 2
        wo_m2, gc_m2, ob_m3 = Signal(16), Signal(16), Signal(16)
        ob_one, ob_le2, gc_one = Signal(name="ob_one"), Signal(name="ob_le2"), Signal(name="gc_one")
        # pieces of a block (one a cycle), less one: a full block and the row's last block
        PCW = (4 * P - 1).bit_length()
        byte_last_m1 = Signal(PCW)  # byte mode, last block: its channels 4 times, the rest once
        pf_m1, pl_m1 = Signal(PCW), Signal(PCW)
        pf_zero, pl_zero, pf_one, pl_one = Signal(name="pf_zero"), Signal(name="pl_zero"), Signal(name="pf_one"), Signal(name="pl_one")
        m.d.sync += [prep2.eq(prep), prep3.eq(prep2)]
        # Values of desc alone, registered every cycle over three steps: desc holds for the layer
        # and is set dozens of cycles (the checker) before a row's prep reads these.
        # (c_lo is copied first, so that synthesis cannot merge these compares with other
        # units' arithmetic on the same descriptor bits, which made them carry chains)
        c_lo_r = Signal(LP, name="c_lo_r")
        nvl = Signal(LP + 1)
        tl_desc = Signal(P)
        byte_last_up_m1 = Signal(PCW)
        m.d.sync += [c_lo_r.eq(c_lo), nvl.eq(Mux(c_lo_r == 0, P, c_lo_r)),
                     tl_desc.eq(Cat(*[(c_lo_r == 0) | (c_lo_r > k) for k in range(P)])),
                     byte_last_up_m1.eq(nvl * 3 + P - 1)]
        with m.If(prep):
            is_run = o.group_channels == o.channels
            is_pair = ((o.group_channels == 1) & (o.group_stride == 2) & ~is_run) if half else 0
            m.d.sync += [
                up.eq(geo.upsample), odd.eq(self.odd_row),
                run.eq(is_run), pair.eq(is_pair), byte.eq(~is_run & ~is_pair),
                tl.eq(tl_desc),
                byte_last_m1.eq(Mux(geo.upsample, byte_last_up_m1, P - 1)),
                pix_step.eq(Mux(geo.upsample, o.pixel_stride << 1, o.pixel_stride)),
                gs.eq(o.group_stride),
                wo_m2.eq(geo.wo - 2), gc_m2.eq(o.group_channels - 2), ob_m3.eq(geo.ob_n - 3),
                ob_one.eq(geo.ob_n == 1), ob_le2.eq(geo.ob_n <= 2), gc_one.eq(o.group_channels == 1),
            ]
        with m.If(prep2):
            full_m1 = Mux(run, Mux(up, 3, 0), Mux(pair, Mux(up, 7, 1), Mux(up, 4 * P - 1, P - 1)))
            m.d.sync += [pf_m1.eq(full_m1), pl_m1.eq(Mux(byte, byte_last_m1, full_m1))]
        with m.If(prep3):
            m.d.sync += [pf_zero.eq(pf_m1 == 0), pl_zero.eq(pl_m1 == 0),
                         pf_one.eq(pf_m1 == 1), pl_one.eq(pl_m1 == 1)]

        # -- the block being placed --------------------------------------------------------------
        cur = Signal(8 * P)
        cur_v = Signal()
        done = Signal(init=1)  # no row before the first start
        act = Signal()     # a register, cur_v & running: placing a piece of `cur` this cycle
        last_use = Signal()  # a register: the piece on offer is the block's last
        end_arm = Signal()  # a register: the block is the row's last (ob_last & ox_last)
        row_end = Signal()  # the row's last piece was placed last cycle: done from the next
        running = Signal()  # a register: ~done & ~row_end & ~prep* (start comes after done)
        live = Signal()  # a register, running | prep3: a piece may be placed this cycle
        # A spare block register in front (`sp`): `i.ready` is "the spare is empty", a register,
        # so nothing of the store reaches the requantiser's output FIFO in the same cycle. A
        # block goes straight to `cur` when it is free (no added latency), else to the spare.
        sp = Signal(8 * P)
        sp_v = Signal()
        free = Signal()  # `cur` is empty or on its last use: it takes the next block
        cur_v_n, running_n = Signal(), Signal()
        m.d.comb += [self.i.ready.eq(~sp_v),
                     free.eq(~cur_v | act & last_use),
                     cur_v_n.eq(Mux(free, sp_v | self.i.valid, cur_v)),
                     running_n.eq(~(act & last_use & end_arm) & live),
                     self.done.eq(done)]
        m.d.sync += [cur_v.eq(cur_v_n), running.eq(running_n), act.eq(cur_v_n & running_n),
                     live.eq(running_n | prep2), row_end.eq(act & last_use & end_arm)]
        m.d.sync += sp_v.eq(~free & (sp_v | self.i.valid))
        with m.If(~sp_v):
            m.d.sync += sp.eq(self.i.payload)
        with m.If(free & (sp_v | self.i.valid)):
            m.d.sync += cur.eq(Mux(sp_v, sp, self.i.payload))
        with m.If(self.start):
            m.d.sync += [prep.eq(1), done.eq(0)]
        with m.Elif(row_end):
            m.d.sync += done.eq(1)
        with m.Elif(prep):
            m.d.sync += prep.eq(0)

        # -- counters: piece pc, copy u, half h, byte j, block ob, pixel ox, group member r ---------
        # The block's pieces are counted down (pc); `last_use` = (pc == 0) and pc1 = (pc == 1) are
        # registers set from the next count. u, h and j only say what the piece is.
        pc = Signal(PCW)
        pc1 = Signal()
        nb_last = Signal()  # the block after this one (of the next pixel after the last) is the last
        st_u = Signal(2)
        st_h = Signal()
        st_j = Signal(range(P))
        st_ob, st_ox, st_r = Signal(16), Signal(16), Signal(16)
        off = Signal(AB)   # the byte's offset in the pixel in byte mode: group * group_stride + r
        grp = Signal(AB)   # the group's offset
        base = [Signal(AB, name=f"base{k}") for k in range(4)]  # the copies' pixel addresses
        ob_last, ox_last, r_last = Signal(name="ob_last"), Signal(name="ox_last"), Signal(name="r_last")
        u_last = Signal()  # the last copy of the piece (no upsample: every piece)
        j_valid = Signal()  # byte j of the block is a channel
        j_last = Signal()
        tl_sh = Signal(P)  # tl >> st_j: j_valid of the bytes from j on, in the last block

        next_chan = ~j_valid | u_last
        next_block = act & last_use
        next_pixel = next_block & ob_last

        with m.If(prep):
            m.d.sync += [st_u.eq(0), u_last.eq(~geo.upsample), st_h.eq(0),
                         st_j.eq(0), j_valid.eq(1), j_last.eq(P == 1),
                         tl_sh.eq(tl_desc),
                         st_ob.eq(0), st_ox.eq(0), st_r.eq(0), off.eq(0), grp.eq(0),
                         ob_last.eq(geo.ob_n == 1), ox_last.eq(geo.wo == 1), r_last.eq(o.group_channels == 1),
                         base[0].eq(self.align_a), base[1].eq(self.align_a + o.pixel_stride),
                         base[2].eq(self.align_b), base[3].eq(self.align_b + o.pixel_stride)]
        with m.If(prep3):
            m.d.sync += [nb_last.eq(ob_le2), end_arm.eq(ob_last & ox_last),
                         pc.eq(Mux(ob_last, pl_m1, pf_m1)),
                         last_use.eq(Mux(ob_last, pl_m1 == 0, pf_m1 == 0)),
                         pc1.eq(Mux(ob_last, pl_m1 == 1, pf_m1 == 1))]
        # act is never high in a prep* cycle: its updates come last, nearest the registers. Each
        # update's condition is act and a function of registers (the mode is one-hot).
        u_inc = Signal()  # the piece's next copy (else copy 0 of the next piece)
        h_set = Signal()  # two-way interleaved: the second half's copies next
        j_step = Signal()  # one byte at a time: the next byte next
        m.d.comb += [u_inc.eq(Mux(byte, j_valid & ~u_last, ~last_use & ~(pair & u_last))),
                     h_set.eq(pair & ~last_use & u_last),
                     j_step.eq(byte & next_chan)]
        with m.If(act):
            m.d.sync += [st_u.eq(Mux(u_inc, st_u + 1, 0)), u_last.eq(~up | u_inc & (st_u == 2))]
            with m.If(pair):
                m.d.sync += st_h.eq(h_set | st_h & ~last_use)
        with m.If(act & j_step):
            with m.If(r_last):
                m.d.sync += [st_r.eq(0), r_last.eq(gc_one), grp.eq(grp + gs), off.eq(grp + gs)]
            with m.Else():
                m.d.sync += [st_r.eq(st_r + 1), r_last.eq(st_r == gc_m2), off.eq(off + 1)]
            # j's flags from registers only: every block but the last is all channels
            m.d.sync += [st_j.eq(st_j + 1), j_valid.eq(~ob_last | (tl_sh[1] if P > 1 else 1)),
                         j_last.eq(st_j == P - 2), tl_sh.eq(tl_sh >> 1)]
            with m.If(j_last):
                m.d.sync += [st_j.eq(0), j_valid.eq(1), j_last.eq(P == 1), tl_sh.eq(tl)]
                with m.If(ob_last):
                    m.d.sync += [st_r.eq(0), r_last.eq(gc_one), grp.eq(0), off.eq(0)]
        with m.If(act):
            with m.If(~last_use):
                m.d.sync += [pc.eq(pc - 1), last_use.eq(pc1), pc1.eq(pc == 2)]
            with m.Else():
                # the block's last piece: the next block (of this pixel, or the next pixel's first)
                m.d.sync += [pc.eq(Mux(nb_last, pl_m1, pf_m1)), last_use.eq(Mux(nb_last, pl_zero, pf_zero)),
                             pc1.eq(Mux(nb_last, pl_one, pf_one)),
                             st_ob.eq(st_ob + 1), ob_last.eq(nb_last), nb_last.eq(st_ob == ob_m3),
                             end_arm.eq(nb_last & ox_last)]
                with m.If(ob_last):
                    m.d.sync += [st_ob.eq(0), nb_last.eq(ob_le2), end_arm.eq(nb_last & (st_ox == wo_m2))]
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
        therm = Signal(P)  # lanes of the block that are channels
        m.d.comb += therm.eq(Mux(ob_last, tl, (1 << P) - 1))
        # the piece's offset from its copy's pixel address: one adder whatever the mode
        # (two-way interleaved: its bytes two lanes apart span no more than a block's lanes)
        p_off = Mux(run, st_ob << LP, Mux(pair, Cat(Const(0, LP), st_h, st_ob), off))
        # the write's address, data and mask are set every cycle (read only with w_en): `act`
        # drives no datapath enable
        m.d.sync += [w_half.eq(Mux(up, st_u[1], odd)),  # upsampled: a half per output row
                     w_addr.eq(pos + p_off)]
        with m.If(run):
            m.d.sync += [w_data.eq(block), w_mask.eq(therm)]
        with m.Elif(pair):
            sel = Mux(st_h, cur[8 * half:], cur[:8 * half])
            h_mask = Mux(st_h, therm[half:], therm[:half])
            m.d.sync += [
                w_data.eq(Cat(*[Cat(sel[8 * j:8 * j + 8], 1, Const(0, 9)) for j in range(half)])),
                w_mask.eq(Cat(*[Cat(h_mask[j], 0) for j in range(half)])),
            ]
        with m.Else():
            m.d.sync += [w_data.eq(Cat(cur.word_select(st_j, 8), 1)), w_mask.eq(j_valid)]
        return m
