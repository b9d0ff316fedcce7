"""Store against a Python model of where each output byte goes: one-run, two-way interleaved and
other grouped outputs, with and without a 2x upsample, channel counts that are not multiples of
P, under random input gaps, two rows in a row. The model fills the row-buffer halves; so do the
unit's writes. Without gaps the store places a piece every cycle from its first write to its
last (its throughput), and the pieces are the model's count."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from hwconv.rtl.store import Store, row_word_lanes
from hwconv.spec import EngineConfig

P = 4
CFG = EngineConfig(pe_in=P, pe_out=P, axi_data_width=64)
CFG16 = EngineConfig(pe_in=16, pe_out=16, axi_data_width=128)


def model(blocks, channels, gc, gs, ps, wo, up, odd_row, align, p=P):
    halves = {}
    for x in range(wo):
        for c in range(channels):
            byte = blocks[x][c // p][c % p]
            grp = (c // gc) * gs + c % gc
            for u in range(4 if up else 1):
                half = (u >> 1) if up else odd_row
                pos = align[half if up else 0] + (x * 2 * ps + (u & 1) * ps if up else x * ps) + grp
                halves[(half, pos)] = byte
    return halves


def pieces(channels, gc, gs, wo, up, p):
    """Writes of a row: a block per copy (one run), half a block per copy (two-way), else a
    byte per copy for each channel and one per lane past the last channel."""
    copies, ob_n = (4 if up else 1), -(-channels // p)
    if gc == channels:
        per_pixel = ob_n * copies
    elif gc == 1 and gs == 2 and p > 1:
        per_pixel = ob_n * 2 * copies
    else:
        per_pixel = channels * copies + (ob_n * p - channels)
    return wo * per_pixel


def run_rows(cfg, channels, gc, gs, up, seed, gaps=True, rows=2):
    p = cfg.pe_out
    rng = np.random.default_rng(seed)
    reach = ((channels - 1) // gc) * gs + (channels - 1) % gc + 1
    ps = reach + int(rng.integers(0, 3))
    wo, ob_n = 5, -(-channels // p)
    dut = Store(cfg)
    rw = row_word_lanes(cfg)
    gap = rng.random(10_000) < (0.3 if gaps else 0.0)
    runs = []

    async def bench(ctx):
        o = dut.desc.out
        for name, v in dict(channels=channels, group_channels=gc, group_stride=gs, pixel_stride=ps).items():
            ctx.set(getattr(o, name), v)
        ctx.set(dut.geo.upsample, int(up))
        ctx.set(dut.geo.ob_n, ob_n)
        ctx.set(dut.geo.wo, wo)
        await ctx.tick().repeat(3)  # the layer's values settle before its first row (the contract)
        t = 0
        for _row in range(rows):
            odd_row, align = int(rng.integers(2)), [int(rng.integers(0, cfg.bus_bytes)) for _ in range(2)]
            blocks = [[rng.integers(0, 256, p).tolist() for _ in range(ob_n)] for _ in range(wo)]
            got, writes = {}, []
            ctx.set(dut.odd_row, odd_row)
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            ctx.set(dut.align_a, align[0])
            ctx.set(dut.align_b, align[1])
            queue = [b for x in range(wo) for b in blocks[x]]
            for t in range(t, t + 5000):
                if ctx.get(dut.w_en):  # the last write may come with done
                    writes.append(t)
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
            else:
                raise AssertionError("the store never finished the row")
            assert not queue
            ctx.set(dut.i.valid, 0)
            for _ in range(4):  # done means placed: no write follows it
                await ctx.tick()
                assert not ctx.get(dut.w_en)
            t += 5
            runs.append((got, model(blocks, channels, gc, gs, ps, wo, up, odd_row, align, p), writes))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return runs


CASES = [(6, 6, 6, False, 0), (7, 7, 9, True, 1), (6, 1, 2, False, 2), (5, 1, 2, True, 3),
         (6, 2, 3, False, 4), (3, 1, 3, True, 5)]
CASES16 = [(40, 40, 40, False, 6), (20, 20, 20, True, 7), (20, 1, 2, True, 8), (16, 4, 5, False, 9),
           (35, 5, 7, True, 10), (1, 1, 1, False, 11)]


@pytest.mark.parametrize("channels,gc,gs,up,seed", CASES)
def test_store_places_every_byte_like_the_model(channels, gc, gs, up, seed):
    for got, want, _ in run_rows(CFG, channels, gc, gs, up, seed):
        assert got == want


@pytest.mark.parametrize("channels,gc,gs,up,seed", CASES16)
def test_store_places_every_byte_like_the_model_sixteen_lanes(channels, gc, gs, up, seed):
    for got, want, _ in run_rows(CFG16, channels, gc, gs, up, seed):
        assert got == want


@pytest.mark.parametrize("cfg,case", [(CFG, c) for c in CASES] + [(CFG16, c) for c in CASES16])
def test_store_places_a_piece_every_cycle_when_fed_without_gaps(cfg, case):
    channels, gc, gs, up, seed = case
    for got, want, writes in run_rows(cfg, channels, gc, gs, up, seed, gaps=False):
        assert got == want
        assert len(writes) == pieces(channels, gc, gs, 5, up, cfg.pe_out)
        assert writes == list(range(writes[0], writes[0] + len(writes))), "a bubble between writes"
