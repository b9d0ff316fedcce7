"""RowLoader against a Python model: rows of beats into their slots (read back at slot start +
skip + offset, as the window issuer reads them), and a dilation row's first byte per pixel."""

from __future__ import annotations

import numpy as np
from amaranth.sim import Simulator

from hwconv.rtl.row_loader import RowLoader, n_slots
from hwconv.spec import EngineConfig

CFG = EngineConfig(pe_in=4, pe_out=4, axi_data_width=64, max_width=32, line_buffer_bytes=4096, max_dilation=3)


def test_rows_land_in_their_slots_and_the_dilation_row_in_its_buffer():
    rng = np.random.default_rng(0)
    bb, lw = CFG.bus_bytes, CFG.line_word_bytes
    slot_words, ps1, width = 6, 3, 10
    rows = []  # (slot, skip, bytes of the enclosing beats)
    for slot in rng.permutation(n_slots(CFG))[:5]:
        nbeats = int(rng.integers(1, slot_words * lw // bb + 1))
        rows.append((int(slot), int(rng.integers(0, bb)), rng.integers(0, 256, nbeats * bb).tolist()))
    dil_row = rng.integers(0, 256, width * ps1).tolist()
    dut = RowLoader(CFG)
    gap = rng.random(10_000) < 0.3
    got_rows, got_dil = [], []

    async def bench(ctx):
        ctx.set(dut.geo.slot_words, slot_words)
        ctx.set(dut.desc.in1.pixel_stride, ps1)
        await ctx.tick()
        await ctx.tick()
        t = 0
        for slot, skip, data in rows + [("dil", 0, dil_row)]:
            dil = slot == "dil"
            ctx.set(dut.start, 1)
            ctx.set(dut.slot, 0 if dil else slot)
            ctx.set(dut.skip, skip)
            ctx.set(dut.dilation, int(dil))
            await ctx.tick()
            ctx.set(dut.start, 0)
            units = [data[i:i + bb] for i in range(0, len(data), bb)] if not dil else [[v] for v in data]
            port = dut.bytes if dil else dut.beats
            i = 0
            while i < len(units):
                valid = not gap[t]
                ctx.set(port.valid, int(valid))
                if dil:
                    ctx.set(port.p.byte, units[i][0])
                else:
                    ctx.set(port.p.data, sum(v << (8 * j) for j, v in enumerate(units[i])))
                ctx.set(port.p.last, int(i == len(units) - 1))
                took = valid and ctx.get(port.ready)
                await ctx.tick()
                i += took
                t += 1
            ctx.set(port.valid, 0)
        # read back: every row from its first byte on, P lanes at a time, as the issuer reads:
        # a read pipeline of two stages moving on r_en (idle cycles between), each read's data
        # on r_data after the next read
        reads = []  # (row, lanes from)
        for k, (slot, skip, data) in enumerate(rows):
            start = ctx.get(dut.slot_base[slot]) + ctx.get(dut.skips[slot])
            assert ctx.get(dut.slot_base[slot]) == slot * slot_words * lw
            reads += [(k, start + off) for off in range(0, len(data) - skip, 4)]
            got_rows.append([])
        # Each read goes to the next of the read ports in turn, the others reading elsewhere.
        pending = []
        n_ports, a_bits = len(dut.r_addr), len(dut.r_addr[0])
        for i, (k, addr) in enumerate(reads + [(None, 0), (None, 0)]):
            while gap[t]:  # the data must hold while r_en is low
                ctx.set(dut.r_en, 0)
                for q in range(n_ports):
                    ctx.set(dut.r_addr[q], int(rng.integers(0, 1 << a_bits)))
                await ctx.tick()
                t += 1
            port = i % n_ports
            for q in range(n_ports):
                ctx.set(dut.r_addr[q], addr if q == port else int(rng.integers(0, 1 << a_bits)))
            ctx.set(dut.r_en, 1)
            if len(pending) == 2:
                row, q = pending.pop(0)
                word = ctx.get(dut.r_data[q])
                got_rows[row] += [(word >> (8 * j)) & 0xFF for j in range(4)]
            pending.append((k, port))
            await ctx.tick()
            t += 1
        ctx.set(dut.r_en, 0)
        for k, (_, skip, data) in enumerate(rows):
            got_rows[k] = got_rows[k][:len(data) - skip]
        for x in range(width):
            ctx.set(dut.dil_addr, x)
            got_dil.append(ctx.get(dut.dil_data))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert got_rows == [data[skip:] for _, skip, data in rows]
    assert got_dil == dil_row[::ps1]
