"""FastFIFO: Amaranth's SyncFIFOBuffered, cycle for cycle, with short paths from its read enable.

The engine's output queues sit where one unit's ready meets another's counters: the consumer's
ready (`r_en`) went through SyncFIFOBuffered's binary up/down level counter and its compares
(`inner_level != 0`, `!= depth - 1`, a non-power-of-two pointer wrap) before reaching a register,
and those were among the whole engine's worst paths. Here the inner queue's fill is a
thermometer code (bit i: more than i entries), so "not empty" and "not full" are single register
bits and a push or pop moves each bit by one LUT; the pointers wrap at a power of two (a 4-bit
increment is one LUT per bit). The binary `level` is a register of its own beside them, for
callers that want a count.

Ports and behaviour are SyncFIFOBuffered's (w_data/w_en/w_rdy, r_data/r_en/r_rdy, level,
w_level, r_level; capacity `depth`, one extra cycle from an empty queue's write to r_rdy); the
unit test runs both side by side and compares every output on every cycle.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

__all__ = ["FastFIFO", "thermometer_step"]


def thermometer_step(t: Signal, up, down):
    """The next value of a thermometer count `t` (t[i]: the count is more than i) after one
    more (`up`), one fewer (`down`) or neither: each bit is a function of its neighbours and
    the two conditions, one LUT, where a binary counter would need an adder."""
    return Mux(up, Cat(1, t[:-1]), Mux(down, Cat(t[1:], 0), t))


class FastFIFO(wiring.Component):
    def __init__(self, *, width: int, depth: int):
        if depth < 1:
            raise ValueError(f"FastFIFO depth {depth}: at least 1")
        self.width, self.depth = width, depth
        super().__init__({
            "w_data": In(width), "w_en": In(1), "w_rdy": Out(1), "w_level": Out(range(depth + 1)),
            "r_data": Out(width), "r_en": In(1), "r_rdy": Out(1), "r_level": Out(range(depth + 1)),
            "level": Out(range(depth + 1)),
        })
        self._fill = Signal(max(1, depth - 1), name="fill")  # see elaborate

    def at_most(self, k: int):
        """`level <= k` from registers (the fill thermometer and r_rdy), with no adder or
        compare: for a producer that throttles on the queue's room."""
        def inner_at_most(j):
            return 1 if j >= self.depth - 1 else 0 if j < 0 else ~self._fill[j]
        if k >= self.depth:
            return Const(1)
        return Mux(self.r_rdy, inner_at_most(k - 1), inner_at_most(k))

    def elaborate(self, platform) -> Module:
        m = Module()
        if self.depth == 1:     # one register, as SyncFIFOBuffered: full and empty alternate
            m.d.comb += [self.w_rdy.eq(~self.r_rdy), self.level.eq(self.r_rdy),
                         self.w_level.eq(self.r_rdy), self.r_level.eq(self.r_rdy)]
            with m.If(self.w_en & self.w_rdy):
                m.d.sync += [self.r_data.eq(self.w_data), self.r_rdy.eq(1)]
            with m.If(self.r_en & self.r_rdy):
                m.d.sync += self.r_rdy.eq(0)
            return m
        inner = self.depth - 1                      # entries behind the output register
        words = 1 << max(1, (inner - 1).bit_length())  # storage, a power of two >= inner
        fill = self._fill                           # thermometer: fill[i] = more than i queued
        produce, consume = Signal(range(words)), Signal(range(words))

        push = self.w_en & self.w_rdy
        pop = fill[0] & (~self.r_rdy | self.r_en)   # the head moves into the output register
        up, down = push & ~pop, pop & ~push
        m.d.comb += self.w_rdy.eq(~fill[-1])
        m.d.sync += fill.eq(thermometer_step(fill, up, down))

        m.submodules.storage = storage = Memory(shape=self.width, depth=words, init=[])
        w_port = storage.write_port()
        r_port = storage.read_port(domain="sync")   # its data register is the output register
        m.d.comb += [w_port.addr.eq(produce), w_port.data.eq(self.w_data), w_port.en.eq(push),
                     r_port.addr.eq(consume), r_port.en.eq(pop), self.r_data.eq(r_port.data)]
        with m.If(push):
            m.d.sync += produce.eq(produce + 1)
        with m.If(pop):
            m.d.sync += consume.eq(consume + 1)
        with m.If(pop):
            m.d.sync += self.r_rdy.eq(1)
        with m.Elif(self.r_en):
            m.d.sync += self.r_rdy.eq(0)

        # The count, kept apart from the paths above: every entry, the output register's too.
        taken = self.r_rdy & self.r_en
        with m.If(push & ~taken):
            m.d.sync += self.level.eq(self.level + 1)
        with m.Elif(taken & ~push):
            m.d.sync += self.level.eq(self.level - 1)
        m.d.comb += [self.w_level.eq(self.level), self.r_level.eq(self.level)]
        return m
