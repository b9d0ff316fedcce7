"""DescriptorChecker: the engine's copy of `hwconv.spec.validate.check_descriptor`.

Before a layer runs, the engine checks its descriptor with the same rules as the golden model and
reports the same ErrorCode, so a bad program stops cleanly on the layer the golden model names.
It also computes the layer's geometry record (`geometry.geometry_layout`: loop bounds, row and
slot sizes, the op's class) that every engine unit reads while the layer runs.

It takes ~60 cycles per layer: the one division the rules need, (channels - 1) // group_channels
for each tensor, runs on a shared 16-step restoring divider rather than three array dividers.
The arithmetic after it is pipelined, with no two multipliers or long adders chained in one
cycle: the descriptor and the quotients hold still, so every product is registered and `done`
rises `STAGES` cycles after the divisions, when the last stage has settled.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..spec.config import EngineConfig
from ..spec.isa import KERNELS, REQUANT_OPS, STRIDES, WEIGHTED_OPS, Flag, Opcode
from ..spec.params import REQUANT_RECORD_BYTES
from ..spec.registers import ErrorCode
from .geometry import geometry_layout
from .layouts import descriptor_layout

__all__ = ["DescriptorChecker", "REFS", "STAGES"]

REFS = ("in0", "in1", "out")
SPAN_BITS = 48
STAGES = 7  # registered stages from the divisions to `done`


class DescriptorChecker(wiring.Component):
    """``start`` (one cycle, with ``desc`` valid and held) -> ``done`` with ``code``; ``reach``
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
            "geo": Out(geometry_layout()),
        }
        for r in REFS:
            members[f"{r}_reach"] = Out(17)
            members[f"{r}_span"] = Out(SPAN_BITS)
        super().__init__(members)

    def elaborate(self, platform) -> Module:
        m = Module()
        cfg = self.config
        d = self.desc
        op = d.opcode
        refs = {r: getattr(d, r) for r in REFS}

        def any_of(conds):
            out = 0
            for c in conds:
                out = out | c
            return out

        def is_op(*ops):
            return any_of(op == o for o in ops)

        # -- sequential part: (C - 1) // gc and % gc for each tensor ---------------------------
        which = Signal(range(len(REFS) + 1))
        step = Signal(range(17))
        num = Signal(16)
        rem = Signal(17)
        quo = Signal(16)
        running = Signal()
        quots = {r: Signal(16, name=f"{r}_q") for r in REFS}
        rems = {r: Signal(16, name=f"{r}_r") for r in REFS}
        ready = Signal()

        divisor = Signal(16)
        dividend = Signal(16)
        for i, r in enumerate(REFS):
            with m.If(which == i):
                m.d.comb += [divisor.eq(refs[r].group_channels), dividend.eq(refs[r].channels - 1)]

        with m.If(self.start):
            m.d.sync += [which.eq(0), step.eq(0), running.eq(1), ready.eq(0)]
        with m.Elif(running):
            with m.If(step == 0):
                m.d.sync += [num.eq(dividend), rem.eq(0), quo.eq(0), step.eq(1)]
            with m.Elif(step <= 16):
                trial = Signal(17)
                m.d.comb += trial.eq((rem << 1) | num[15])
                with m.If((divisor != 0) & (trial >= divisor)):
                    m.d.sync += [rem.eq(trial - divisor), quo.eq((quo << 1) | 1)]
                with m.Else():
                    m.d.sync += [rem.eq(trial), quo.eq(quo << 1)]
                m.d.sync += [num.eq(num << 1), step.eq(step + 1)]
                with m.If(step == 16):
                    for i, r in enumerate(REFS):
                        with m.If(which == i):
                            m.d.sync += [quots[r].eq(Mux(trial >= divisor, (quo << 1) | 1, quo << 1)),
                                         rems[r].eq(Mux(trial >= divisor, trial - divisor, trial))]
                    m.d.sync += [which.eq(which + 1), step.eq(0)]
                    with m.If(which == len(REFS) - 1):
                        m.d.sync += [running.eq(0), ready.eq(1)]

        # -- pipelined arithmetic: every value a register, at most one product deep -------------
        def stage(value, shape, name):
            r = Signal(shape, name=name)
            m.d.sync += r.eq(value)
            return r

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
        # stage 3
        hw_ps = {r: stage(hw_m1[r] * refs[r].pixel_stride, SPAN_BITS, f"{r}_hw_ps") for r in REFS}
        row_bytes = {r: stage(row_ps[r] + reach[r], 32, f"{r}_row_bytes") for r in REFS}
        row_stride = {r: stage(row_ps[r] + refs[r].pixel_stride, 32, f"{r}_row_stride") for r in REFS}
        kk_out_cin = stage(kk_out * d.in0.channels, 48, "kk_out_cin")
        kk_cb_out_cin = stage(kk_cb_out * cb_in, 48, "kk_cb_out_cin")
        # stage 4
        span = {r: stage(hw_ps[r] + reach[r], SPAN_BITS, f"{r}_span_r") for r in REFS}
        n_weights = stage(Mux(is_op(Opcode.CONV), kk_out_cin, kk_out), 40, "n_weights")
        weight_words = stage(Mux(is_op(Opcode.CONV), kk_cb_out_cin,
                                 Mux(is_op(Opcode.DWCONV, Opcode.DEFORM_DW), kk_cb_out, 0)), 32, "weight_words")
        longest = Mux(is_op(Opcode.ADD) & (row_bytes["in1"] > row_bytes["in0"]), row_bytes["in1"], row_bytes["in0"])
        slot_words = stage((longest + BB - 1 + cfg.line_word_bytes - 1) >> (cfg.line_word_bytes.bit_length() - 1),
                           32, "slot_words")
        row_need = stage(row_bytes["out"] + BB - 1, 33, "row_need")
        # stage 5
        line_words = stage(rows * slot_words, 40, "line_words")

        for r in REFS:
            m.d.comb += [getattr(self, f"{r}_reach").eq(reach[r]), getattr(self, f"{r}_span").eq(span[r])]

        # -- the rules, in validate.check_descriptor's order of codes ---------------------------
        known_flags = int(sum(Flag))
        kernel_ok = any_of(is_op(o) & any_of(d.kernel == k for k in ks) for o, ks in KERNELS.items())
        stride_ok = any_of(is_op(o) & any_of(d.stride == s for s in ss) for o, ss in STRIDES.items())
        max_pad = Mux(is_op(Opcode.MAXPOOL), d.kernel - 1, d.kernel >> 1)
        pad_ok = Mux(is_op(Opcode.DEFORM_DW), d.pad == 1, d.pad <= max_pad)
        wbits_ok = ~is_op(*WEIGHTED_OPS) | (d.weight_bits == 4) | (d.weight_bits == 8)
        uses_in1 = is_op(Opcode.ADD, Opcode.DEFORM_DW)
        used = {"out": 1, "in0": 1, "in1": uses_in1}

        ref_bad = []
        for r in REFS:
            t = refs[r]
            if r != "out":  # inputs are read as one run of channels per pixel
                ref_bad.append(used[r] & (t.group_channels != t.channels))
            bad = ((t.height == 0) | (t.width == 0) | (t.channels == 0) | (t.group_channels == 0)
                   | (t.group_channels > t.channels) | (t.group_stride < t.group_channels)
                   | (reach[r] > t.pixel_stride) | (t.channels > cfg.max_channels))
            if r != "out":
                bad = bad | (t.width > cfg.max_width)
            ref_bad.append(used[r] & bad)

        up = (d.flags & Flag.UPSAMPLE2X) != 0
        o, i0, i1 = d.out, d.in0, d.in1
        ho = Mux(up, o.height >> 1, o.height)
        wo = Mux(up, o.width >> 1, o.width)
        up_bad = up & (o.height[0] | o.width[0])

        def conv_size(size):
            num_ = Signal(signed(20))
            m.d.comb += num_.eq(size + 2 * d.pad - d.kernel)
            q = Mux(d.stride == 4, num_ >> 2, Mux(d.stride == 2, num_ >> 1, num_))
            return q + 1

        windowed = is_op(Opcode.CONV, Opcode.DWCONV, Opcode.MAXPOOL)
        want_h = Mux(windowed, conv_size(i0.height), i0.height)
        want_w = Mux(windowed, conv_size(i0.width), i0.width)
        shape_bad = (want_h != ho) | (want_w != wo)
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
        clamp_bad = is_op(*REQUANT_OPS) & ((d.clamp_lo < lo) | (d.clamp_lo > d.clamp_hi) | (d.clamp_hi > hi))

        # On-chip buffer fit (validate.line_buffer_words / weight_words / row_buffer_need).
        fit_bad = ((line_words > cfg.line_buffer_depth) | (weight_words > cfg.weight_depth)
                   | (row_need > cfg.row_buffer_bytes // 2))

        bad_terms = [~kernel_ok | ~stride_ok | ~pad_ok | ~wbits_ok | ((d.flags & ~known_flags) != 0) | up_bad
                     | (wo > cfg.max_width) | chan_bad | deform_bad | add_bad | sign_bad,
                     any_of(ref_bad), shape_bad, clamp_bad, fit_bad]

        arena_bad = any_of(used[r] & ((refs[r].addr + span[r]) > self.arena_size) for r in REFS)
        packed = stage(Mux(d.weight_bits == 8, n_weights, (n_weights + 1) >> 1), 40, "packed")  # stage 5
        weights_bad = is_op(*WEIGHTED_OPS) & ((d.weights_offset + packed) > self.params_size)
        records_bad = is_op(*REQUANT_OPS) & (
            (d.params_offset + o.channels * REQUANT_RECORD_BYTES) > self.params_size)

        # stage 6: each rule group registered; stage 7: the code, and the geometry every unit
        # reads while the layer runs
        bad_r = [stage(term, 1, f"bad{i}") for i, term in enumerate(bad_terms)]
        arena_bad_r = stage(arena_bad, 1, "arena_bad")
        params_bad_r = stage(weights_bad | records_bad, 1, "params_bad")
        code = Mux(any_of(bad_r), ErrorCode.BAD_DESCRIPTOR,
                   Mux(arena_bad_r, ErrorCode.ARENA_OUT_OF_BOUNDS,
                       Mux(params_bad_r, ErrorCode.PARAMS_OUT_OF_BOUNDS, ErrorCode.NONE)))
        m.d.sync += self.code.eq(code)
        m.d.comb += self.done.eq(settled[-1])
        g, flags = self.geo, d.flags
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
            g.taps.eq(Mux(is_op(Opcode.ADD), 2, Mux(is_op(Opcode.COPY), 1, kk))),
            g.rows.eq(rows),
            g.cb_in.eq(cb_in),
            g.ob_n.eq(cb_out),
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
