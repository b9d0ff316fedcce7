"""WindowIssuer: walks an output row's (pixel, out block, tap, in block) steps, one per cycle, and
hands each to the MAC array with its input bytes (line buffer) and weights (weight banks).

Pipeline, all stages moving together when the MAC array can take a beat (one shared advance,
``o.ready``, which the MAC array drives from a register):

    counters  the step; per-pixel values kept incrementally (the pixel's byte offset in each
              input row, the window's left column, the weight word, the pixel's dilation), and
              every wrap flag one step ahead (``last_*`` registered from a compare with the
              bound minus two), so no stage multiplies or compares with a bound it computes
    window    the tap's input row and column, its row slot, its byte offset and lane
    address   whether the tap lies inside the image; the slot's start lane, and the byte
              offset + channel block
    address   line buffer lane = slot start + offset (lane arithmetic is modulo the line
              buffer's size)
    read      the line buffer read issued (the buffer's read is two stages that move with
              this pipeline on ``r_en`` = the advance)
    words     the two words read registered inside the line buffer; the weight word read
    beat      the input bytes (through the buffer's lane shifter) registered; the weights on
              the bank's output

Per-layer constants (the bounds minus one and two, strides, -pad * pixel_stride, the slot starts)
are registered here from the descriptor and geometry record, which hold for the whole layer.

A depthwise step (DWCONV, DEFORM_DW) is a kernel row: its three columns are read through the
line buffer's three read ports in the same cycle, and the beat carries them (``x``, ``x_row``)
with an in-bounds flag each. A packed CONV step (``geo.packed``) is a pair of out blocks: the
tag is the pair's first block, and the second block's weight word (a block's words further on)
is read through the weight banks' second port.

A DEFORM_DW row first spends DILATION_FETCH_CYCLES fetching its first pixel's dilation (the
dilation buffer is read from a register address, its output registered); later pixels'
dilations are fetched during the previous pixel's steps, and a pixel's last step waits
(``hold``) when its steps are fewer than the fetch takes.

ADD's two taps are its two operands at the same pixel (in0 in slot 0, in1 in slot 1); a
deformable tap reads (y + (ky - 1) d, x + (kx - 1) d), d the pixel's dilation clamped to
max_dilation, from the line buffer whose centre row is ``base_slot``.
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..spec.config import DILATION_FETCH_CYCLES, EngineConfig
from ..spec.isa import DEPTHWISE_ROW_TAPS
from .geometry import geometry_layout
from .layouts import descriptor_layout
from .mac_array import mac_in_layout
from .row_loader import n_slots

__all__ = ["WindowIssuer", "ISSUE_DEPTH"]

ISSUE_DEPTH = 6  # window, two address, read, words and beat stages before the MAC array


class WindowIssuer(wiring.Component):
    """``start`` (a pulse): a new output row ``oy`` whose window's top (deformable: centre) row is
    in ``base_slot``; the row's steps issue from then on, each as soon as the MAC array takes a
    beat; ``done``: every step of the row is issued; ``busy``: a step is still in this pipeline.
    ``macs``: multiply-accumulates issued three cycles ago.
    ``desc``, ``geo``, ``slot_base`` and ``skips`` must hold for two cycles before ``start`` (the
    sequencer sets them long before a row starts).
    Memories: the line buffer's read is two stages moving on ``r_en`` (``r_data`` is the read
    of the ``r_en`` before last, held while ``r_en`` is low: the row loader's); the weight
    banks' one (``w_data`` is the read of the last ``w_en``, held)."""

    def __init__(self, config: EngineConfig):
        self.config = config
        P, LW = config.pe_in, config.line_word_bytes
        lanes = (LW * config.line_buffer_depth - 1).bit_length()
        S = n_slots(config)
        super().__init__({
            "start": In(1),
            "oy": In(16),
            "base_slot": In(5),
            "desc": In(descriptor_layout()),
            "geo": In(geometry_layout()),
            "slot_base": In(data.ArrayLayout(unsigned(lanes), S)),
            "skips": In(data.ArrayLayout(range(config.bus_bytes), S)),
            "dil_addr": Out(range(config.max_width)),
            "dil_data": In(8),
            "r_addr": Out(data.ArrayLayout(unsigned(lanes), DEPTHWISE_ROW_TAPS)),
            "r_en": Out(1),
            "r_data": In(data.ArrayLayout(unsigned(8 * LW), DEPTHWISE_ROW_TAPS)),
            "w_addr": Out(range(config.weight_depth)),
            "w_en": Out(1),
            "w_data": In(8 * P * P),
            "w_addr2": Out(range(config.weight_depth)),   # packed: the pair's second block's word
            "w_data2": In(8 * P * P),
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
        A = len(self.r_addr[0])  # lane address bits: lane arithmetic wraps at the buffer's size
        K = DEPTHWISE_ROW_TAPS   # a depthwise step reads a kernel row: tap j through read port j
        desc, geo = self.desc, self.geo
        i0, i1, o = desc.in0, desc.in1, desc.out
        is_conv, is_deform, is_add, is_dw = geo.conv, geo.deform, geo.add, geo.depthwise
        oy = self.oy

        # -- per-layer constants, registered (desc and geo hold for the layer) -------------------
        def const(value, shape, name):
            r = Signal(shape, name=name)
            m.d.sync += r.eq(value)
            return r

        stride = const(desc.stride, 3, "k_stride")
        pad = const(desc.pad, 2, "k_pad")
        rows = const(geo.rows, 5, "k_rows")
        # The column loop: depthwise ops take a kernel row per step, so their column is always 0.
        kx_folded = (desc.kernel == 1) | is_dw
        k_is1, k_m2 = const(kx_folded, 1, "k_is1"), const(desc.kernel - 2, 2, "k_m2")
        taps_is1, taps_m2 = const(geo.taps == 1, 1, "taps_is1"), const(geo.taps - 2, 5, "taps_m2")
        # A block or pixel counter's "at bound minus two" is registered as the counter steps (a
        # compare with the bound minus three, or "the bound is two" on a wrap): the flags' next
        # values then start from registers, not from a compare. The counters are as wide as the
        # checker's bounds need (channels <= max_channels, wo <= max_width), with room for a
        # bound minus three of -1 or -2 (bound 1 or 2) to wrap to a count never reached.
        BB = (-(-cfg.max_channels // P) + 1).bit_length()
        XB = (cfg.max_width + 1).bit_length()
        cbi_is1, cbi_is2, cbi_m3 = (const(geo.cbi_n == 1, 1, "cbi_is1"), const(geo.cbi_n == 2, 1, "cbi_is2"),
                                    const(geo.cbi_n - 3, BB, "cbi_m3"))
        # The out-block loop steps over pairs of blocks when the layer is packed (geo.ob_steps).
        ob_is1, ob_is2, ob_m3 = (const(geo.ob_steps == 1, 1, "ob_is1"), const(geo.ob_steps == 2, 1, "ob_is2"),
                                 const(geo.ob_steps - 3, BB, "ob_m3"))
        packed = const(geo.packed, 1, "k_packed")
        ob_odd = const(geo.ob_n[0], 1, "k_ob_odd")   # packed: the last pair has one block
        bw = const(geo.block_words, range(cfg.weight_depth + 1), "k_bw")  # a block's words in a bank
        bw1 = const(geo.block_words + 1, range(cfg.weight_depth + 2), "k_bw1")
        wo_is1, wo_is2, wo_m3 = (const(geo.wo == 1, 1, "wo_is1"), const(geo.wo == 2, 1, "wo_is2"),
                                 const(geo.wo - 3, XB, "wo_m3"))
        conv, deform, add, dw = (const(f, 1, f"k_{n}") for f, n in
                                 ((is_conv, "conv"), (is_deform, "deform"), (is_add, "add"), (is_dw, "dw")))
        ps0 = const(i0.pixel_stride, A, "k_ps0")
        ps1 = const(i1.pixel_stride, A, "k_ps1")
        ps0s = const(Mux(desc.stride == 4, i0.pixel_stride << 2,
                         Mux(desc.stride == 2, i0.pixel_stride << 1, i0.pixel_stride)), A, "k_ps0s")
        kxb0 = const(Mux(desc.pad == 2, -(i0.pixel_stride << 1), Mux(desc.pad == 1, -i0.pixel_stride, 0)),
                     A, "k_kxb0")  # -pad * pixel_stride: the byte offset of the window's left column
        # DWCONV: the byte offset of the kernel row's column j (j >= 1) from the pixel's, from the
        # registered constants (a stage later; the first step is at least three cycles after desc)
        def times(j, v):  # j * v as shifts and adds (j is a small constant)
            return sum(v << b for b in range(j.bit_length()) if j >> b & 1)
        kxbj = {j: const(kxb0 + times(j, ps0), A, f"k_kxb{j}") for j in range(1, K)}
        height = const(i0.height, 16, "k_height")
        width = const(i0.width, 16, "k_width")
        in_tail = const(((i0.channels - 1) & (P - 1)) + 1, range(P + 1), "k_in_tail")
        out_tail = const(((o.channels - 1) & (P - 1)) + 1, range(P + 1), "k_out_tail")
        # slot starts: the slot's base lane plus the lane its row starts at in its first beat
        slot_start = Array(const(self.slot_base[s] + self.skips[s], A, f"k_slot_start{s}") for s in range(S))

        def times_stride(v):  # strides are 1, 2 or 4 (the checker rejects others)
            return Mux(stride == 4, v << 2, Mux(stride == 2, v << 1, v))

        adv = Signal()
        m.d.comb += adv.eq(self.o.ready)

        # -- counters --------------------------------------------------------------------------
        # Every register group moves on `start | adv & e_g`, e_g a register ("issuing and this
        # group's inner loops are at their last step") computed one step ahead with the "last"
        # flags, so the MAC array's advance meets one LUT before any enable.
        c_ox, c_ob, c_cb = Signal(XB), Signal(BB), Signal(BB)
        c_t, c_ky, c_kx = Signal(5), Signal(2), Signal(2)
        l_cb, l_t, l_kx, l_ob, l_ox = (Signal(name=f"last_{n}") for n in ("cb", "t", "kx", "ob", "ox"))
        go = Signal()                # issuing: after start (and the dilation fetch), until the row is issued
        e_t, e_ky, e_ob, e_px, e_end = (Signal(name=f"e_{n}") for n in ("t", "ky", "ob", "px", "end"))
        issued_all = Signal(init=1)  # nothing to issue before the first start
        warm = Signal(DILATION_FETCH_CYCLES)  # DEFORM_DW: a one shifting down while the first dilation is fetched
        issue = Signal()
        # A DEFORM_DW pixel's last step waits until the next pixel's dilation is fetched (at least
        # DILATION_FETCH_CYCLES after the previous pixel's): `hold`, a register, counts it out.
        # Other ops never hold, so `step` is the advance.
        hold = Signal()
        step = Signal()
        m.d.comb += [step.eq(adv & ~(e_px & hold)), issue.eq(step & go), self.done.eq(issued_all)]
        start = self.start
        moves = {g: Signal(name=f"moves_{g}") for g in ("cb", "t", "ky", "ob", "px")}
        m.d.comb += [moves["cb"].eq(start | step & go), moves["t"].eq(start | step & e_t),
                     moves["ky"].eq(start | step & e_ky), moves["ob"].eq(start | step & e_ob),
                     moves["px"].eq(start | step & e_px)]
        px0, px1 = Signal(A), Signal(A)           # the pixel's byte offset in an in0 / in1 row
        kxb = Signal(A)                           # (kx - pad) * pixel_stride
        w_word = Signal(range(cfg.weight_depth + 1))
        iy_top = Signal(signed(20))               # oy * stride - pad: the window's top row
        ix_left = Signal(signed(20))              # x * stride - pad: its left column
        slot_ky = Signal(range(S))                # (base_slot + ky) % rows

        # The dilation of the next pixel, fetched ahead: address register -> buffer (LUTRAM) ->
        # read register -> clamp register -> d * pixel_stride, base_slot -/+ d -> the rows' slots
        # (wrapped) -> the pixel's registers (five cycles; a pixel's nine taps take at least nine).
        D = range(cfg.max_dilation + 1)
        pf_x = Signal(range(cfg.max_width + 1))
        m.d.comb += self.dil_addr.eq(pf_x)
        d0, d1 = Signal(8), Signal(D)
        m.d.sync += [d0.eq(self.dil_data), d1.eq(Mux(d0 > cfg.max_dilation, cfg.max_dilation, d0))]
        n_dil, n_db = Signal(D), Signal(A)
        n_up, n_dn = Signal(range(S)), Signal(range(S))
        up_raw, dn_raw = Signal(signed(7)), Signal(7)   # registered: the wrap is a stage of its own
        m.d.sync += [up_raw.eq(self.base_slot - d1), dn_raw.eq(self.base_slot + d1)]
        terms = [Mux(d1[b], ps0 << b, 0) for b in range(len(d1))]
        while len(terms) > 1:  # d * pixel_stride as a balanced tree of adds (d has <= 4 bits)
            terms = [terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i] for i in range(0, len(terms), 2)]
        d2, db2 = Signal(D), Signal(A)
        m.d.sync += [d2.eq(d1), db2.eq(terms[0] if terms else 0),
                     n_dil.eq(d2), n_db.eq(db2),
                     n_up.eq(Mux(up_raw < 0, up_raw + rows, up_raw)),
                     n_dn.eq(Mux(dn_raw >= rows, dn_raw - rows, dn_raw))]
        dil, db = Signal(D), Signal(A)
        slot_up, slot_dn = Signal(range(S)), Signal(range(S))
        # The pixel's registers take the fetched values as the pixel moves on, or when a row's
        # first dilation is in. `start` needs no say in that enable (every enable is 0 once a row
        # is issued, and a DEFORM_DW row's first pixel is loaded at warm[0], after start), so the
        # MAC array's advance meets one LUT before these registers.
        take_px = Signal()
        m.d.comb += take_px.eq(step & e_px | warm[0])
        with m.If(take_px):
            m.d.sync += [dil.eq(n_dil), db.eq(n_db), slot_up.eq(n_up), slot_dn.eq(n_dn)]
        since = Signal(range(DILATION_FETCH_CYCLES + 1))  # cycles since the last pixel was taken
        with m.If(take_px):
            m.d.sync += [since.eq(1), hold.eq(deform & (1 < DILATION_FETCH_CYCLES))]
        with m.Elif(since < DILATION_FETCH_CYCLES):
            m.d.sync += [since.eq(since + 1), hold.eq(deform & (since + 1 < DILATION_FETCH_CYCLES))]
        with m.If(start):
            m.d.sync += [pf_x.eq(0), warm.eq(Mux(deform, 1 << (DILATION_FETCH_CYCLES - 1), 0)), issued_all.eq(0)]
        with m.Else():
            m.d.sync += warm.eq(warm >> 1)
            with m.If(take_px):
                m.d.sync += pf_x.eq(pf_x + 1)
            with m.If(step & e_end):
                m.d.sync += issued_all.eq(1)

        # Each counter's "last" flag (the counter is at its bound minus one: a compare with the
        # bound minus two one step before), their conjunctions, and the groups' enables e_*:
        # the next values at start (per-layer constants), when the dilation is in (warm), and
        # after an issue (from registers only: the advance is only the last mux).
        l_ct, l_px, l_end = Signal(), Signal(), Signal()  # in block and tap; and out block; and pixel
        at_cb, at_ob, at_ox = Signal(), Signal(), Signal()  # c_cb == cbi_n - 2, c_ob == ob_n - 2, c_ox == wo - 2
        i_cb = Mux(l_cb, cbi_is1, at_cb)
        i_t = Mux(l_cb, Mux(l_t, taps_is1, c_t == taps_m2), l_t)
        i_kx = Mux(l_cb, Mux(l_t | l_kx, k_is1, c_kx == k_m2), l_kx)
        i_ob = Mux(l_ct, Mux(l_ob, ob_is1, at_ob), l_ob)
        i_ox = Mux(l_px, at_ox, l_ox)
        i_ct = i_cb & i_t
        i_px = i_ct & i_ob
        i_go = ~l_end
        g_cb, g_t, g_ob, g_wo = geo.cbi_n == 1, geo.taps == 1, geo.ob_steps == 1, geo.wo == 1
        s_ct = const(g_cb & g_t, 1, "s_ct")
        s_px = const(g_cb & g_t & g_ob, 1, "s_px")
        s_end = const(g_cb & g_t & g_ob & g_wo, 1, "s_end")
        s_ky = const(g_cb & (g_t | kx_folded), 1, "s_ky")
        s_go = ~deform
        flags = [l_cb, l_t, l_kx, l_ob, l_ox, l_ct, l_px, l_end]
        enables = [go, e_t, e_ky, e_ob, e_px, e_end]
        with m.If(start):
            m.d.sync += [f.eq(v) for f, v in zip(flags, [cbi_is1, taps_is1, k_is1, ob_is1, wo_is1, s_ct, s_px, s_end])]
            m.d.sync += [e.eq(s_go & v) for e, v in zip(enables, [1, cbi_is1, s_ky, s_ct, s_px, s_end])]
        with m.Elif(warm[0]):
            m.d.sync += [e.eq(v) for e, v in zip(enables, [1, l_cb, l_cb & (l_t | l_kx), l_ct, l_px, l_end])]
        with m.Elif(step & go):
            m.d.sync += [f.eq(v) for f, v in zip(flags, [i_cb, i_t, i_kx, i_ob, i_ox, i_ct, i_px, i_px & i_ox])]
            m.d.sync += [e.eq(i_go & v) for e, v in zip(enables, [1, i_cb, i_cb & (i_t | i_kx), i_ct, i_px,
                                                                  i_px & i_ox])]
        kx_wraps = start | l_t | l_kx
        with m.If(moves["cb"]):  # in block; the weight word restarts with each pixel
            m.d.sync += [c_cb.eq(Mux(start | l_cb, 0, c_cb + 1)), w_word.eq(Mux(start | e_px, 0, w_word + Mux(packed & e_ob, bw1, 1))),
                         at_cb.eq(Mux(start | l_cb, cbi_is2, c_cb == cbi_m3))]
        with m.If(moves["t"]):   # tap, and its column
            m.d.sync += [c_t.eq(Mux(start | l_t, 0, c_t + 1)), c_kx.eq(Mux(kx_wraps, 0, c_kx + 1)),
                         kxb.eq(Mux(kx_wraps, kxb0, kxb + ps0))]
        with m.If(moves["ky"]):  # the tap's row
            m.d.sync += [c_ky.eq(Mux(start | l_t, 0, c_ky + 1)),
                         slot_ky.eq(Mux(start | l_t, self.base_slot, Mux(slot_ky == rows - 1, 0, slot_ky + 1)))]
        with m.If(moves["ob"]):
            m.d.sync += [c_ob.eq(Mux(start | l_ob, 0, c_ob + 1)), at_ob.eq(Mux(start | l_ob, ob_is2, c_ob == ob_m3))]
        with m.If(moves["px"]):
            m.d.sync += [c_ox.eq(Mux(start, 0, c_ox + 1)), at_ox.eq(Mux(start, wo_is2, c_ox == wo_m3)),
                         px0.eq(Mux(start, 0, px0 + ps0s)),
                         px1.eq(Mux(start, 0, px1 + ps1)), ix_left.eq(Mux(start, -pad, ix_left + stride))]
        with m.If(start):
            m.d.sync += iy_top.eq(times_stride(oy) - pad)


        # Multiply-accumulates of the step: the factors registered, then their product (small).
        # Packed: a pair's two blocks (the last pair: one when the block count is odd).
        mo_last = const(Mux(geo.packed & ~geo.ob_n[0], P + out_tail, out_tail), range(2 * P + 1), "k_mo_last")
        mo_full = const(Mux(geo.packed, 2 * P, P), range(2 * P + 1), "k_mo_full")
        # The product is registered twice: synthesis may put it in a DSP, whose output register
        # then feeds the counters' adder through one more flip-flop.
        mi, mo = Signal(range(P + 1)), Signal(range(2 * P + 1))
        macs = Signal.like(self.macs)
        m.d.sync += [mi.eq(Mux(issue & conv, Mux(l_cb, in_tail, P), Mux(issue & dw, K, 0))),
                     mo.eq(Mux(l_ob, mo_last, mo_full)),
                     macs.eq(mi * mo), self.macs.eq(macs)]

        # -- window stage ----------------------------------------------------------------------
        def by_k(c, minus, plus, centre):  # the value for a tap index c of 0, 1, 2 (deformable)
            return Mux(c == 0, minus, Mux(c == 2, plus, centre))

        a_valid, a_first, a_last, a_tap1 = (Signal(name=f"a_{n}") for n in ("valid", "first", "last", "tap1"))
        a_ob, a_word, a_word2, a_pair2 = Signal(16), Signal.like(w_word), Signal.like(w_word), Signal()
        a_iy, a_ix = Signal(signed(20)), Signal(signed(20))
        a_slot, a_xoff, a_lane = Signal(range(S)), Signal(A), Signal(A)
        with m.If(adv):
            m.d.sync += [
                a_valid.eq(issue), a_first.eq((c_t == 0) & (c_cb == 0)), a_last.eq(l_t & l_cb),
                a_tap1.eq(c_t[0]), a_ob.eq(Mux(packed, c_ob << 1, c_ob)), a_word.eq(w_word),
                a_word2.eq(w_word + bw), a_pair2.eq(packed & ~(l_ob & ob_odd)),
                a_iy.eq(Mux(deform, by_k(c_ky, oy - dil, oy + dil, oy), Mux(add, oy, iy_top + c_ky))),
                a_ix.eq(Mux(deform, c_ox - dil, Mux(add, c_ox, ix_left + c_kx))),  # deformable: column 0
                a_slot.eq(Mux(add, c_t[0], Mux(deform, by_k(c_ky, slot_up, slot_dn, self.base_slot), slot_ky))),
                a_xoff.eq(Mux(add, Mux(c_t[0], px1, px0),
                              Mux(deform, px0 - db, px0 + kxb))),
                a_lane.eq(Mux(conv, c_cb, c_ob) << LP),
            ]
        # Depthwise: the kernel row's columns j >= 1 (column 0 is the tap above, its column
        # loop folded to 0): DWCONV x + j; DEFORM_DW the pixel's column, then + its dilation.
        a_ixr = [Signal(signed(20), name=f"a_ix{j}") for j in range(1, K)]
        a_xoffr = [Signal(A, name=f"a_xoff{j}") for j in range(1, K)]
        with m.If(adv):
            for j, ix, xoff in zip(range(1, K), a_ixr, a_xoffr):
                m.d.sync += [ix.eq(Mux(deform, c_ox if j == 1 else c_ox + dil, ix_left + j)),
                             xoff.eq(Mux(deform, px0 if j == 1 else px0 + db, px0 + kxbj[j]))]

        # -- address stages: in bounds; the slot's start and the offset, then their sum ----------
        b_valid, b_first, b_last, b_inb, b_tap1 = (Signal(name=f"b_{n}") for n in
                                                   ("valid", "first", "last", "inb", "tap1"))
        b_ob, b_word, b_word2, b_pair2 = Signal(16), Signal.like(w_word), Signal.like(w_word), Signal()
        b_start, b_off = Signal(A), Signal(A)
        b_inbr = [Signal(name=f"b_inb{j}") for j in range(1, K)]
        b_offr = [Signal(A, name=f"b_off{j}") for j in range(1, K)]
        row_in = (a_iy >= 0) & (a_iy < height)
        with m.If(adv):
            m.d.sync += [b_valid.eq(a_valid), b_first.eq(a_first), b_last.eq(a_last), b_tap1.eq(a_tap1),
                         b_ob.eq(a_ob), b_word.eq(a_word), b_word2.eq(a_word2), b_pair2.eq(a_pair2),
                         b_inb.eq(row_in & (a_ix >= 0) & (a_ix < width)),
                         b_start.eq(slot_start[a_slot]), b_off.eq(a_xoff + a_lane)]
            for inb, off, ix, xoff in zip(b_inbr, b_offr, a_ixr, a_xoffr):
                m.d.sync += [inb.eq(row_in & (ix >= 0) & (ix < width)), off.eq(xoff + a_lane)]
        c_valid, c_first, c_last, c_inb, c_tap1 = (Signal(name=f"c_{n}") for n in
                                                   ("valid", "first", "last", "inb", "tap1"))
        c_ob, c_word, c_word2, c_pair2 = Signal(16), Signal.like(w_word), Signal.like(w_word), Signal()
        c_addr = [Signal(A, name=f"c_addr{j}") for j in range(K)]
        c_inbr = Signal(K - 1)
        with m.If(adv):
            m.d.sync += [c_valid.eq(b_valid), c_first.eq(b_first), c_last.eq(b_last), c_inb.eq(b_inb),
                         c_tap1.eq(b_tap1), c_ob.eq(b_ob), c_word.eq(b_word), c_inbr.eq(Cat(*b_inbr)),
                         c_word2.eq(b_word2), c_pair2.eq(b_pair2)]
            m.d.sync += [a.eq(b_start + off) for a, off in zip(c_addr, [b_off] + b_offr)]
        m.d.comb += [self.r_addr[j].eq(c_addr[j]) for j in range(K)]
        m.d.comb += self.r_en.eq(adv)

        # -- read and words stages: the line buffer's words arrive, then are registered in it;
        # the weights are read in the words stage ---------------------------------------------
        def follow(prev, name):  # the step's flags, tag and weight word one stage on
            regs = {k: Signal.like(v, name=f"{name}_{k}") for k, v in prev.items()}
            with m.If(adv):
                m.d.sync += [regs[k].eq(v) for k, v in prev.items()]
            return regs
        s0 = dict(valid=c_valid, first=c_first, last=c_last, inb=c_inb, inbr=c_inbr, tap1=c_tap1, ob=c_ob,
                  pair2=c_pair2, word=c_word, word2=c_word2)
        s1 = follow(s0, "s1")
        s2 = follow(s1, "s2")
        m.d.comb += [self.w_addr.eq(s2["word"]), self.w_addr2.eq(s2["word2"]), self.w_en.eq(adv)]

        # -- beat stage: input bytes registered, weights on the banks' outputs -------------------
        s3 = follow({k: v for k, v in s2.items() if k not in ("word", "word2")}, "s3")
        s3_x = Signal(8 * P)
        s3_xr = Signal(8 * P * (K - 1))
        with m.If(adv):
            m.d.sync += [s3_x.eq(self.r_data[0][:8 * P]),
                         s3_xr.eq(Cat(*(self.r_data[j][:8 * P] for j in range(1, K))))]
        beat = self.o.p
        m.d.comb += [self.o.valid.eq(s3["valid"]), beat.x.eq(s3_x), beat.w.eq(self.w_data),
                     beat.w2.eq(self.w_data2), beat.pair2.eq(s3["pair2"]),
                     beat.in_bounds.eq(s3["inb"]), beat.x_row.eq(s3_xr), beat.in_bounds_row.eq(s3["inbr"]),
                     beat.second.eq(s3["tap1"]), beat.first.eq(s3["first"]),
                     beat.last.eq(s3["last"]), beat.tag.eq(s3["ob"]),
                     self.busy.eq(a_valid | b_valid | c_valid | s1["valid"] | s2["valid"] | s3["valid"])]
        return m
