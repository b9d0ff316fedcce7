"""ParamLoader against a Python model of the bank layout: records and weights (4- and 8-bit,
CONV and depthwise, channel counts that are not multiples of P) streamed in with random gaps,
then every weight word read back and every block's records looked up (identity for MAXPOOL)."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from amaranth.sim import Simulator

from hwconv.rtl.param_loader import ParamLoader
from hwconv.spec import EngineConfig
from hwconv.spec.params import pack_weights

P = 4
CFG = EngineConfig(pe_in=P, pe_out=P, axi_data_width=64, max_channels=64, weight_buffer_bytes=4096)


def bank_words(w: np.ndarray, conv: bool) -> dict[tuple[int, int], list[int]]:
    """{(bank, address): P weights} as the loader lays them out (the model)."""
    cout, taps, cin = w.shape
    cbw = -(-cin // P) if conv else 1
    out = {}
    for o in range(cout):
        for t in range(taps):
            for cb in range(cbw):
                lanes = [int(w[o, t, cb * P + j]) if cb * P + j < cin else 0 for j in range(P)]
                out[(o % P, ((o // P) * taps + t) * cbw + cb)] = lanes
    return out


@pytest.mark.parametrize("conv,bits,cin,cout,kernel,seed", [
    (True, 4, 6, 7, 3, 0), (True, 8, 5, 4, 1, 1), (True, 4, 3, 5, 1, 2), (False, 4, 1, 6, 3, 3), (False, 8, 1, 5, 3, 4),
])
def test_records_and_weights_land_in_their_banks(conv, bits, cin, cout, kernel, seed):
    rng = np.random.default_rng(seed)
    taps = kernel * kernel
    lo = -(1 << (bits - 1))
    w = rng.integers(lo, -lo, size=(cout, taps, cin))
    wbytes = pack_weights(w, bits)
    recs = [(int(rng.integers(-1000, 1000)), int(rng.integers(1, 1 << 24)), int(rng.integers(0, 64)))
            for _ in range(cout)]
    rbytes = b"".join(struct.pack("<iI", b, m | s << 24) for b, m, s in recs)
    want_words = bank_words(w, conv)
    dut = ParamLoader(CFG)
    gap = rng.random(100_000) < 0.3
    got_words, got_recs = {}, []

    async def bench(ctx):
        geo, desc = dut.geo, dut.desc
        ctx.set(geo.conv, int(conv))
        ctx.set(geo.depthwise, int(not conv))
        ctx.set(geo.taps, taps)
        ctx.set(geo.cbi_n, -(-cin // P) if conv else 1)
        ctx.set(desc.weight_bits, bits)
        ctx.set(desc.out.channels, cout)
        ctx.set(desc.in0.channels, cin if conv else cout)
        ctx.set(dut.new_layer, 1)
        await ctx.tick()
        ctx.set(dut.new_layer, 0)
        t = 0
        for kind, data in (("records", rbytes), ("weights", wbytes)):
            ctx.set(getattr(dut, kind), 1)
            i = 0
            while i < len(data):
                valid = not gap[t]
                ctx.set(dut.i.valid, int(valid))
                ctx.set(dut.i.p.byte, data[i])
                ctx.set(dut.i.p.last, int(i == len(data) - 1))
                took = valid and ctx.get(dut.i.ready)
                await ctx.tick()
                i += took
                t += 1
            ctx.set(dut.i.valid, 0)
            ctx.set(getattr(dut, kind), 0)
        for (b, a) in want_words:
            ctx.set(dut.w_addr, a)
            ctx.set(dut.w_en, 1)
            await ctx.tick()
            ctx.set(dut.w_en, 0)
            await ctx.tick()  # held while w_en is low
            word = ctx.get(dut.w_data) >> (8 * P * b)
            got_words[(b, a)] = [((word >> (8 * j)) & 0xFF) - (256 if (word >> (8 * j)) & 0x80 else 0)
                                 for j in range(P)]
        # lookup: each block with its records, then the same blocks as MAXPOOL (identity)
        for pool in (0, 1):
            ctx.set(geo.pool, pool)
            ctx.set(dut.lookup_o.ready, 1)
            for blk in range(-(-cout // P)):
                ctx.set(dut.lookup_i.valid, 1)
                ctx.set(dut.lookup_i.p.tag, blk)
                for b in range(P):
                    ctx.set(dut.lookup_i.p.acc[b], 100 * blk + b)
                await ctx.tick()
                ctx.set(dut.lookup_i.valid, 0)
                assert ctx.get(dut.lookup_o.valid)
                for b in range(P):
                    lane = dut.lookup_o.p[b]
                    got_recs.append((pool, blk * P + b, ctx.get(lane.acc),
                                     (ctx.get(lane.bias), ctx.get(lane.mult), ctx.get(lane.shift))))
                await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert got_words == want_words
    for pool, c, acc, rec in got_recs:
        assert acc == 100 * (c // P) + c % P
        if pool:
            assert rec == (0, 1, 0)
        elif c < cout:
            assert rec == recs[c]


@pytest.mark.parametrize("bit", [30, 31, None])
def test_a_record_with_reserved_bits_is_flagged_until_the_next_layer(bit):
    recs = [struct.pack("<iI", -5, 7 | 3 << 24) for _ in range(6)]
    if bit is not None:
        recs[4] = struct.pack("<iI", -5, 7 | 3 << 24 | 1 << bit)
    data = b"".join(recs)
    dut = ParamLoader(CFG)
    flags = []

    async def bench(ctx):
        ctx.set(dut.desc.out.channels, 6)
        ctx.set(dut.new_layer, 1)
        await ctx.tick()
        ctx.set(dut.new_layer, 0)
        ctx.set(dut.records, 1)
        for i, byte in enumerate(data):
            ctx.set(dut.i.valid, 1)
            ctx.set(dut.i.p.byte, byte)
            ctx.set(dut.i.p.last, int(i == len(data) - 1))
            await ctx.tick()
        ctx.set(dut.i.valid, 0)
        ctx.set(dut.records, 0)
        flags.append(ctx.get(dut.bad_record))
        ctx.set(dut.new_layer, 1)
        await ctx.tick()
        flags.append(ctx.get(dut.bad_record))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert flags == [int(bit is not None), 0]
