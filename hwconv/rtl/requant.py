"""Requantiser: the contract's rounding rule in hardware, `lanes` output channels per cycle.

    y = clamp(((acc + bias) * mult + 2**(shift-1)) >> shift, clamp_lo, clamp_hi)

A pipeline that never stalls, each stage a register, then an output FIFO:

    in     acc, bias, mult, shift registered (the record comes straight from a BRAM)
    sum    acc + bias
    mul    sum * mult as two products that each fit one DSP48 (operands and products registered)
    prod   2 * (hi << 17 + lo): the doubled product
    coarse t1 = 2 * prod >> (shift & ~7) (arithmetic)
    fine   t = t1 >> (shift & 7): y = (t + 1) >> 1 is the rounded result, for shift 0 too
           (floor((p + 2**(s-1)) / 2**s) == floor((floor(p / 2**(s-1)) + 1) / 2)); only t's low
           SAT_BITS are kept, with whether t fits them (beyond them y is past any 16-bit clamp
           bound), read from t1's bits above SAT_BITS - 1 + (shift & 7)
    out    t compared with 2*clamp_lo - 1 and 2*clamp_hi (y < lo iff t < 2*lo - 1, y > hi iff
           t > 2*hi); clamp_lo, clamp_hi or y's low act_bits ((t + 1) >> 1 from t's low
           act_bits + 1 bits) into the FIFO

`i.ready` is a register: the unit takes a beat while the beats in flight and in the FIFO leave
room for it (credits), so it never depends on `o.ready` and never drops a beat; one beat per
cycle under no backpressure. `clamp_lo/hi` are registered (they hold for the whole layer).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..spec.config import EngineConfig
from ..spec.params import REQUANT_MULT_BITS, REQUANT_SHIFT_BITS
from .fifo import FastFIFO, thermometer_step

__all__ = ["Requantizer", "lane_layout", "LATENCY"]

BIAS_BITS = 32
CLAMP_BITS = 16
_LO_BITS = 17  # the low part of acc + bias in the split product (an 18-bit signed DSP input)
# t beyond SAT_BITS (signed) puts y = (t + 1) >> 1 past every CLAMP_BITS clamp bound.
SAT_BITS = CLAMP_BITS + 4
STAGES = 7          # in, sum, mul, prod, coarse, fine, out
FIFO_DEPTH = 16     # >= the credit round trip (STAGES + the FIFO's 2 + the credit's 1)
LATENCY = STAGES + 2  # cycles from a beat taken to its result on `o` (an empty FIFO)


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
            "clamp_lo": In(signed(CLAMP_BITS)),
            "clamp_hi": In(signed(CLAMP_BITS)),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        n, acc_bits, ab = self.lanes, self.config.acc_bits, self.config.act_bits
        sum_w = max(acc_bits, BIAS_BITS) + 1
        prod2_w = sum_w + REQUANT_MULT_BITS + 2  # signed sum x unsigned mult, doubled

        # -- handshakes: a credit per FIFO entry; `ready` is a register ----------------------------
        m.submodules.fifo = fifo = FastFIFO(width=n * ab, depth=FIFO_DEPTH)
        take = self.i.valid & self.i.ready
        give = self.o.valid & self.o.ready
        # beats in the pipeline and the FIFO, as a thermometer (held[i]: more than i), so the
        # consumer's ready moves each bit by one LUT and reaches no adder
        held = Signal(FIFO_DEPTH)
        ready = Signal(init=1)
        up, down = take & ~give, give & ~take
        m.d.sync += [held.eq(thermometer_step(held, up, down)),
                     ready.eq(Mux(up, ~held[FIFO_DEPTH - 2], Mux(down, 1, ready)))]
        valid = Signal(STAGES)
        m.d.sync += valid.eq((valid << 1) | take)
        m.d.comb += [self.i.ready.eq(ready),
                     self.o.valid.eq(fifo.r_rdy), fifo.r_en.eq(self.o.ready),
                     fifo.w_en.eq(valid[-1])]

        # -- per-layer constants --------------------------------------------------------------
        lo, hi = Signal(signed(CLAMP_BITS)), Signal(signed(CLAMP_BITS))
        lo_t, hi_t = Signal(signed(CLAMP_BITS + 2)), Signal(signed(CLAMP_BITS + 2))
        m.d.sync += [lo.eq(self.clamp_lo), hi.eq(self.clamp_hi), lo_t.eq(2 * lo - 1), hi_t.eq(2 * hi)]

        outs = []
        for lane in range(n):
            src = self.i.payload[lane]
            r_acc = Signal(signed(acc_bits), name=f"acc{lane}")
            r_bias = Signal(signed(BIAS_BITS), name=f"bias{lane}")
            r_mult = [Signal(unsigned(REQUANT_MULT_BITS), name=f"mult{s}_{lane}") for s in range(2)]
            r_shift = [Signal(unsigned(REQUANT_SHIFT_BITS), name=f"shift{s}_{lane}") for s in range(4)]
            r_fine = Signal(3, name=f"fine{lane}")
            s_sum = Signal(signed(sum_w), name=f"sum{lane}")
            p_hi = Signal(signed(sum_w - _LO_BITS + REQUANT_MULT_BITS), name=f"prod_hi{lane}")
            p_lo = Signal(unsigned(_LO_BITS + REQUANT_MULT_BITS), name=f"prod_lo{lane}")
            prod2 = Signal(signed(prod2_w), name=f"prod2_{lane}")
            t1 = Signal(signed(prod2_w), name=f"t1_{lane}")
            t_low = Signal(signed(SAT_BITS), name=f"t_low{lane}")
            over, under = Signal(name=f"over{lane}"), Signal(name=f"under{lane}")
            out = Signal(unsigned(ab), name=f"out{lane}")
            # t = t1 >> fine fits SAT_BITS iff t1's bits from SAT_BITS - 1 + fine up are all its sign:
            # a fixed part above SAT_BITS + 6 and the seven bits below it from `fine` on.
            fixed = t1[SAT_BITS + 6:]
            near = t1[SAT_BITS - 1:SAT_BITS + 6]
            # bit k set iff k >= fine: decoded in the coarse stage from the shift's register, so
            # the fine stage's saturation tests start from a mask register (no decode in front)
            from_fine = Signal(7, name=f"from_fine{lane}")
            near_any = (near & from_fine).any()
            near_all = (near | ~from_fine).all()
            below, above = t_low < lo_t, t_low > hi_t
            y_low = (t_low[:ab + 1] + 1)[1:]
            m.d.sync += [
                # in
                r_acc.eq(src.acc), r_bias.eq(src.bias), r_mult[0].eq(src.mult), r_shift[0].eq(src.shift),
                # sum
                s_sum.eq(r_acc + r_bias), r_mult[1].eq(r_mult[0]), r_shift[1].eq(r_shift[0]),
                # mul: the sum's signed high part and its unsigned low 17 bits, each times mult
                p_hi.eq(s_sum[_LO_BITS:].as_signed() * r_mult[1]),
                p_lo.eq(s_sum[:_LO_BITS] * r_mult[1]),
                r_shift[2].eq(r_shift[1]),
                # prod
                prod2.eq(((p_hi << _LO_BITS) + p_lo) << 1), r_shift[3].eq(r_shift[2]),
                # coarse
                t1.eq(prod2 >> (r_shift[3][3:] << 3)), r_fine.eq(r_shift[3][:3]),
                from_fine.eq(~((1 << r_shift[3][:3]) - 1)),
                # fine
                t_low.eq((t1 >> r_fine)[:SAT_BITS]),
                over.eq(~t1[-1] & (fixed.any() | near_any)), under.eq(t1[-1] & ~(fixed.all() & near_all)),
                # out: clamp_lo first (validated descriptors have clamp_lo <= clamp_hi)
                out.eq(Mux(under | ~over & below, lo[:ab], Mux(over | above, hi[:ab], y_low))),
            ]
            outs.append(out)
        m.d.comb += fifo.w_data.eq(Cat(*outs))
        m.d.comb += self.o.payload.eq(fifo.r_data)
        return m
