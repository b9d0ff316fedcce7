"""SplitBuffer: on-chip memory addressed by lane (byte), read and written a whole word's worth of
lanes at any lane offset in one cycle.

The words are split over two memories, even words and odd words, so a run starting anywhere
covers at most one word of each: both are written (with lane enables) or read in the same
cycle, and a shifter puts the lanes in place. The line buffer uses it to read the pe_in channels
of a pixel wherever the pixel starts in a row kept as it lies in DRAM; the row buffer to place
an output block's bytes wherever the block goes in the output row.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

__all__ = ["SplitBuffer"]


class SplitBuffer(wiring.Component):
    """``lanes`` lanes of ``lane_bits`` per word, ``depth`` words (even).

    Write: ``w_en`` writes ``w_data`` lane i to lane ``w_addr + i`` where ``w_mask`` bit i is set.
    Read: ``r_en`` reads lanes ``r_addr[k]`` .. ``r_addr[k] + lanes - 1``, on ``r_data[k]`` the
    next cycle (held while ``r_en`` is low), for each of ``reads`` ports (a memory per port on
    chip: the line buffer's ports read a depthwise kernel row's taps at once). Addresses are in
    lanes.

    ``write_register``: the shifted write (both words' addresses, lanes and enables) is
    registered before the memories, so the write lands a cycle later (a read issued in the
    cycle after ``w_en`` then still sees the old lanes) and the shifter is not in the memories'
    input path. ``read_register``: the two words read are registered before the lane shifter
    (the BRAM output goes through one word-select mux into a register), and the read becomes a
    two-stage pipeline that moves when ``r_en`` is high: the register loads the previous read's
    words when ``r_en`` is high, so ``r_data`` shows the read issued at the ``r_en`` before last
    (two cycles after it when ``r_en`` stays high), held while ``r_en`` is low. A reader whose
    own pipeline moves on ``r_en`` then finds each read's data two stages further on, however
    it stalls.
    """

    def __init__(self, lanes: int, lane_bits: int, depth: int, *, write_register: bool = False,
                 read_register: bool = False, reads: int = 1):
        if lanes & (lanes - 1) or depth % 2:
            raise ValueError("lanes must be a power of two and depth even")
        self.lanes, self.lane_bits, self.depth = lanes, lane_bits, depth
        self.write_register = write_register
        self.read_register = read_register
        self.reads = reads
        addr_bits = (lanes * depth - 1).bit_length()
        super().__init__({
            "w_en": In(1), "w_addr": In(addr_bits), "w_data": In(lanes * lane_bits), "w_mask": In(lanes),
            "r_en": In(1), "r_addr": In(data.ArrayLayout(addr_bits, reads)),
            "r_data": Out(data.ArrayLayout(lanes * lane_bits, reads)),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        n, lb = self.lanes, self.lane_bits
        sh = n.bit_length() - 1
        banks = []
        for name in ("even", "odd"):
            mem = Memory(shape=n * lb, depth=self.depth // 2, init=[])
            m.submodules[name] = mem
            banks.append((mem.write_port(granularity=lb), [mem.read_port() for _ in range(self.reads)]))
        (ew, ers), (ow, ors) = banks

        # -- write: the run placed in a two-word window, split at the word boundary --
        w = self.w_addr >> sh
        off = self.w_addr[:sh]
        # Data: the run rotated by whole lanes (one case per offset): lane k of either word holds
        # run lane (k - off) mod n wherever its enable is set. Enables: the mask shifted.
        # A rotated lane k lands in the first word when k >= off, in the second when k < off.
        rot, rot_m = Signal(n * lb), Signal(n)
        with m.Switch(off):
            for k in range(n):
                with m.Case(k):
                    m.d.comb += [rot.eq(self.w_data.rotate_left(k * lb)), rot_m.eq(self.w_mask.rotate_left(k))]
        odd = w[0]
        w_en = self.w_en
        if self.write_register:  # registered: the placed run, its offset and the words' addresses
            regs = [Signal.like(v) for v in (rot, rot_m, off, odd, w_en)]
            m.d.sync += [r.eq(v) for r, v in zip(regs, (rot, rot_m, off, odd, w_en))]
            m.d.sync += [ew.addr.eq(Mux(odd, (w + 1) >> 1, w >> 1)), ow.addr.eq(w >> 1)]
            rot, rot_m, off, odd, w_en = regs
        else:
            m.d.comb += [ew.addr.eq(Mux(odd, (w + 1) >> 1, w >> 1)), ow.addr.eq(w >> 1)]
        in_even = Cat(*[(off <= k) ^ odd for k in range(n)])  # the lane's word is the even one
        m.d.comb += [
            ew.data.eq(rot), ow.data.eq(rot),
            ew.en.eq(Mux(w_en, rot_m & in_even, 0)),
            ow.en.eq(Mux(w_en, rot_m & ~in_even, 0)),
        ]

        # -- reads: both words, then the lanes from the offset on (each port alike) --
        for er, orr, r_addr, r_data in zip(ers, ors, self.r_addr, self.r_data):
            self._read(m, er, orr, r_addr, r_data)
        return m

    def _read(self, m, er, orr, r_addr, r_data) -> None:
        n, lb = self.lanes, self.lane_bits
        sh = n.bit_length() - 1
        rw = r_addr >> sh
        r_odd, r_off = Signal(), Signal(sh)
        m.d.comb += [er.addr.eq(Mux(rw[0], (rw + 1) >> 1, rw >> 1)), orr.addr.eq(rw >> 1),
                     er.en.eq(self.r_en), orr.en.eq(self.r_en)]
        with m.If(self.r_en):
            m.d.sync += [r_odd.eq(rw[0]), r_off.eq(r_addr[:sh])]
        pair = Signal(2 * n * lb)
        m.d.comb += pair.eq(Mux(r_odd, Cat(orr.data, er.data), Cat(er.data, orr.data)))
        if self.read_register:  # the second stage, moving with the first on r_en
            words, r_off1 = Signal(2 * n * lb), Signal(sh)
            with m.If(self.r_en):
                m.d.sync += [words.eq(pair), r_off1.eq(r_off)]
            pair, r_off = words, r_off1
        with m.Switch(r_off):
            for k in range(n):
                with m.Case(k):
                    m.d.comb += r_data.eq(pair >> (k * lb))
