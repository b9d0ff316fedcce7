"""Two W4 x A8 products per DSP48: the packing arithmetic, its bounds, and the `PackedMac` unit.

Two signed 4-bit weights share one multiplier operand, (w1 << k) + w0, and one 8-bit activation
(int8, or uint8 after a ReLU) multiplies both: the product is (w1*a << k) + w0*a. Accumulated
in the DSP's 48-bit P register, P = (S1 << k) + S0 with S0 = sum(w0*a), S1 = sum(w1*a):

    lo = P[k-1:0] as signed                     exact while S0 fits k signed bits
    hi = P[47:k] + P[k-1]    (mod 2**lane)      exact while S1 fits `lane` signed bits

P[k-1] is the sign of the low lane: a negative S0 borrowed one from the bits above it, and adding
it back is the whole correction. It must be the *sum's* sign bit, read from P, not a sign
predicted from the operands (docs/notes/packed_mac.md shows where that goes wrong).

The widths are the primitives' (UG579 DSP48E2, UG479 DSP48E1): the packed weights go on the wide
multiplier input (27 bits on the E2, 25 on the E1), the activation, sign- or zero-extended to
9 bits, on the 18-bit B input. k is limited by the wide input (w1 = -8 with a negative w0 must
still fit it), and the largest N follows from the low lane, the binding one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..spec.params import act_range, weight_range

__all__ = ["DSP48E1", "DSP48E2", "LATENCY", "DspShape", "PackedMac", "PackedMacColumn", "Packing",
           "accumulate", "beat_layout", "column_beat_layout", "lane_products", "lane_sums_fit",
           "lanes_layout", "max_k", "max_terms", "pack_operand", "packing_for", "product_range",
           "split_lanes", "to_verilog", "weight_bounds"]

WEIGHT_BITS = 4
ACT_BITS = 8
LATENCY = 4  # beat in -> operand regs (A/B) -> M -> P -> lanes out


@dataclass(frozen=True)
class DspShape:
    """The parts of a DSP48 slice the packing depends on."""
    name: str
    family: str         # yosys synth_xilinx -family
    wide_bits: int      # signed multiplier input that takes the packed weights (A or A+D)
    narrow_bits: int    # signed multiplier input that takes the activation (B)
    p_bits: int         # accumulator (P register)


DSP48E2 = DspShape("DSP48E2", "xcup", 27, 18, 48)   # UltraScale+ (UG579): 27x18, 48-bit P
DSP48E1 = DspShape("DSP48E1", "xc7", 25, 18, 48)    # 7-series / Zynq-7000 (UG479): 25x18


def weight_bounds(narrow: bool) -> tuple[int, int]:
    """[-8, 7], or [-7, 7] for the narrow range the quantiser uses."""
    lo, hi = weight_range(WEIGHT_BITS)
    return (lo + 1 if narrow else lo), hi


def product_range(narrow: bool, act_signed: bool | None) -> tuple[int, int]:
    """Smallest and largest w*a; act_signed None: either activation kind (one datapath for both)."""
    wlo, whi = weight_bounds(narrow)
    kinds = (True, False) if act_signed is None else (act_signed,)
    ends = [w * a for s in kinds for a in act_range(ACT_BITS, s) for w in (wlo, whi)]
    return min(ends), max(ends)


@dataclass(frozen=True)
class Packing:
    """k: the high lane's shift; terms: the most products one P register sums exactly;
    lane_bits: the width both lane sums fit (k: the low lane is the binding one)."""
    dsp: DspShape
    k: int
    terms: int
    narrow: bool
    act_signed: bool | None

    @property
    def lane_bits(self) -> int:
        return self.k

    @property
    def guard_bits(self) -> int:
        """Bits between one product's width and the lane's: room for the sum to grow."""
        lo, hi = product_range(self.narrow, self.act_signed)
        one = max((-lo - 1).bit_length(), hi.bit_length()) + 1
        return self.k - one


def max_k(dsp: DspShape, narrow: bool) -> int:
    """Largest k for which every (w1 << k) + w0 fits the wide signed input."""
    wlo, whi = weight_bounds(narrow)
    lim_lo, lim_hi = -(1 << (dsp.wide_bits - 1)), (1 << (dsp.wide_bits - 1)) - 1
    k = dsp.wide_bits
    while not (lim_lo <= (wlo << k) + wlo and (whi << k) + whi <= lim_hi):
        k -= 1
    return k


def max_terms(k: int, lane_bits: int, narrow: bool, act_signed: bool | None) -> int:
    """Most products whose sums stay in both lanes: low lane k bits, high lane lane_bits."""
    lo, hi = product_range(narrow, act_signed)
    bits = min(k, lane_bits)
    lim_lo, lim_hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return min(lim_lo // lo if lo < 0 else 1 << 62, lim_hi // hi if hi > 0 else 1 << 62)


def packing_for(dsp: DspShape, narrow: bool = False, act_signed: bool | None = None) -> Packing:
    """The widest low lane the DSP allows, and the N it gives. The high lane gets P's remaining
    p_bits - k bits, more than the low lane's k on both DSPs, so the low lane bounds N."""
    k = max_k(dsp, narrow)
    assert dsp.p_bits - k >= k, "the high lane would bind: the bound below assumes it does not"
    return Packing(dsp, k, max_terms(k, k, narrow, act_signed), narrow, act_signed)



def lane_sums_fit(w0, w1, k: int, lane_bits: int, act_signed: bool | None = None) -> np.ndarray:
    """Whether the sums over the last axis of these weight sequences stay exact in P for *any*
    activations of the kind: the bound from the real weights, which allows far longer sums than
    `Packing.terms` (the all-extreme worst case) when the weights are not all -8."""
    kinds = (True, False) if act_signed is None else (act_signed,)
    a_lo = min(act_range(ACT_BITS, s)[0] for s in kinds)
    a_hi = max(act_range(ACT_BITS, s)[1] for s in kinds)

    def fits(w, bits):
        w = np.asarray(w, dtype=np.int64)
        lo = np.minimum(w * a_lo, w * a_hi).sum(-1)   # each term's worst end, terms independent
        hi = np.maximum(w * a_lo, w * a_hi).sum(-1)
        return (lo >= -(1 << (bits - 1))) & (hi <= (1 << (bits - 1)) - 1)

    return fits(w0, k) & fits(w1, lane_bits)

# -- the bit-accurate model (numpy, vectorised; int64 holds every P value) ------------------------
def _wrap(x: np.ndarray, bits: int) -> np.ndarray:
    """Two's complement wrap to `bits` signed bits, as a register of that width holds it."""
    half = np.int64(1) << (bits - 1)
    return ((np.asarray(x, dtype=np.int64) + half) & ((half << 1) - 1)) - half


def pack_operand(w0, w1, k: int, dsp: DspShape) -> np.ndarray:
    """The wide multiplier input: (w1 << k) + w0, wrapped to its width as the DSP sees it."""
    return _wrap((np.asarray(w1, dtype=np.int64) << k) + np.asarray(w0, dtype=np.int64),
                 dsp.wide_bits)


def lane_products(w0, w1, a, k: int, dsp: DspShape) -> np.ndarray:
    """One packed product as the DSP's multiplier makes it (wide x narrow, no overflow possible)."""
    return pack_operand(w0, w1, k, dsp) * _wrap(a, dsp.narrow_bits)


def accumulate(products: np.ndarray, dsp: DspShape, axis: int = -1) -> np.ndarray:
    """P after summing `products` along `axis`, wrapped to P's width (the ALU does not saturate)."""
    return _wrap(np.sum(np.asarray(products, dtype=np.int64), axis=axis), dsp.p_bits)


def split_lanes(p, k: int, lane_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) from P: lo its low k bits, signed; hi the bits above plus the low lane's sign bit,
    wrapped to lane_bits (the correction adder's width)."""
    p = np.asarray(p, dtype=np.int64)
    lo = _wrap(p, k)
    borrow = (p >> (k - 1)) & 1
    return lo, _wrap((p >> k) + borrow, lane_bits)


# -- the unit -------------------------------------------------------------------------------------
def beat_layout() -> data.StructLayout:
    """One packed multiply: weights of two output channels, one activation, and where the sum
    starts (`first` loads P with this product) and ends (`last` emits the lanes)."""
    return data.StructLayout({
        "w0": signed(WEIGHT_BITS), "w1": signed(WEIGHT_BITS),
        "a": ACT_BITS, "a_signed": 1,
        "first": 1, "last": 1,
    })


def lanes_layout(lane_bits: int) -> data.StructLayout:
    return data.StructLayout({"lo": signed(lane_bits), "hi": signed(lane_bits)})


class PackedMac(wiring.Component):
    """Sum of w0*a and of w1*a over a sequence of beats, two products per DSP multiply.

    `i`: one beat per cycle (never stalls); `o`: the two lane sums, LATENCY cycles after a beat
    with `last`, for one cycle (the consumer always takes it). `clear` zeroes P at once (drops a
    sum in flight). A sequence must have at most `packing.terms` beats; the caller (compiler or
    controller) drains P to a wider accumulator before that (docs/notes/packed_mac.md).

    Stages, each a register the DSP holds: operands (AREG/BREG; the packed operand is formed in
    front of it, a 4-bit decrement in LUTs), MREG, PREG (load or accumulate); then the lane
    split and correction in fabric registers.
    """

    def __init__(self, dsp: DspShape = DSP48E2, narrow: bool = False):
        self.dsp = dsp
        self.packing = packing_for(dsp, narrow)
        super().__init__({
            "i": In(stream.Signature(beat_layout(), always_ready=True)),
            "o": Out(stream.Signature(lanes_layout(self.packing.lane_bits), always_ready=True)),
            "clear": In(1),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        dsp, k, lane = self.dsp, self.packing.k, self.packing.lane_bits
        beat = self.i.payload

        # Stage 1: operand registers (A, B). (w1 << k) + w0 is built in front of A as bits, so
        # every A bit is a register bit (zeros would keep yosys from using AREG): w0's low k bits,
        # then w1 minus w0's borrow (a 5-bit decrement, the only logic of the packing).
        wide = Signal(signed(dsp.wide_bits), reset_less=True)
        act = Signal(signed(dsp.narrow_bits), reset_less=True)  # int8 or uint8, at B's width
        w0_low = Cat(beat.w0, beat.w0[-1].replicate(k - WEIGHT_BITS))
        m.d.sync += [
            wide.eq(Cat(w0_low, (beat.w1 - beat.w0[-1])[:dsp.wide_bits - k])),
            act.eq(Mux(beat.a_signed, beat.a.as_signed(), beat.a)),
        ]
        # Control bits ride along with their beat through the DSP's three stages.
        valid = [Signal(name=f"valid{s}") for s in (1, 2, 3)]
        first = [Signal(name=f"first{s}") for s in (1, 2)]
        last = [Signal(name=f"last{s}") for s in (1, 2, 3)]
        m.d.sync += [valid[0].eq(self.i.valid), first[0].eq(beat.first), last[0].eq(beat.last),
                     valid[1].eq(valid[0]), first[1].eq(first[0]), last[1].eq(last[0]),
                     # `clear` drops the beat entering P this cycle, so no sum it ended comes out.
                     valid[2].eq(valid[1] & ~self.clear), last[2].eq(last[1])]

        # Stage 2: the product register.
        prod = Signal(signed(dsp.wide_bits + dsp.narrow_bits), reset_less=True)
        m.d.sync += prod.eq(wide * act)

        # Stage 3: P, loaded by the first beat of a sum, accumulated by the others.
        p = Signal(signed(dsp.p_bits), reset_less=True)  # `first` starts every sum
        with m.If(self.clear):
            m.d.sync += p.eq(0)
        with m.Elif(valid[1]):
            m.d.sync += p.eq(Mux(first[1], 0, p) + prod)

        # Stage 4: lanes; the high one takes back the low one's borrow (P[k-1], its sign bit).
        m.d.sync += [
            self.o.payload.lo.eq(p[:k].as_signed()),
            self.o.payload.hi.eq(p[k:k + lane].as_signed() + p[k - 1]),
            self.o.valid.eq(valid[2] & last[2]),
        ]
        return m



def column_beat_layout(channels: int) -> data.StructLayout:
    """One activation for `channels` output channels' weights (2 per DSP)."""
    return data.StructLayout({
        "w": data.ArrayLayout(signed(WEIGHT_BITS), channels),
        "a": ACT_BITS, "a_signed": 1,
        "first": 1, "last": 1,
    })


class PackedMacColumn(wiring.Component):
    """The MAC array's slice: `dsps` PackedMacs share each beat's activation, so one beat feeds
    2 * dsps output channels; channel 2j is DSP j's low lane, 2j + 1 its high lane.

    Same timing and sum rules as PackedMac; `o` carries every channel's sum at once.
    """

    def __init__(self, dsps: int, dsp: DspShape = DSP48E2, narrow: bool = False):
        if dsps < 1:
            self._MustUse__silence = True  # refused, so not "created but never used"
            raise ValueError(f"PackedMacColumn: dsps={dsps}, must be at least 1")
        self.dsps, self.dsp, self.narrow = dsps, dsp, narrow
        self.packing = packing_for(dsp, narrow)
        super().__init__({
            "i": In(stream.Signature(column_beat_layout(2 * dsps), always_ready=True)),
            "o": Out(stream.Signature(data.ArrayLayout(signed(self.packing.lane_bits), 2 * dsps),
                                      always_ready=True)),
            "clear": In(1),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        beat = self.i.payload
        for j in range(self.dsps):
            mac = m.submodules[f"mac{j}"] = PackedMac(self.dsp, self.narrow)
            m.d.comb += [
                mac.i.valid.eq(self.i.valid),
                mac.i.payload.w0.eq(beat.w[2 * j]),
                mac.i.payload.w1.eq(beat.w[2 * j + 1]),
                mac.i.payload.a.eq(beat.a),
                mac.i.payload.a_signed.eq(beat.a_signed),
                mac.i.payload.first.eq(beat.first),
                mac.i.payload.last.eq(beat.last),
                mac.clear.eq(self.clear),
                self.o.payload[2 * j].eq(mac.o.payload.lo),
                self.o.payload[2 * j + 1].eq(mac.o.payload.hi),
            ]
            if j == 0:  # every DSP's control pipeline is the same; yosys merges the copies
                m.d.comb += self.o.valid.eq(mac.o.valid)
        return m

def to_verilog(unit: wiring.Component, name: str) -> str:
    """Verilog of a unit whose streams are always ready (their `ready` is a constant, which
    amaranth.back.verilog does not take as a port): the ports are the signature's signals."""
    from amaranth.back import verilog
    from amaranth.hdl import Value

    ports = [Value.cast(v) for _, _, v in unit.signature.flatten(unit)]
    return verilog.convert(unit, name=name, ports=[v for v in ports if isinstance(v, Signal)])
