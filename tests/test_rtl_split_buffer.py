"""SplitBuffer against a list of lanes: random runs written at any offset, windows read back."""

from __future__ import annotations

import random

import pytest
from amaranth.sim import Simulator

from hwconv.rtl.split_buffer import SplitBuffer


@pytest.mark.parametrize("lanes,lane_bits,depth,write_register,read_register,reads", [
    (4, 8, 16, False, False, 1), (16, 9, 8, False, False, 1), (8, 1, 6, False, False, 1),
    (4, 8, 16, True, False, 1), (16, 9, 8, True, False, 1), (4, 8, 16, False, True, 1),
    (16, 9, 8, True, True, 1), (4, 8, 16, False, True, 3), (16, 8, 8, False, False, 3)])
def test_runs_and_windows_match_a_flat_model(lanes, lane_bits, depth, write_register, read_register, reads):
    """Every read port reads its own window in the same cycle (`reads` ports)."""
    dut = SplitBuffer(lanes, lane_bits, depth, write_register=write_register, read_register=read_register,
                      reads=reads)
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
                addrs = [addr] + [rng.randrange(size - lanes + 1) for _ in range(reads - 1)]

                def set_addrs(values):
                    for k, v in enumerate(values):
                        ctx.set(dut.r_addr[k], v)
                set_addrs(addrs)
                ctx.set(dut.r_en, 1)
                await ctx.tick()
                ctx.set(dut.r_en, 0)
                set_addrs(rng.randrange(size) for _ in range(reads))  # the data must hold while r_en is low
                await ctx.tick()
                if read_register:  # a two-stage pipeline moving on r_en: the next read pushes it out
                    for _ in range(rng.randrange(3)):
                        await ctx.tick()
                    set_addrs(rng.randrange(size - lanes + 1) for _ in range(reads))
                    ctx.set(dut.r_en, 1)
                    await ctx.tick()
                    ctx.set(dut.r_en, 0)
                    set_addrs(rng.randrange(size) for _ in range(reads))
                    await ctx.tick().repeat(1 + rng.randrange(2))
                for k, a in enumerate(addrs):
                    got = ctx.get(dut.r_data[k])
                    want = [model[a + i] for i in range(lanes)]
                    lanes_got = [(got >> (i * lane_bits)) & ((1 << lane_bits) - 1) for i in range(lanes)]
                    if lanes_got != want:
                        mismatches.append((step, k, a, lanes_got, want))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert not mismatches, mismatches[:3]
