"""SplitBuffer against a list of lanes: random runs written at any offset, windows read back."""

from __future__ import annotations

import random

import pytest
from amaranth.sim import Simulator

from hwconv.rtl.split_buffer import SplitBuffer


@pytest.mark.parametrize("lanes,lane_bits,depth,write_register,read_register", [
    (4, 8, 16, False, False), (16, 9, 8, False, False), (8, 1, 6, False, False), (4, 8, 16, True, False),
    (16, 9, 8, True, False), (4, 8, 16, False, True), (16, 9, 8, True, True)])
def test_runs_and_windows_match_a_flat_model(lanes, lane_bits, depth, write_register, read_register):
    dut = SplitBuffer(lanes, lane_bits, depth, write_register=write_register, read_register=read_register)
    rng = random.Random(lanes * depth)
    size = lanes * depth
    model = [0] * size
    mismatches = []

    async def bench(ctx):
        for step in range(300):
            addr = rng.randrange(size - lanes + 1)
            if rng.random() < 0.5:
                vals = [rng.randrange(1 << lane_bits) for _ in range(lanes)]
                mask = rng.randrange(1 << lanes)
                ctx.set(dut.w_addr, addr)
                ctx.set(dut.w_data, sum(v << (i * lane_bits) for i, v in enumerate(vals)))
                ctx.set(dut.w_mask, mask)
                ctx.set(dut.w_en, 1)
                await ctx.tick()
                ctx.set(dut.w_en, 0)
                if write_register:  # the write lands a cycle later
                    await ctx.tick()
                for i in range(lanes):
                    if mask >> i & 1:
                        model[addr + i] = vals[i]
            else:
                ctx.set(dut.r_addr, addr)
                ctx.set(dut.r_en, 1)
                await ctx.tick()
                ctx.set(dut.r_en, 0)
                ctx.set(dut.r_addr, rng.randrange(size))  # the data must hold while r_en is low
                await ctx.tick()
                if read_register:  # a two-stage pipeline moving on r_en: the next read pushes it out
                    for _ in range(rng.randrange(3)):
                        await ctx.tick()
                    ctx.set(dut.r_addr, rng.randrange(size - lanes + 1))
                    ctx.set(dut.r_en, 1)
                    await ctx.tick()
                    ctx.set(dut.r_en, 0)
                    ctx.set(dut.r_addr, rng.randrange(size))
                    await ctx.tick().repeat(1 + rng.randrange(2))
                got = ctx.get(dut.r_data)
                want = [model[addr + i] for i in range(lanes)]
                lanes_got = [(got >> (i * lane_bits)) & ((1 << lane_bits) - 1) for i in range(lanes)]
                if lanes_got != want:
                    mismatches.append((step, addr, lanes_got, want))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert not mismatches, mismatches[:3]
