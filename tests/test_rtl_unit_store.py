"""Store against a Python model of where each output byte goes: one-run, two-way interleaved and
other grouped outputs, with and without a 2x upsample, channel counts that are not multiples of
P, under random input gaps. The model fills the row-buffer halves; so do the unit's writes."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from hwconv.rtl.store import Store, row_word_lanes
from hwconv.spec import EngineConfig

P = 4
CFG = EngineConfig(pe_in=P, pe_out=P, axi_data_width=64)


def model(blocks, channels, gc, gs, ps, wo, up, odd_row, align):
    halves = {}
    for x in range(wo):
        for c in range(channels):
            byte = blocks[x][c // P][c % P]
            grp = (c // gc) * gs + c % gc
            for u in range(4 if up else 1):
                half = (u >> 1) if up else odd_row
                pos = align[half if up else 0] + (x * 2 * ps + (u & 1) * ps if up else x * ps) + grp
                halves[(half, pos)] = byte
    return halves


@pytest.mark.parametrize("channels,gc,gs,up,seed", [
    (6, 6, 6, False, 0), (7, 7, 9, True, 1), (6, 1, 2, False, 2), (5, 1, 2, True, 3), (6, 2, 3, False, 4),
    (3, 1, 3, True, 5),
])
def test_store_places_every_byte_like_the_model(channels, gc, gs, up, seed):
    rng = np.random.default_rng(seed)
    reach = ((channels - 1) // gc) * gs + (channels - 1) % gc + 1
    ps = reach + int(rng.integers(0, 3))
    wo, ob_n = 5, -(-channels // P)
    odd_row, align = int(rng.integers(2)), [int(rng.integers(0, CFG.bus_bytes)) for _ in range(2)]
    blocks = [[rng.integers(0, 256, P).tolist() for _ in range(ob_n)] for _ in range(wo)]
    want = model(blocks, channels, gc, gs, ps, wo, up, odd_row, align)
    dut = Store(CFG)
    got = {}
    rw = row_word_lanes(CFG)
    gap = rng.random(10_000) < 0.3

    async def bench(ctx):
        o = dut.desc.out
        for name, v in dict(channels=channels, group_channels=gc, group_stride=gs, pixel_stride=ps).items():
            ctx.set(getattr(o, name), v)
        ctx.set(dut.geo.upsample, int(up))
        ctx.set(dut.geo.ob_n, ob_n)
        ctx.set(dut.geo.wo, wo)
        ctx.set(dut.odd_row, odd_row)
        ctx.set(dut.align_a, align[0])
        ctx.set(dut.align_b, align[1])
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        queue = [b for x in range(wo) for b in blocks[x]]
        t = 0
        while True:
            assert t < 5000, "the store never finished the row"
            if ctx.get(dut.w_en):  # the last write may come with done
                addr, data, mask = ctx.get(dut.w_addr), ctx.get(dut.w_data), ctx.get(dut.w_mask)
                for i in range(rw):
                    if mask >> i & 1:
                        lane = data >> (9 * i) & 0x1FF
                        assert lane >> 8 == 1, "a written byte carries its strobe"
                        got[(ctx.get(dut.w_half), addr + i)] = lane & 0xFF
            if ctx.get(dut.done):
                break
            valid = bool(queue) and not gap[t]
            ctx.set(dut.i.valid, int(valid))
            if queue:
                ctx.set(dut.i.p, sum(v << (8 * j) for j, v in enumerate(queue[0])))
            if valid and ctx.get(dut.i.ready):
                queue.pop(0)
            await ctx.tick()
            t += 1
        assert not queue
        ctx.set(dut.i.valid, 0)
        for _ in range(4):  # done means placed: no write follows it
            await ctx.tick()
            assert not ctx.get(dut.w_en)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert got == want
