"""MacArray: the P x P multiply-accumulate array, pipelined so every multiplier maps onto a DSP
slice with its input, product and output registers (DSP48E2 AREG/BREG, MREG, PREG; DSP48E1 the
same), and the adder tree is registered at every level.

One beat in is one (pixel, out block, tap, in block) step: the P input bytes of one pixel and
P weight words (lane b: the P weights of output channel b). Stages, all moving together on one
shared advance, so the array takes a beat per cycle and never drops one under backpressure:

    lanes     x[j]: the byte made signed/unsigned, or the padding value; the beat itself
    operands  each multiplier's own copies of x[j] and w[b][j]                      (A, B)
              (packed: (w2[b][j] << PACK_SHIFT) + w[b][j], two blocks' weights)
    product   w[b][j] * x[j]                                                        (M)
    product   registered again                                                      (P)
    split     packed: the product's low lane (PACK_SHIFT bits, signed) and high lane (the bits
              above plus the low lane's sign bit, the borrow back); else the product as it is
    tree      log2(P) registered adder levels (the last register takes product 0 instead of
              the sum for channel-wise ops); packed: a second tree for the high lanes
    acc       acc[b] = first ? dot : acc + dot  (MAXPOOL: the running max); packed: acc2[b] too;
              out on `last`
    out       a 2-entry skid buffer of finished accumulations (`o` reads its head register; a
              packed pair's two blocks leave one after the other, tags 2q and 2q + 1)

The advance is a register (it is also ``i.ready``): it is 1 for the next cycle when the skid
buffer will hold at most one block, so a block finished in any advancing cycle always has a free
entry, and with a ready consumer the buffer never holds more than one (a beat per cycle). The
advance's fanout (every stage's clock enable) is driven by that flip-flop, not by the
consumer's ready, and no ready passes through the array combinationally.

The depthwise ops (DWCONV, DEFORM_DW) take a kernel row per beat: lane b's first
DEPTHWISE_ROW_TAPS multipliers multiply channel b's byte of each of the row's taps (``x`` the
first tap, ``x_row`` the others) by its weights, and the tree sums them (the other weights are 0).
The other channel-wise ops (ADD, COPY, MAXPOOL) use product 0 of each lane only: lane b's own
input byte times its weight (an ADD multiplier, or 1), carried beside the tree and taken instead
of the tree's sum, so the array needs no second datapath. A beat carries a tag (the output block)
through to the output, where the requant records are looked up.

Product (b, j) is activation j times weight (b, j): the activation is shared down a column, so
a 4-bit CONV layer packs two output blocks into each multiplier (``mode.packed``): the beat's
``w`` (block 2q) and ``w2`` (block 2q + 1) weights of lane b go into one operand, and every
product is split into its two lanes straight after the P register (one product per split, so
the split is exact for every operand: `hwconv.rtl.packed_mac` proves the arithmetic). A 16 x 16
array then makes 16 x 32 products a cycle.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..spec.config import EngineConfig, mac_pipeline_depth
from ..spec.isa import DEPTHWISE_ROW_TAPS
from .packed_mac import product_range

__all__ = ["MacArray", "MacMode", "mac_in_layout", "mac_out_layout", "PIPELINE_DEPTH"]

X_BITS = 10       # an 8-bit activation, signed or unsigned, as a signed operand (and the pad value)
W_BITS = 17       # a weight, ADD's 16-bit multiplier, or two packed 4-bit weights
TAG_BITS = 16
# The packed operand's low lane: wide enough for any 4-bit x 8-bit product, signed or unsigned
# activation (-2040 .. 1785: 12 bits); the high weight sits above it, and (-8 << 12) plus a
# negative low weight needs W_BITS = 12 + 4 + 1.
_LO, _HI = product_range(False, None)
PACK_SHIFT = max((-_LO - 1).bit_length(), _HI.bit_length()) + 1
assert PACK_SHIFT + 5 <= W_BITS


def mac_in_layout(p: int) -> data.StructLayout:
    return data.StructLayout({
        "x": unsigned(8 * p),          # the pixel's P input bytes, lane j in bits 8j..8j+7
        "w": unsigned(8 * p * p),      # lane b's P weights in bits 8(bP+j)..
        "w2": unsigned(8 * p * p),     # packed: the second block's weights, laid out as w
        "pair2": unsigned(1),          # packed: the pair has its second block (else only 2q)
        "in_bounds": unsigned(1),      # 0: a padding tap, x reads the padding value
        # depthwise: the kernel row's other taps (tap t's P bytes in bits 8P(t-1)..) and whether
        # each lies in the image
        "x_row": unsigned(8 * p * (DEPTHWISE_ROW_TAPS - 1)),
        "in_bounds_row": unsigned(DEPTHWISE_ROW_TAPS - 1),
        "second": unsigned(1),         # ADD: the beat of the second operand (in1)
        "first": unsigned(1),          # the first beat of an accumulation
        "last": unsigned(1),           # the last beat: the sums go out
        "tag": unsigned(TAG_BITS),
    })


def mac_out_layout(p: int, acc_bits: int) -> data.StructLayout:
    return data.StructLayout({"acc": data.ArrayLayout(signed(acc_bits), p), "tag": unsigned(TAG_BITS)})


MacMode = data.StructLayout({
    "conv": unsigned(1),        # sum all P x P products (else lane b uses its own channel only)
    "depthwise": unsigned(1),   # channel-wise with the weight from the weight bank
    "add": unsigned(1),         # channel-wise with add_mult0 / add_mult1
    "pool": unsigned(1),        # the running max of the inputs
    "packed": unsigned(1),      # two 4-bit weights per multiplier: out blocks 2q and 2q + 1 (CONV)
    "in0_signed": unsigned(1),
    "in1_signed": unsigned(1),
    "add_mult0": signed(16),
    "add_mult1": signed(16),
})


def _entry_layout(p: int, acc_bits: int) -> data.StructLayout:
    """A finished accumulation in the skid buffer: the block (block 2q when packed), the packed
    pair's second block, the tag and whether the pair has its second block."""
    return data.StructLayout({"acc": data.ArrayLayout(signed(acc_bits), p),
                              "acc2": data.ArrayLayout(signed(acc_bits), p),
                              "tag": unsigned(TAG_BITS), "pair2": unsigned(1)})


PIPELINE_DEPTH = mac_pipeline_depth  # registered stages from a beat's acceptance to its sums on `o`


class MacArray(wiring.Component):
    """``i``: beats (`mac_in_layout`); ``o``: each finished accumulation (`mac_out_layout`);
    ``mode`` holds for the whole layer and is set at least a cycle before its first beat. ``busy``: a beat is somewhere in the pipeline."""

    def __init__(self, config: EngineConfig):
        self.config = config
        self.p = config.pe_in
        super().__init__({
            "i": In(stream.Signature(mac_in_layout(self.p))),
            "o": Out(stream.Signature(mac_out_layout(self.p, config.acc_bits))),
            "mode": In(MacMode),
            "busy": Out(1),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        P, acc_bits, act_bits = self.p, self.config.acc_bits, self.config.act_bits
        mode, beat = self.mode, self.i.payload
        levels = (P - 1).bit_length()
        n_stages = PIPELINE_DEPTH(P) - 1   # the skid buffer's head is not a pipeline stage

        # Shared advance, a register: see the module docstring (the skid buffer at the end).
        valid = [Signal(name=f"valid{s}") for s in range(n_stages)]
        advance = Signal(init=1)
        # `i.ready` is a copy of the advance with its own flip-flop (an equivalent expression, so
        # synthesis keeps it apart): the producer's logic does not hang off the net that
        # enables every register of the array.
        ready = Signal(init=1)
        m.d.comb += self.i.ready.eq(ready)

        def reg(value, shape, name, reset_less=True):
            """A datapath register that moves with the pipeline (no reset: DSP registers; a reset
            keeps a pure delay line out of a shift-register LUT)."""
            r = Signal(shape, name=name, reset_less=reset_less)
            with m.If(advance):
                m.d.sync += r.eq(value)
            return r

        # Beat flags and the tag travel alongside the data.
        first, last, tag, pair2 = beat.first, beat.last, beat.tag, beat.pair2
        with m.If(advance):
            m.d.sync += valid[0].eq(self.i.valid)
            for s in range(1, n_stages):
                m.d.sync += valid[s].eq(valid[s - 1])
        for s in range(n_stages - 1):  # the accumulator stage uses the flags of the stage before
            if s == n_stages - 2:  # a flip-flop (a reset keeps it out of the shift-register LUT
                # the delay line becomes): it selects every accumulator's next value
                f = Signal(name=f"first{s}")
                with m.If(advance):
                    m.d.sync += f.eq(first)
                first = f
            else:
                first = reg(first, 1, f"first{s}")
            last = reg(last, 1, f"last{s}")
            tag = reg(tag, TAG_BITS, f"tag{s}")
            pair2 = reg(pair2, 1, f"pair2_{s}")

        # -- stage 0: each lane's activation, sign-extended or the padding value ----------------
        # The layer's sign and padding choices are registered once (mode holds for the layer and
        # is set long before its first beat), so each activation bit is a few-input function of
        # the beat: no decode of the mode in front of the 256 operand registers.
        sgn_first, sgn_second, pad_first, pad_second = Signal(), Signal(), Signal(), Signal()
        second_sgn = Mux(mode.add, mode.in1_signed, mode.in0_signed)
        m.d.sync += [sgn_first.eq(mode.in0_signed), sgn_second.eq(second_sgn),
                     pad_first.eq(mode.pool & mode.in0_signed), pad_second.eq(mode.pool & second_sgn)]
        sgn = Mux(beat.second, sgn_second, sgn_first)
        pad = Mux(Mux(beat.second, pad_second, pad_first), -(1 << (act_bits - 1)), 0)
        def lane_x(byte, in_bounds, name):
            return reg(Mux(in_bounds, Mux(sgn, byte.as_signed(), byte.as_unsigned()), pad), signed(X_BITS), name)
        xs = [lane_x(beat.x[8 * j:8 * j + 8], beat.in_bounds, f"xa{j}") for j in range(P)]
        # depthwise: channel b's byte of the kernel row's tap t (t >= 1), for lane b's product t
        xr = {t: [lane_x(beat.x_row[8 * (P * (t - 1) + b):][:8], beat.in_bounds_row[t - 1], f"xr{t}_{b}")
                  for b in range(P)] for t in range(1, DEPTHWISE_ROW_TAPS)}
        beat = reg(beat, mac_in_layout(P), "beat0")    # the weights and flags move with them

        # -- stage 1: the multipliers' operands ----------------------------------------------
        channelwise, dw, product0_only, packed, bank_w0 = Signal(), Signal(), Signal(), Signal(), Signal()
        w0_first, w0_second = Signal(signed(16)), Signal(signed(16))
        m.d.sync += [channelwise.eq(~mode.conv), dw.eq(mode.depthwise),
                     product0_only.eq(~mode.conv & ~mode.depthwise), packed.eq(mode.packed),
                     bank_w0.eq(mode.conv | mode.depthwise),
                     w0_first.eq(Mux(mode.add, mode.add_mult0, 1)), w0_second.eq(Mux(mode.add, mode.add_mult1, 1))]
        # Product 0's weight for ADD/COPY/MAXPOOL: the operand's multiplier (or 1), registered per layer.
        lane_w0 = Mux(beat.second, w0_second, w0_first)
        # Each multiplier has its own copy of its activation: a register that fans out to one DSP
        # only is one the DSP can absorb. Channel-wise: lane b's own input byte goes into every
        # product of lane b (product 0 is the one used; the others are masked after the tree). So
        # no two copies hold the same function and synthesis cannot merge a column's copies back
        # into one register driving P DSPs (with its sign bit on every upper operand pin of each).
        # Depthwise: product t (t < DEPTHWISE_ROW_TAPS) of lane b takes channel b's byte of tap t.
        def x_source(b, j):
            own = Mux(channelwise, xs[b], xs[j])
            return Mux(dw, xr[j][b], own) if j in xr else own
        x_op = [[reg(x_source(b, j), signed(X_BITS), f"x{b}_{j}") for j in range(P)] for b in range(P)]
        w_op = []
        for b in range(P):
            row = []
            for j in range(P):
                at = 8 * (b * P + j)
                wb, w2b = beat.w[at:at + 8], beat.w2[at:at + 8]
                # Packed: (w2 << PACK_SHIFT) + w, w a 4-bit weight stored sign-extended: its low
                # bits are w's, and the top bits w2 minus w's sign (no carry chain below them).
                pk = Cat(wb, wb[7].replicate(PACK_SHIFT - 8),
                         (w2b.as_signed() - wb[7])[:W_BITS - PACK_SHIFT]).as_signed()
                # Products 1.. are masked after the tree, not here: a register with a mux to 0
                # in front becomes one with a reset that has no priority over its enable, which
                # the DSP's B register cannot take.
                own = Mux(bank_w0, wb.as_signed(), lane_w0) if j == 0 else wb.as_signed()
                row.append(reg(Mux(packed, pk, own), signed(W_BITS), f"w{b}_{j}"))
            w_op.append(row)

        # -- stages 2, 3: products, registered twice (the DSP's M and P registers); stage 4: the
        # split into the packed lanes (a product as it is when not packed) -------------------
        # Product widths: product 0 takes ADD's 16-bit multiplier (26 bits); the others an 8-bit
        # weight (18 bits); a packed product's two lanes fit PACK_SHIFT + HI_BITS bits.
        HI_BITS = PACK_SHIFT + 1          # w2 * x plus the low lane's borrow
        widths = [max(16 + X_BITS, PACK_SHIFT + HI_BITS)] + [max(8 + X_BITS, PACK_SHIFT + HI_BITS)] * (P - 1)
        unpacked = [16 + X_BITS] + [8 + X_BITS] * (P - 1)
        sums, sums2 = [], []
        for b in range(P):
            terms = [reg(w_op[b][j] * x_op[b][j], signed(widths[j]), f"m{b}_{j}") for j in range(P)]
            terms = [reg(terms[j], signed(widths[j]), f"p{b}_{j}") for j in range(P)]
            # The split registers have a reset, so the product's M -> P -> split delay line is
            # not mapped onto shift-register LUTs (the low bits pass unchanged).
            highs = [reg((t[PACK_SHIFT:].as_signed() + t[PACK_SHIFT - 1])[:HI_BITS], signed(HI_BITS), f"hi{b}_{j}",
                         reset_less=False) for j, t in enumerate(terms)]
            terms = [reg(Mux(packed, t[:PACK_SHIFT].as_signed(), t[:unpacked[j]].as_signed()), signed(unpacked[j]),
                         f"lo{b}_{j}", reset_less=False) for j, t in enumerate(terms)]
            # -- stages 5..: the adder trees, one registered level per halving -----------------
            # Channel-wise ops use product 0 only, carried beside the tree and chosen in front of
            # the last level's register, so the accumulator's operand is a flip-flop (not a
            # shift-register LUT at the end of product 0's delay line, nor a mux).
            p0 = terms[0]
            for lvl in range(levels):
                final = lvl == levels - 1
                terms = [terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i]
                         for i in range(0, len(terms), 2)]
                highs = [highs[i] + highs[i + 1] if i + 1 < len(highs) else highs[i]
                         for i in range(0, len(highs), 2)]
                if final:
                    terms = [reg(Mux(product0_only, p0, terms[0]), signed(acc_bits), f"dot{b}")]
                    highs = [reg(highs[0], signed(acc_bits), f"dot2_{b}")]
                else:
                    terms = [reg(t, signed(min(acc_bits, len(t))), f"sum{b}_{lvl}_{i}") for i, t in enumerate(terms)]
                    highs = [reg(t, signed(min(acc_bits, len(t))), f"sum2_{b}_{lvl}_{i}") for i, t in enumerate(highs)]
                    p0 = reg(p0, signed(len(p0)), f"p0_{b}_{lvl}")
            sums.append(terms[0])
            sums2.append(highs[0])

        # -- last stage: accumulate; the sums go out with the beat marked last ------------------
        # first/last/tag here are those of the tree's output beat (delayed with it).
        entry = _entry_layout(P, acc_bits)
        finished = Signal(entry)
        for b in range(P):
            acc = Signal(signed(acc_bits), name=f"acc{b}", reset_less=True)
            acc2 = Signal(signed(acc_bits), name=f"acc2_{b}", reset_less=True)
            dot, dot2 = sums[b], sums2[b]
            with m.If(advance & valid[n_stages - 2]):
                with m.If(mode.pool):
                    m.d.sync += acc.eq(Mux(first | (dot > acc), dot, acc))
                with m.Else():  # the sum from registers only; `first` picks after the adder
                    m.d.sync += acc.eq(Mux(first, dot, acc + dot))
                m.d.sync += acc2.eq(Mux(first, dot2, acc2 + dot2))
            m.d.comb += [finished.acc[b].eq(acc), finished.acc2[b].eq(acc2)]
        out_last = Signal()
        out_tag = Signal(TAG_BITS, reset_less=True)
        out_pair2 = Signal(reset_less=True)
        with m.If(advance):
            m.d.sync += [out_last.eq(valid[n_stages - 2] & last), out_tag.eq(tag), out_pair2.eq(pair2)]
        m.d.comb += [finished.tag.eq(out_tag), finished.pair2.eq(out_pair2 & packed)]

        # -- the skid buffer: head (e0, on `o`) and the entry behind it (e1) --------------------
        # A finished accumulation is pushed when the pipeline moves on from it (the accumulators
        # are then free to change); the advance guarantees an entry for it. A packed pair's
        # entry leaves in two halves: block 2q, then (``half``) block 2q + 1.
        push = Signal()
        m.d.comb += push.eq(advance & valid[n_stages - 1] & out_last)
        v0, v1, half = Signal(), Signal(), Signal()
        head_last = Signal()    # the head's block on `o` is its entry's last: a register, so the
        # consumer's ready meets one more register input, not the entry's pair2 and half logic
        e0 = Signal(entry, reset_less=True)
        e1 = Signal(entry, reset_less=True)
        pop = Signal()
        m.d.comb += [pop.eq(v0 & self.o.ready & head_last), self.o.valid.eq(v0),
                     self.o.payload.tag.eq(e0.tag | half)]
        for b in range(P):
            m.d.comb += self.o.payload.acc[b].eq(Mux(half, e0.acc2[b], e0.acc[b]))
        keep0 = v0 & ~pop
        # No push arrives while both entries are full (the advance was 0), so e1 may load
        # whenever it is empty, and its wide enable is a register, not the consumer's ready.
        with m.If(~v1):
            m.d.sync += e1.eq(finished)
        with m.If(~keep0):  # the head is free: the second entry, else the pushed block, moves in
            new_head = entry(Mux(v1, e1.as_value(), finished.as_value()))
            m.d.sync += [e0.eq(new_head), half.eq(0), head_last.eq(~new_head.pair2)]
        with m.Elif(v0 & self.o.ready):  # the pair's first block taken: its second is the last
            m.d.sync += [half.eq(1), head_last.eq(1)]
        m.d.sync += [v0.eq(keep0 | v1 | push), v1.eq(keep0 & (v1 | push))]
        # Entries next cycle: at most one -> the pipeline may move next cycle.
        n_next = (v0 + v1 + push - pop)[:2]
        m.d.sync += advance.eq(n_next <= 1)
        m.d.sync += ready.eq(~(keep0 & (v1 | push)))  # the same: a push never meets two entries

        busy = v0 | v1
        for v in valid:
            busy = busy | v
        m.d.comb += self.busy.eq(busy)
        return m
