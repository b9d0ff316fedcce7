"""DescriptorChecker: the engine's copy of `hwconv.spec.validate.check_descriptor`.

Before a layer runs, the engine checks its descriptor with the same rules as the golden model and
reports the same ErrorCode, so a bad program stops cleanly on the layer the golden model names.
It also computes the layer's geometry record (`geometry.geometry_layout`: loop bounds, row and
slot sizes, the op's class) that every engine unit reads while the layer runs.

It takes ~60 cycles per layer: the one division the rules need, (channels - 1) // group_channels
for each tensor, runs on a shared 16-step restoring divider rather than three array dividers.
The arithmetic after it is pipelined, with no two multipliers or long adders chained in one
cycle: the descriptor and the quotients hold still, so every product is registered and `done`
rises `STAGES` cycles after the divisions, when the last stage has settled. Every multiplier is
at most 16 x 16 bits (one DSP48 with fabric registers at its pins): a 32 x 16 product is two
registered 16 x 16 partial products, added in the next stage.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..spec.config import EngineConfig
from ..spec.isa import KERNELS, REQUANT_OPS, STRIDES, WEIGHTED_OPS, Flag, Opcode
from ..spec.params import REQUANT_RECORD_BYTES
from ..spec.registers import ErrorCode
from ..spec.validate import PREFETCH_OPS
from .geometry import geometry_layout
from .layouts import descriptor_layout

__all__ = ["DescriptorChecker", "REFS", "STAGES"]

REFS = ("in0", "in1", "out")
SPAN_BITS = 48
STAGES = 9  # registered stages from the divisions to `done`


class DescriptorChecker(wiring.Component):
    """``start`` (one cycle, with ``desc`` valid; the checker copies it) -> ``done`` with
    ``code`` (and ``bad``: code is not NONE); ``reach``
    and ``span`` of each tensor (bytes from a pixel's first to one past its last channel, and
    from ``addr`` to one past the tensor's last byte)."""

    def __init__(self, config: EngineConfig):
        self.config = config
        members = {
            "desc": In(descriptor_layout()),
            "arena_size": In(32),
            "params_size": In(32),
            "start": In(1),
            "done": Out(1),
            "code": Out(8),
            "bad": Out(1),      # code != NONE, a register of its own
            "geo": Out(geometry_layout()),
        }
        for r in REFS:
            members[f"{r}_reach"] = Out(17)
            members[f"{r}_span"] = Out(SPAN_BITS)
        super().__init__(members)

    def elaborate(self, platform) -> Module:
        m = Module()
        cfg = self.config
        # The checker's own copy of the descriptor, taken at `start`: the rules' compares then
        # start from these registers, and synthesis cannot merge them with another unit's
        # arithmetic on the engine's descriptor (it did, and the shared adders lengthened both).
        d = Signal(descriptor_layout(), name="desc_copy")
        with m.If(self.start):
            m.d.sync += d.eq(self.desc)
        op = d.opcode
        refs = {r: getattr(d, r) for r in REFS}

        def any_of(conds):
            out = 0
            for c in conds:
                out = out | c
            return out

        def is_op(*ops):
            return any_of(op_r[o] for o in ops)

        op_r = {}  # the opcode decoded, registered (below)

        # -- sequential part: (C - 1) // gc and % gc for each tensor ---------------------------
        # A restoring divider, 17 cycles a tensor (a load, then 16 steps). Its datapath registers
        # step every cycle (no enable chain); the control is a one-hot tensor select and two
        # flags registered a step ahead (`load`: the next cycle loads a tensor, `last`: it is the
        # tensor's 16th step).
        which = Signal(len(REFS))      # one-hot: the tensor being divided
        step = Signal(range(17))
        load, last, running = Signal(), Signal(), Signal()
        num = Signal(16)
        rem = Signal(17)
        quo = Signal(16)
        quots = {r: Signal(16, name=f"{r}_q") for r in REFS}
        rems = {r: Signal(16, name=f"{r}_r") for r in REFS}
        ready = Signal()

        divisor = Signal(16)  # registered when the tensor's division starts (its load)
        div_nz = Signal()
        dividend_in = Signal(16)
        divisor_in = Signal(16)
        m.d.comb += [
            dividend_in.eq(any_of(Mux(which[i], refs[r].channels - 1, 0) for i, r in enumerate(REFS))),
            divisor_in.eq(any_of(Mux(which[i], refs[r].group_channels, 0) for i, r in enumerate(REFS))),
        ]
        trial = Signal(17)
        diff = Signal(18)   # trial - divisor; its borrow (bit 17) is the compare: one carry chain
        ge = Signal()
        m.d.comb += [trial.eq((rem << 1) | num[15]), diff.eq(trial - divisor), ge.eq(~diff[17])]
        taken = div_nz & ge
        m.d.sync += [num.eq(Mux(load, dividend_in, num << 1)),
                     rem.eq(Mux(load, 0, Mux(taken, diff[:17], trial))),
                     quo.eq(Mux(load, 0, Cat(taken, quo)))]
        with m.If(load):
            m.d.sync += [divisor.eq(divisor_in), div_nz.eq(divisor_in != 0)]

        with m.If(self.start):
            m.d.sync += [which.eq(1), step.eq(0), load.eq(1), last.eq(0), running.eq(1), ready.eq(0)]
        with m.Elif(running):
            m.d.sync += [step.eq(Mux(last, 0, step + 1)), load.eq(last), last.eq(~load & (step == 15))]
            with m.If(last):
                m.d.sync += which.eq(which << 1)
                with m.If(which[-1]):
                    m.d.sync += [running.eq(0), ready.eq(1), load.eq(0)]
        for i, r in enumerate(REFS):
            with m.If(running & last & which[i]):
                m.d.sync += [quots[r].eq(Cat(ge, quo)), rems[r].eq(Mux(ge, diff[:17], trial))]

        # -- pipelined arithmetic: every value a register, at most one product deep -------------
        def stage(value, shape, name):
            r = Signal(shape, name=name)
            m.d.sync += r.eq(value)
            return r

        # Values of the descriptor alone settle during the divisions (the descriptor holds from
        # before `start`), so only the chains from the quotients count towards STAGES.
        op_r.update({o: stage(op == o, 1, f"is_{o.name.lower()}") for o in Opcode})

        settled = Signal(STAGES)  # the divisions' `ready`, delayed through the stages
        with m.If(self.start):
            m.d.sync += settled.eq(0)
        with m.Else():
            m.d.sync += settled.eq(Cat(ready, settled[:-1]))

        P, BB = cfg.pe_in, cfg.bus_bytes
        # Every multiplier's operands are registers and its product goes straight into one.
        # stage 1
        q_gs = {r: stage(quots[r] * refs[r].group_stride, 32, f"{r}_q_gs") for r in REFS}
        hw = {r: stage(refs[r].height * refs[r].width, 32, f"{r}_hw") for r in REFS}
        w_m1 = {r: stage(refs[r].width - 1, 16, f"{r}_w_m1") for r in REFS}
        kk = stage(d.kernel * d.kernel, 16, "kk")
        cb_in = stage((d.in0.channels + P - 1) >> (P.bit_length() - 1), 16, "cb_in")
        cb_out = stage((d.out.channels + cfg.pe_out - 1) >> (cfg.pe_out.bit_length() - 1), 16, "cb_out")
        rows = stage(Mux(is_op(Opcode.ADD), 2, Mux(is_op(Opcode.DEFORM_DW), 2 * cfg.max_dilation + 1, d.kernel)),
                     8, "rows")
        # stage 2
        reach = {r: stage(q_gs[r] + rems[r] + 1, 17, f"{r}_reach_r") for r in REFS}
        row_ps = {r: stage(w_m1[r] * refs[r].pixel_stride, 32, f"{r}_row_ps") for r in REFS}
        hw_m1 = {r: stage(hw[r] - 1, 32, f"{r}_hw_m1") for r in REFS}
        kk_out = stage(d.out.channels * kk, 32, "kk_out")
        kk_cb_out = stage(cb_out * kk, 32, "kk_cb_out")
        k_cb_out = stage(cb_out * d.kernel, 32, "k_cb_out")  # depthwise: a word per kernel row
        kk_cb_in = stage(kk * cb_in, 32, "kk_cb_in")  # CONV: a bank's words per out block
        def wide_product(a, b, width, name):
            """a (32 bits) * b (16 bits) as two registered 16 x 16 products, summed a stage later."""
            lo = stage(a[:16] * b, 32, f"{name}_lo")
            hi = stage(a[16:32] * b, 32, f"{name}_hi")
            return stage((hi << 16) + lo, width, name)

        # stage 3 (partial products), 3b (their sums)
        hw_ps = {r: wide_product(hw_m1[r], refs[r].pixel_stride, SPAN_BITS, f"{r}_hw_ps") for r in REFS}
        row_bytes = {r: stage(row_ps[r] + reach[r], 32, f"{r}_row_bytes") for r in REFS}
        row_stride = {r: stage(row_ps[r] + refs[r].pixel_stride, 32, f"{r}_row_stride") for r in REFS}
        kk_out_cin = wide_product(kk_out, d.in0.channels, 48, "kk_out_cin")
        kk_cb_out_cin = wide_product(kk_cb_out, cb_in, 48, "kk_cb_out_cin")
        # stage 4
        span = {r: stage(hw_ps[r] + reach[r], SPAN_BITS, f"{r}_span_r") for r in REFS}
        n_weights = stage(Mux(is_op(Opcode.CONV), kk_out_cin, kk_out), 40, "n_weights")
        weight_words = stage(Mux(is_op(Opcode.CONV), kk_cb_out_cin,
                                 Mux(is_op(Opcode.DWCONV, Opcode.DEFORM_DW), k_cb_out, 0)), 32, "weight_words")
        longest = stage(Mux(is_op(Opcode.ADD) & (row_bytes["in1"] > row_bytes["in0"]), row_bytes["in1"],
                            row_bytes["in0"]), 32, "longest")
        # stage 5
        slot_words = stage((longest + BB - 1 + cfg.line_word_bytes - 1) >> (cfg.line_word_bytes.bit_length() - 1),
                           32, "slot_words")
        row_need = stage(row_bytes["out"] + BB - 1, 33, "row_need")
        # stage 6 (partial products), 7 (their sum); with the next row's rows (validate.prefetches_rows)
        line_words = wide_product(slot_words, rows, 40, "line_words")
        rows_pf = stage(rows + d.stride, 8, "rows_pf")
        pf_words = wide_product(slot_words, rows_pf, 40, "pf_words")
        # stage 8
        prefetch = stage(is_op(*PREFETCH_OPS) & (rows_pf <= cfg.line_slots)
                         & (pf_words <= cfg.line_buffer_depth), 1, "prefetch")

        for r in REFS:
            m.d.comb += [getattr(self, f"{r}_reach").eq(reach[r]), getattr(self, f"{r}_span").eq(span[r])]

        # -- the rules, in validate.check_descriptor's order of codes ---------------------------
        known_flags = int(sum(Flag))
        kernel_ok = stage(any_of(is_op(o) & any_of(d.kernel == k for k in ks) for o, ks in KERNELS.items()),
                          1, "kernel_ok")
        # per op, then any: two stages (a registered one-hot op and a compare per op's strides)
        stride_ok = stage(any_of(stage(is_op(o) & any_of(d.stride == s for s in ss), 1, f"stride_ok_{o.name.lower()}")
                                 for o, ss in STRIDES.items()), 1, "stride_ok")
        max_pad = stage(Mux(is_op(Opcode.MAXPOOL), d.kernel - 1, d.kernel >> 1), signed(9), "max_pad")
        pad_ok = stage(Mux(is_op(Opcode.DEFORM_DW), d.pad == 1, d.pad <= max_pad), 1, "pad_ok")
        wbits_ok = stage(~is_op(*WEIGHTED_OPS) | (d.weight_bits == 4) | (d.weight_bits == 8), 1, "wbits_ok")
        uses_in1 = is_op(Opcode.ADD, Opcode.DEFORM_DW)
        used = {"out": 1, "in0": 1, "in1": uses_in1}

        ref_bad = []
        for r in REFS:
            t = refs[r]
            if r != "out":  # inputs are read as one run of channels per pixel
                ref_bad.append(used[r] & (t.group_channels != t.channels))
            # Three registered groups of compares, then their OR: the descriptor settles during
            # the divisions, so the extra stage costs nothing.
            empty = stage((t.height == 0) | (t.width == 0) | (t.channels == 0) | (t.group_channels == 0),
                          1, f"{r}_empty")
            groups = stage((t.group_channels > t.channels) | (t.group_stride < t.group_channels), 1, f"{r}_groups_bad")
            too_big = t.channels > cfg.max_channels
            if r != "out":
                too_big = too_big | (t.width > cfg.max_width)
            too_big = stage(too_big, 1, f"{r}_too_big")
            ref_bad.append(stage(used[r] & (empty | groups | too_big), 1, f"{r}_bad"))
            ref_bad.append(stage(used[r] & (reach[r] > t.pixel_stride), 1, f"{r}_reach_bad"))

        up = (d.flags & Flag.UPSAMPLE2X) != 0
        o, i0, i1 = d.out, d.in0, d.in1
        ho = Mux(up, o.height >> 1, o.height)
        wo = Mux(up, o.width >> 1, o.width)
        up_bad = up & (o.height[0] | o.width[0])

        def conv_size(size, name):  # (size + 2 pad - kernel) // stride + 1, over three stages
            num_ = stage(size + 2 * d.pad - d.kernel, signed(20), f"{name}_num")
            q = stage(Mux(d.stride == 4, num_ >> 2, Mux(d.stride == 2, num_ >> 1, num_)), signed(20), f"{name}_q")
            return q + 1

        windowed = is_op(Opcode.CONV, Opcode.DWCONV, Opcode.MAXPOOL)
        want_h = stage(Mux(windowed, conv_size(i0.height, "h"), i0.height), signed(20), "want_h")
        want_w = stage(Mux(windowed, conv_size(i0.width, "w"), i0.width), signed(20), "want_w")
        shape_bad = stage((want_h != stage(ho, 16, "ho_r")) | (want_w != stage(wo, 16, "wo_r")), 1, "shape_bad")
        chan_bad = ~is_op(Opcode.CONV) & (o.channels != i0.channels)
        deform_bad = is_op(Opcode.DEFORM_DW) & (
            (i1.channels != 1) | (i1.height != i0.height) | (i1.width != i0.width)
            | ((d.flags & Flag.IN1_SIGNED) != 0))
        add_bad = is_op(Opcode.ADD) & ((i1.channels != i0.channels) | (i1.height != i0.height)
                                        | (i1.width != i0.width))
        sign_bad = is_op(Opcode.MAXPOOL, Opcode.COPY) & (
            ((d.flags & Flag.IN0_SIGNED) != 0) != ((d.flags & Flag.OUT_SIGNED) != 0))
        out_signed = (d.flags & Flag.OUT_SIGNED) != 0
        lo = Mux(out_signed, -(1 << (cfg.act_bits - 1)), 0)
        hi = Mux(out_signed, (1 << (cfg.act_bits - 1)) - 1, (1 << cfg.act_bits) - 1)
        clamp_bad = stage(is_op(*REQUANT_OPS) & ((d.clamp_lo < lo) | (d.clamp_lo > d.clamp_hi) | (d.clamp_hi > hi)),
                          1, "clamp_bad")

        # On-chip buffer fit (validate.line_buffer_words / weight_words / row_buffer_need).
        fit_bad = ((line_words > cfg.line_buffer_depth) | (weight_words > cfg.weight_depth)
                   | (row_need > cfg.row_buffer_bytes // 2))

        # The descriptor's own rules, each registered in stage 1 (then ORed).
        op_bad = [stage(~kernel_ok | ~stride_ok | ~pad_ok | ~wbits_ok, 1, "op_bad"),
                  stage(stage(((d.flags & ~known_flags) != 0) | up_bad, 1, "flags_up_bad")
                        | stage(wo > cfg.max_width, 1, "wo_too_big"), 1, "flags_bad"),
                  stage(stage(chan_bad | deform_bad, 1, "chan_deform_bad") | stage(add_bad | sign_bad, 1, "add_sign_bad"),
                        1, "shape_rules_bad")]
        bad_terms = [any_of(op_bad), any_of(ref_bad), shape_bad, clamp_bad, fit_bad]

        # Bounds as compares with what is left past an offset (registered in stage 1): a + n > size
        # is n > size - a, so no add sits in front of a compare.
        arena_room = {r: stage(self.arena_size - refs[r].addr, signed(34), f"{r}_room") for r in REFS}
        arena_bad = any_of(used[r] & (span[r] > arena_room[r]) for r in REFS)
        packed = stage(Mux(d.weight_bits == 8, n_weights, (n_weights + 1) >> 1), 40, "packed")  # stage 6
        weights_room = stage(self.params_size - d.weights_offset, signed(34), "weights_room")
        weights_bad = is_op(*WEIGHTED_OPS) & (packed > weights_room)
        records_room = stage(self.params_size - d.params_offset, signed(34), "records_room")
        records_bad = is_op(*REQUANT_OPS) & stage(o.channels * REQUANT_RECORD_BYTES > records_room, 1, "records_bad")

        # stage 8: each rule group registered; stage 9: the code, and the geometry every unit
        # reads while the layer runs
        bad_r = [stage(term, 1, f"bad{i}") for i, term in enumerate(bad_terms)]
        arena_bad_r = stage(arena_bad, 1, "arena_bad")
        params_bad_r = stage(weights_bad | records_bad, 1, "params_bad")
        code = Mux(any_of(bad_r), ErrorCode.BAD_DESCRIPTOR,
                   Mux(arena_bad_r, ErrorCode.ARENA_OUT_OF_BOUNDS,
                       Mux(params_bad_r, ErrorCode.PARAMS_OUT_OF_BOUNDS, ErrorCode.NONE)))
        m.d.sync += [self.code.eq(code), self.bad.eq(code != ErrorCode.NONE)]
        m.d.comb += self.done.eq(settled[-1])
        g, flags = self.geo, d.flags
        pairs = is_op(Opcode.CONV) & (d.weight_bits == 4)  # spec.validate.packs_out_blocks
        m.d.sync += [
            g.conv.eq(is_op(Opcode.CONV)),
            g.depthwise.eq(is_op(Opcode.DWCONV, Opcode.DEFORM_DW)),
            g.deform.eq(is_op(Opcode.DEFORM_DW)),
            g.pool.eq(is_op(Opcode.MAXPOOL)),
            g.add.eq(is_op(Opcode.ADD)),
            g.copy.eq(is_op(Opcode.COPY)),
            g.upsample.eq(up),
            g.in0_signed.eq((flags & Flag.IN0_SIGNED) != 0),
            g.in1_signed.eq((flags & Flag.IN1_SIGNED) != 0),
            g.out_signed.eq(out_signed),
            g.taps.eq(Mux(is_op(Opcode.ADD), 2, Mux(is_op(Opcode.COPY), 1,
                                                       Mux(is_op(Opcode.DWCONV, Opcode.DEFORM_DW), d.kernel, kk)))),
            g.rows.eq(Mux(prefetch, rows_pf, rows)),
            g.prefetch.eq(prefetch),
            g.cb_in.eq(cb_in),
            g.ob_n.eq(cb_out),
            g.packed.eq(pairs),
            g.ob_steps.eq(Mux(pairs, (cb_out + 1) >> 1, cb_out)),
            g.block_words.eq(kk_cb_in),
            g.cbi_n.eq(Mux(is_op(Opcode.CONV), cb_in, 1)),
            g.ho.eq(ho),
            g.wo.eq(wo),
            g.row_len0.eq(row_bytes["in0"]),
            g.row_len1.eq(row_bytes["in1"]),
            g.slot_words.eq(slot_words),
            g.out_reach.eq(reach["out"]),
            g.out_row_len.eq(row_bytes["out"]),
            g.in0_row_stride.eq(row_stride["in0"]),
            g.in1_row_stride.eq(row_stride["in1"]),
            g.out_row_stride.eq(row_stride["out"]),
            g.weight_bytes.eq(packed),
        ]
        return m
