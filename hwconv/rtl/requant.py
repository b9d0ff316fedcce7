"""Requantiser: the contract's rounding rule in hardware, `lanes` output channels per cycle.

    y = clamp(((acc + bias) * mult + 2**(shift-1)) >> shift, clamp_lo, clamp_hi)

Four pipeline stages (add, multiply, round-shift, clamp) that all stall together when the output is
not accepted, so the unit takes one beat per cycle under no backpressure and never drops one.
"""

from __future__ import annotations

from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..spec.config import EngineConfig
from ..spec.params import REQUANT_MULT_BITS, REQUANT_SHIFT_BITS

BIAS_BITS = 32
_LO_BITS = 17  # the low part of acc + bias in the split product (an 18-bit signed DSP input)


def lane_layout(acc_bits: int) -> data.StructLayout:
    return data.StructLayout({
        "acc": signed(acc_bits),
        "bias": signed(BIAS_BITS),
        "mult": unsigned(REQUANT_MULT_BITS),
        "shift": unsigned(REQUANT_SHIFT_BITS),
    })


class Requantizer(wiring.Component):
    """`i`: per-lane accumulators with their channel's requant record; `o`: output bytes
    (two's complement for signed outputs). `clamp_lo/hi` hold for the whole layer."""

    def __init__(self, config: EngineConfig, lanes: int | None = None):
        self.config = config
        self.lanes = lanes or config.pe_out
        super().__init__({
            "i": In(stream.Signature(data.ArrayLayout(lane_layout(config.acc_bits), self.lanes))),
            "o": Out(stream.Signature(data.ArrayLayout(unsigned(config.act_bits), self.lanes))),
            "clamp_lo": In(signed(16)),
            "clamp_hi": In(signed(16)),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        n, acc_bits = self.lanes, self.config.acc_bits
        sum_w = max(acc_bits, BIAS_BITS) + 1
        prod_w = sum_w + REQUANT_MULT_BITS + 1
        # The rounding term 2**(shift-1) reaches 2**62 even when the product is small.
        round_w = max(prod_w, 1 << REQUANT_SHIFT_BITS) + 1

        # Every stage moves when the last one is empty or being read: one shared advance signal.
        valid = [Signal(name=f"valid{s}") for s in range(4)]
        advance = Signal()
        m.d.comb += [
            advance.eq(~valid[3] | self.o.ready),
            self.i.ready.eq(advance),
            self.o.valid.eq(valid[3]),
        ]
        with m.If(advance):
            m.d.sync += [valid[0].eq(self.i.valid)] + [valid[s].eq(valid[s - 1]) for s in range(1, 4)]

        for lane in range(n):
            src = self.i.payload[lane]
            s1_sum = Signal(signed(sum_w), name=f"sum{lane}")
            s1_mult = Signal(unsigned(REQUANT_MULT_BITS), name=f"mult1_{lane}")
            s1_shift = Signal(unsigned(REQUANT_SHIFT_BITS), name=f"shift1_{lane}")
            s2_prod = Signal(signed(prod_w), name=f"prod{lane}")
            s2_shift = Signal(unsigned(REQUANT_SHIFT_BITS), name=f"shift2_{lane}")
            s3_y = Signal(signed(round_w), name=f"y{lane}")
            s4_out = Signal(unsigned(self.config.act_bits), name=f"out{lane}")
            half = Signal(unsigned(round_w - 1), name=f"half{lane}")
            m.d.comb += half.eq((1 << s2_shift) >> 1)  # 2**(shift-1), or 0 when shift is 0
            with m.If(advance):
                m.d.sync += [
                    s1_sum.eq(src.acc + src.bias),
                    s1_mult.eq(src.mult),
                    s1_shift.eq(src.shift),
                    # sum * mult as two products that each fit one DSP48 (27 x 18 signed):
                    # the sum's signed high part and its unsigned low 17 bits, each times mult.
                    s2_prod.eq((s1_sum[_LO_BITS:].as_signed() * s1_mult << _LO_BITS)
                               + s1_sum[:_LO_BITS] * s1_mult),
                    s2_shift.eq(s1_shift),
                    s3_y.eq((s2_prod + half) >> s2_shift),  # arithmetic: s2_prod is signed
                ]
                with m.If(s3_y < self.clamp_lo):
                    m.d.sync += s4_out.eq(self.clamp_lo)
                with m.Elif(s3_y > self.clamp_hi):
                    m.d.sync += s4_out.eq(self.clamp_hi)
                with m.Else():
                    m.d.sync += s4_out.eq(s3_y)
            m.d.comb += self.o.payload[lane].eq(s4_out)
        return m
