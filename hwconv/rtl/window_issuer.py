"""WindowIssuer: walks an output row's (pixel, out block, tap, in block) steps, one per cycle, and
hands each to the MAC array with its input bytes (line buffer) and weights (weight banks).

Pipeline, all stages moving together when the MAC array takes a beat (one shared advance):

    counters  the step; per-pixel values kept incrementally (the pixel's byte offset in each
              input row, the weight word, the pixel's dilation), so no stage multiplies
    window    the tap's input row slot, whether it lies inside the image, its byte offset
    address   line buffer lane = slot start + byte offset + channel block; weight word
    memories  both reads; their outputs are the beat's payload

ADD's two taps are its two operands at the same pixel (in0 in slot 0, in1 in slot 1); a
deformable tap reads (y + (ky - 1) d, x + (kx - 1) d), d the pixel's dilation clamped to
max_dilation, from the line buffer whose centre row is ``base_slot``.
"""

from __future__ import annotations

from amaranth.hdl import Array, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..spec.config import EngineConfig
from .geometry import geometry_layout
from .layouts import descriptor_layout
from .mac_array import mac_in_layout
from .row_loader import n_slots

__all__ = ["WindowIssuer", "ISSUE_DEPTH"]

ISSUE_DEPTH = 3  # window, address and memory stages before the MAC array


class WindowIssuer(wiring.Component):
    """``start`` (a pulse): a new output row ``oy`` whose window's top (deformable: centre) row is
    in ``base_slot``; ``enable``: issue; ``done``: every step of the row is issued; ``busy``: a
    step is still in this pipeline. ``macs``: multiply-accumulates issued this cycle."""

    def __init__(self, config: EngineConfig):
        self.config = config
        P, LW = config.pe_in, config.line_word_bytes
        lanes = (LW * config.line_buffer_depth - 1).bit_length()
        S = n_slots(config)
        super().__init__({
            "start": In(1),
            "enable": In(1),
            "oy": In(16),
            "base_slot": In(5),
            "desc": In(descriptor_layout()),
            "geo": In(geometry_layout()),
            "slot_base": In(data.ArrayLayout(unsigned(lanes), S)),
            "skips": In(data.ArrayLayout(range(config.bus_bytes), S)),
            "dil_addr": Out(range(config.max_width)),
            "dil_data": In(8),
            "r_addr": Out(lanes),
            "r_en": Out(1),
            "r_data": In(8 * LW),
            "w_addr": Out(range(config.weight_depth)),
            "w_en": Out(1),
            "w_data": In(8 * P * P),
            "o": Out(stream.Signature(mac_in_layout(P))),
            "done": Out(1),
            "busy": Out(1),
            "macs": Out(16),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        cfg = self.config
        P = cfg.pe_in
        LP = P.bit_length() - 1
        S = n_slots(cfg)
        desc, geo = self.desc, self.geo
        i0, i1, o = desc.in0, desc.in1, desc.out
        k, stride, pad = desc.kernel, desc.stride, desc.pad
        rows, taps, cbi_n, ob_n, wo = geo.rows, geo.taps, geo.cbi_n, geo.ob_n, geo.wo
        is_conv, is_deform, is_add, is_dw = geo.conv, geo.deform, geo.add, geo.depthwise
        oy = self.oy

        def times_stride(v):  # strides are 1, 2 or 4 (the checker rejects others)
            return Mux(stride == 4, v << 2, Mux(stride == 2, v << 1, v))

        def mod_rows(v, subtractions=1):
            """v % rows for v < (subtractions + 1) * rows."""
            for _ in range(subtractions):
                v = Mux(v >= rows, v - rows, v)
            return v

        adv = Signal()
        m.d.comb += adv.eq(self.o.ready)

        # -- counters --------------------------------------------------------------------------
        c_ox, c_ob, c_t, c_cb = Signal(16), Signal(16), Signal(5), Signal(16)
        c_ky, c_kx = Signal(2), Signal(2)
        issued_all = Signal()
        issue = Signal()
        m.d.comb += [issue.eq(self.enable & adv & ~issued_all), self.done.eq(issued_all)]
        last_tap = c_t == taps - 1
        last_cb = c_cb == cbi_n - 1
        next_pixel = issue & last_cb & last_tap & (c_ob == ob_n - 1)
        # Per-pixel values, stepped rather than multiplied: the pixel's byte offset in an in0 row
        # (x * stride * pixel_stride) and in an in1 row, the weight word, the dilation and its
        # byte offset (d * pixel_stride).
        px0, px1 = Signal(32), Signal(32)
        w_word = Signal(range(cfg.weight_depth + 1))
        dil, dil_bytes = Signal(range(cfg.max_dilation + 1)), Signal(24)
        iy_top = Signal(signed(20))  # oy * stride - pad: the window's top row
        m.d.comb += self.dil_addr.eq(Mux(self.start, 0, c_ox + 1))
        dil_next = Mux(self.dil_data > cfg.max_dilation, cfg.max_dilation, self.dil_data)
        # d and d * pixel_stride (shifts and adds: d has at most 4 bits) for the next pixel.
        with m.If(self.start | next_pixel):
            m.d.sync += [dil.eq(dil_next),
                         dil_bytes.eq(sum(Mux(dil_next[b], i0.pixel_stride << b, 0) for b in range(len(dil))))]
        with m.If(self.start):
            m.d.sync += [c_ox.eq(0), c_ob.eq(0), c_t.eq(0), c_cb.eq(0), c_ky.eq(0), c_kx.eq(0), issued_all.eq(0),
                         px0.eq(0), px1.eq(0), w_word.eq(0), iy_top.eq(times_stride(oy) - pad)]
        with m.Elif(issue):
            m.d.sync += w_word.eq(w_word + 1)
            with m.If(~last_cb):
                m.d.sync += c_cb.eq(c_cb + 1)
            with m.Else():
                m.d.sync += c_cb.eq(0)
                with m.If(~last_tap):
                    m.d.sync += c_t.eq(c_t + 1)
                    with m.If(c_kx == k - 1):
                        m.d.sync += [c_kx.eq(0), c_ky.eq(c_ky + 1)]
                    with m.Else():
                        m.d.sync += c_kx.eq(c_kx + 1)
                with m.Else():
                    m.d.sync += [c_t.eq(0), c_kx.eq(0), c_ky.eq(0)]
                    with m.If(c_ob != ob_n - 1):
                        m.d.sync += c_ob.eq(c_ob + 1)
                    with m.Else():
                        m.d.sync += [c_ob.eq(0), w_word.eq(0), px0.eq(px0 + times_stride(i0.pixel_stride)),
                                     px1.eq(px1 + i1.pixel_stride)]
                        with m.If(c_ox == wo - 1):
                            m.d.sync += issued_all.eq(1)
                        with m.Else():
                            m.d.sync += c_ox.eq(c_ox + 1)
        n_in = Mux(i0.channels - (c_cb << LP) >= P, P, i0.channels - (c_cb << LP))
        n_out = Mux(o.channels - (c_ob << LP) >= P, P, o.channels - (c_ob << LP))
        # Registered (the counters only sum them): the small product has a cycle of its own.
        m.d.sync += self.macs.eq(Mux(issue, Mux(is_conv, n_in * n_out, Mux(is_dw, n_out, 0)), 0))

        # -- window stage ----------------------------------------------------------------------
        def dil_times(c):  # (c - 1) * dil for c in 0..2, without a multiplier
            return Mux(c == 0, -dil, Mux(c == 2, dil, 0))

        iy, ix = Signal(signed(20)), Signal(signed(20))
        m.d.comb += [
            iy.eq(Mux(is_deform, oy + dil_times(c_ky), Mux(is_add, oy, iy_top + c_ky))),
            ix.eq(Mux(is_deform, c_ox + dil_times(c_kx), Mux(is_add, c_ox, times_stride(c_ox) - pad + c_kx))),
        ]
        d_slot = Signal(signed(8))
        m.d.comb += d_slot.eq(self.base_slot + dil_times(c_ky))
        d_slot_fixed = Mux(d_slot < 0, d_slot + rows, Mux(d_slot >= rows, d_slot - rows, d_slot))
        # The tap's byte offset in its row: the pixel's, plus (kx - 1) dilations (deformable) or
        # kx - pad pixels.
        ps0 = i0.pixel_stride
        kx_bytes = Signal(signed(24))
        with m.Switch(c_kx - pad):
            for v in (-2, -1, 1, 2):
                with m.Case(v):
                    m.d.comb += kx_bytes.eq(v * ps0)
        deform_bytes = Mux(c_kx == 0, -dil_bytes, Mux(c_kx == 2, dil_bytes, 0))

        a_valid, a_first, a_last, a_inb, a_tap1 = (Signal(name=f"a_{n}") for n in
                                                   ("valid", "first", "last", "inb", "tap1"))
        a_ob, a_slot, a_lane = Signal(16), Signal(range(S)), Signal(16)
        a_xoff = Signal(32)
        a_word = Signal.like(w_word)
        with m.If(adv):
            m.d.sync += [
                a_valid.eq(issue), a_first.eq((c_t == 0) & (c_cb == 0)), a_last.eq(last_tap & last_cb),
                a_inb.eq((iy >= 0) & (iy < i0.height) & (ix >= 0) & (ix < i0.width)),
                a_tap1.eq(c_t[0]), a_ob.eq(c_ob), a_word.eq(w_word),
                a_slot.eq(Mux(is_add, c_t[0], Mux(is_deform, d_slot_fixed, mod_rows(self.base_slot + c_ky)))),
                a_lane.eq(Mux(is_conv, c_cb, c_ob) << LP),
                a_xoff.eq(Mux(is_add, Mux(c_t[0], px1, px0), px0 + Mux(is_deform, deform_bytes, kx_bytes))),
            ]

        # -- address stage ---------------------------------------------------------------------
        slot_start = Array(self.slot_base[s] + self.skips[s] for s in range(S))
        b_valid, b_first, b_last, b_inb, b_tap1 = (Signal(name=f"b_{n}") for n in
                                                   ("valid", "first", "last", "inb", "tap1"))
        b_ob = Signal(16)
        b_addr = Signal.like(self.r_addr)
        b_word = Signal.like(w_word)
        with m.If(adv):
            m.d.sync += [b_valid.eq(a_valid), b_first.eq(a_first), b_last.eq(a_last), b_inb.eq(a_inb),
                         b_tap1.eq(a_tap1), b_ob.eq(a_ob), b_word.eq(a_word),
                         b_addr.eq(slot_start[a_slot] + (a_xoff + a_lane))]
        m.d.comb += [self.r_addr.eq(b_addr), self.r_en.eq(adv), self.w_addr.eq(b_word), self.w_en.eq(adv)]

        # -- memory stage: the beat ------------------------------------------------------------
        s1_valid, s1_first, s1_last, s1_inb, s1_tap1 = (Signal(name=f"s1_{n}") for n in
                                                        ("valid", "first", "last", "inb", "tap1"))
        s1_ob = Signal(16)
        with m.If(adv):
            m.d.sync += [s1_valid.eq(b_valid), s1_first.eq(b_first), s1_last.eq(b_last), s1_inb.eq(b_inb),
                         s1_tap1.eq(b_tap1), s1_ob.eq(b_ob)]
        beat = self.o.p
        m.d.comb += [self.o.valid.eq(s1_valid), beat.x.eq(self.r_data[:8 * P]), beat.w.eq(self.w_data),
                     beat.in_bounds.eq(s1_inb), beat.second.eq(s1_tap1), beat.first.eq(s1_first),
                     beat.last.eq(s1_last), beat.tag.eq(s1_ob),
                     self.busy.eq(a_valid | b_valid | s1_valid)]
        return m
