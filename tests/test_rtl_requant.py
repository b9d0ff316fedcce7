"""Requantiser gateware vs the golden rounding rule, bit-exact, under random backpressure."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from hwconv.golden.ops import requantize
from hwconv.rtl.requant import Requantizer
from hwconv.spec import EngineConfig
from hwconv.spec.params import MULT_MAX, SHIFT_MAX


def _vectors(rng, n, lanes, acc_bits):
    lim = 1 << (acc_bits - 1)
    acc = rng.integers(-lim // 4, lim // 4, (n, lanes))
    bias = rng.integers(-lim // 4, lim // 4, (n, lanes))
    mult = rng.integers(1, MULT_MAX + 1, (n, lanes))
    shift = rng.integers(0, SHIFT_MAX + 1, (n, lanes))
    # Mix in small, realistic values and exact rounding ties.
    small = rng.random((n, lanes)) < 0.5
    acc[small] = rng.integers(-5000, 5000, small.sum())
    bias[small] = rng.integers(-100, 100, small.sum())
    shift[small] = rng.integers(8, 32, small.sum())
    tie = rng.random((n, lanes)) < 0.1
    mult[tie], shift[tie], bias[tie] = 1, 1, 0
    acc[tie] = rng.integers(-20, 20, tie.sum())  # odd values land exactly on .5
    return acc, bias, mult, shift


def _boundary_vectors(rng, n, lanes):
    """Results t = 2 * (acc + bias) * mult >> shift near +-2**e (e up to 34) for every shift:
    where the hardware's saturation to a few bits must tell a result that fits from one whose
    low bits only look as if it did."""
    shift = rng.integers(0, SHIFT_MAX + 1, (n, lanes))
    mult = rng.integers(1, MULT_MAX + 1, (n, lanes))
    small = rng.random((n, lanes)) < 0.3
    mult[small] = rng.integers(1, 300, small.sum())
    e = rng.integers(14, 35, (n, lanes))
    t = np.where(rng.random((n, lanes)) < 0.5, -1, 1) * ((1 << e) + rng.integers(-3, 4, (n, lanes)))
    want_prod = t.astype(np.float64) * np.exp2(shift.astype(np.float64) - 1)
    total = np.clip(np.round(want_prod / mult) + rng.integers(-2, 3, (n, lanes)), -(2 ** 31) + 512, 2 ** 31 - 512)
    bias = rng.integers(-256, 256, (n, lanes))
    acc = total.astype(np.int64) - bias
    return acc, bias, mult, shift


@pytest.mark.parametrize("clamp, seed, boundary", [
    ((-128, 127), 0, False), ((0, 255), 1, False), ((0, 7), 2, False),
    ((-128, 127), 3, True), ((0, 255), 4, True), ((-32768, 32767), 5, True), ((-5, 3), 6, True)])
def test_requantizer_matches_golden(clamp, seed, boundary):
    cfg = EngineConfig(pe_out=4)
    dut = Requantizer(cfg)
    rng = np.random.default_rng(seed)
    n = 300
    acc, bias, mult, shift = (_boundary_vectors(rng, n, dut.lanes) if boundary
                              else _vectors(rng, n, dut.lanes, cfg.acc_bits))
    want = requantize(acc, bias, mult, shift, *clamp)
    got = []
    stall_in = rng.random(4 * n) < 0.3
    stall_out = rng.random(4 * n) < 0.3

    async def bench(ctx):
        # One process drives both sides so every handshake is sampled after all inputs settle.
        ctx.set(dut.clamp_lo, clamp[0])
        ctx.set(dut.clamp_hi, clamp[1])
        i = t = 0
        while len(got) < n:
            ctx.set(dut.o.ready, 0 if stall_out[t % len(stall_out)] else 1)
            ctx.set(dut.i.valid, int(i < n and not stall_in[t % len(stall_in)]))
            if i < n:
                for lane in range(dut.lanes):
                    p = dut.i.payload[lane]
                    ctx.set(p.acc, int(acc[i, lane]))
                    ctx.set(p.bias, int(bias[i, lane]))
                    ctx.set(p.mult, int(mult[i, lane]))
                    ctx.set(p.shift, int(shift[i, lane]))
            took = ctx.get(dut.i.valid) and ctx.get(dut.i.ready)
            gave = ctx.get(dut.o.valid) and ctx.get(dut.o.ready)
            row = [ctx.get(dut.o.payload[lane]) for lane in range(dut.lanes)]
            await ctx.tick()
            i += took
            if gave:
                got.append(row)
            t += 1

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    got = np.array(got, dtype=np.int64)
    want_bytes = want & 0xFF  # the engine stores two's complement bytes
    assert np.array_equal(got, want_bytes), np.argwhere(got != want_bytes)[:5]
