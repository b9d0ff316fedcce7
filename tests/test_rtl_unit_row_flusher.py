"""RowFlusher against a Python model: bytes stored (with strobes) into a row-buffer half come out
as one aligned write command and its beats, strobes on exactly the stored bytes, under random
write backpressure; the flush leaves the half's strobes clear for the next row; an upsampled
row sends both halves."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from hwconv.rtl.row_flusher import RowFlusher
from hwconv.rtl.store import row_word_lanes
from hwconv.spec import EngineConfig

CFG = EngineConfig(pe_in=4, pe_out=4, axi_data_width=64, row_buffer_bytes=2048)
BB = CFG.bus_bytes


@pytest.mark.parametrize("upsample,seed", [(False, 0), (True, 1)])
def test_flush_sends_what_was_stored_and_clears_it(upsample, seed):
    rng = np.random.default_rng(seed)
    row_addr = 0x1000 + int(rng.integers(0, BB))
    row_stride = 200 + int(rng.integers(0, BB))
    row_len = int(rng.integers(20, 60))
    odd = int(rng.integers(2))
    halves = [0, 1] if upsample else [odd]
    aligns = [row_addr % BB, (row_addr + row_stride) % BB]
    stored = {h: {} for h in halves}  # lane -> byte
    for i, h in enumerate(halves):
        for lane in range(aligns[i], aligns[i] + row_len):
            if rng.random() < 0.8:
                stored[h][lane] = int(rng.integers(0, 256))
    dut = RowFlusher(CFG)
    rw = row_word_lanes(CFG)
    stall = rng.random(10_000) < 0.3  # [:5000] beats, [5000:] commands
    cmds, beats = [], []

    async def bench(ctx):
        ctx.set(dut.clear, 1)
        await ctx.tick()
        ctx.set(dut.clear, 0)
        while not ctx.get(dut.idle):
            await ctx.tick()
        writes = [(h, lane, byte) for h in halves for lane, byte in stored[h].items()]
        for k, (h, lane, byte) in enumerate(writes):
            ctx.set(dut.s_en, 1)
            ctx.set(dut.s_half, h)
            ctx.set(dut.s_addr, lane)
            ctx.set(dut.s_data, byte | 0x100)
            ctx.set(dut.s_mask, 1)
            if k < len(writes) - 1:
                await ctx.tick()
        for rnd in range(2):  # the second flush finds every strobe cleared
            for name, v in dict(row_addr=row_addr, row_stride=row_stride, row_len=row_len,
                                upsample=int(upsample), odd_row=odd).items():
                ctx.set(getattr(dut, name), v)
            ctx.set(dut.start, 1)  # the first one in the cycle of the store's last write
            await ctx.tick()
            ctx.set(dut.start, 0)
            ctx.set(dut.s_en, 0)
            t = 0
            owed = []  # the DMA writer's model: beats still owed per accepted command, in order
            while not ctx.get(dut.done):
                assert t < 5000
                ctx.set(dut.cmd.ready, int(not stall[t + 5000]))
                ctx.set(dut.beats.ready, int(not stall[t]))
                ctx.set(dut.written, 0)
                if ctx.get(dut.cmd.valid) and ctx.get(dut.cmd.ready):
                    cmds.append((rnd, ctx.get(dut.cmd.p.addr), ctx.get(dut.cmd.p.length)))
                    owed.append(cmds[-1][2] // BB)
                if ctx.get(dut.beats.valid) and ctx.get(dut.beats.ready):
                    assert owed and owed[0] > 0, "a beat before its command"
                    beats.append((rnd, ctx.get(dut.beats.p.data), ctx.get(dut.beats.p.strb)))
                    owed[0] -= 1
                    if owed[0] == 0:
                        owed.pop(0)
                        ctx.set(dut.written, 1)  # the DMA's response once the command's beats are in
                await ctx.tick()
                t += 1
            assert not owed
            ctx.set(dut.written, 0)
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    want_cmds, want_beats = [], []
    for rnd in range(2):
        for i, h in enumerate(halves):
            a = row_addr + i * row_stride
            n = -(-(a % BB + row_len) // BB)
            want_cmds.append((rnd, a - a % BB, n * BB))
            for b in range(n):
                lanes = [stored[h].get(b * BB + j) if rnd == 0 else None for j in range(BB)]
                want_beats.append((rnd, sum((v or 0) << (8 * j) for j, v in enumerate(lanes)),
                                   sum(1 << j for j, v in enumerate(lanes) if v is not None)))
    assert cmds == want_cmds
    assert beats == want_beats
    assert rw >= BB
