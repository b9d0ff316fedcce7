"""ParamLoader against a Python model of the bank layout: records (bytes) and weights (raw bus
beats, the blob at a random byte of its first beat, other data around it) for random layers (4-
and 8-bit, CONV and depthwise (a kernel row per word), channel counts that are not multiples of P, odd cin with 4-bit
weights), with random gaps, P = 4, 8, 16 and 64- / 128-bit buses; then every weight word read
back and every block's records looked up (identity for MAXPOOL)."""

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
CFG8_64 = EngineConfig(pe_in=8, pe_out=8, axi_data_width=64, max_channels=64, weight_buffer_bytes=16384)
CFG16_128 = EngineConfig(pe_in=16, pe_out=16, axi_data_width=128, max_channels=64, weight_buffer_bytes=65536)
CFG16_64 = EngineConfig(pe_in=16, pe_out=16, axi_data_width=64, max_channels=64, weight_buffer_bytes=65536)


def bank_words(w: np.ndarray, conv: bool, P: int = P) -> dict[tuple[int, int], list[int]]:
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


def beats_of(blob: bytes, skip: int, bb: int, rng) -> list[int]:
    """The enclosing bus beats of a blob that starts `skip` bytes into its first beat, the
    bytes around it random (as DRAM holds other data there)."""
    n = -(-(skip + len(blob)) // bb) * bb
    raw = bytearray(rng.integers(0, 256, size=n, dtype=np.uint8).tobytes())
    raw[skip:skip + len(blob)] = blob
    return [int.from_bytes(raw[i:i + bb], "little") for i in range(0, n, bb)]


def run_layer(cfg, layers, seed, gaps=0.3, latency=None):
    """Layers one after another: records as bytes, weights as raw beats at a random skip (the
    beats with random gaps), then every weight word read back and each block's records looked up."""
    P, bb = cfg.pe_in, cfg.bus_bytes
    rng = np.random.default_rng(seed)
    dut = ParamLoader(cfg)
    results = []

    async def offer(ctx, port, items, payload):
        """Each item on stream `port` in turn, with random gaps; the cycles it took."""
        i = cycles = 0
        while i < len(items):
            valid = rng.random() >= gaps
            ctx.set(port.valid, int(valid))
            ctx.set(getattr(port.p, payload), items[i])
            ctx.set(port.p.last, int(i == len(items) - 1))
            took = valid and ctx.get(port.ready)
            await ctx.tick()
            i += took
            cycles += 1
        ctx.set(port.valid, 0)
        return cycles

    async def bench(ctx):
        geo, desc = dut.geo, dut.desc
        for conv, bits, cin, cout, kernel in layers:
            taps = kernel * kernel if conv else kernel  # depthwise: [channel][ky][kx], a row per word
            lo = -(1 << (bits - 1))
            w = rng.integers(lo, -lo, size=(cout, taps, cin if conv else kernel))
            wbytes = pack_weights(w, bits)
            skip = int(rng.integers(0, bb))
            beats = beats_of(wbytes, skip, bb, rng)
            recs = [(int(rng.integers(-1000, 1000)), int(rng.integers(1, 1 << 24)), int(rng.integers(0, 64)))
                    for _ in range(cout)]
            rbytes = b"".join(struct.pack("<iI", b, m | s << 24) for b, m, s in recs)
            ctx.set(geo.conv, int(conv))
            ctx.set(geo.depthwise, int(not conv))
            ctx.set(geo.pool, 0)
            ctx.set(geo.taps, taps)
            ctx.set(geo.cbi_n, -(-cin // P) if conv else 1)
            ctx.set(desc.weight_bits, bits)
            ctx.set(desc.kernel, kernel)
            ctx.set(desc.out.channels, cout)
            ctx.set(desc.in0.channels, cin if conv else cout)
            ctx.set(dut.new_layer, 1)
            await ctx.tick()
            ctx.set(dut.new_layer, 0)
            ctx.set(dut.records, 1)
            await offer(ctx, dut.i, rbytes, "byte")
            ctx.set(dut.records, 0)
            ctx.set(dut.w_start, 1)
            ctx.set(dut.w_skip, skip)
            await ctx.tick()
            ctx.set(dut.w_start, 0)
            for _ in range(int(rng.integers(0, 4)) if latency is None else latency):  # the DMA's latency
                await ctx.tick()
            cycles = await offer(ctx, dut.beats, beats, "data")
            while ctx.get(dut.w_busy):
                await ctx.tick()
                cycles += 1
                assert cycles < 10 * len(beats) + 4 * len(bank_words(w, conv, P)) + 50
            got_words, got_words2 = {}, {}
            keys = list(bank_words(w, conv, P))
            for i, (b, a) in enumerate(keys):  # both read ports, each at its own word
                b2, a2 = keys[(i * 7 + 3) % len(keys)]
                ctx.set(dut.w_addr, a)
                ctx.set(dut.w_addr2, a2)
                ctx.set(dut.w_en, 1)
                await ctx.tick()
                ctx.set(dut.w_en, 0)
                await ctx.tick()  # held while w_en is low
                for got, bank, port in ((got_words, b, dut.w_data), (got_words2, b2, dut.w_data2)):
                    word = ctx.get(port) >> (8 * P * bank)
                    got[(bank, a if port is dut.w_data else a2)] = [
                        ((word >> (8 * j)) & 0xFF) - (256 if (word >> (8 * j)) & 0x80 else 0) for j in range(P)]
            want = bank_words(w, conv, P)
            assert all(want[k] == v for k, v in got_words2.items()), "the second read port"
            got_recs = []
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
            results.append((bank_words(w, conv, P), got_words, recs, got_recs, cycles))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    for want_words, got_words, recs, got_recs, _ in results:
        assert got_words == want_words
        for pool, c, acc, rec in got_recs:
            assert acc == 100 * (c // P) + c % P
            if pool:
                assert rec == (0, 1, 0)
            elif c < len(recs):
                assert rec == recs[c]
    return results


# (conv, bits, cin, cout, kernel): partial last in-blocks, odd cin with 4-bit weights (rows
# starting mid-byte), one in-channel, depthwise (a kernel row per word in lanes 0..), 8-bit.
LAYERS = [(True, 4, 6, 7, 3), (True, 8, 5, 4, 1), (True, 4, 3, 5, 1), (False, 4, 1, 6, 3), (False, 8, 1, 5, 3),
          (True, 4, 1, 3, 3), (True, 4, 17, 5, 1), (True, 8, 9, 6, 3)]


@pytest.mark.parametrize("cfg", [CFG, CFG8_64, CFG16_128, CFG16_64], ids=["P4_bus64", "P8_bus64", "P16_bus128",
                                                                      "P16_bus64"])
def test_records_and_weights_land_in_their_banks(cfg):
    P = cfg.pe_in
    rng = np.random.default_rng(P * 1000 + cfg.bus_bytes)
    layers = list(LAYERS)
    for _ in range(6):  # random layers around the block size
        conv = bool(rng.random() < 0.75)
        layers.append((conv, int(rng.choice([4, 8])), int(rng.integers(1, 3 * P + 2)) if conv else 1,
                       int(rng.integers(1, 2 * P + 2)), int(rng.choice([1, 3]))))
    rng.shuffle(layers)
    run_layer(cfg, layers, seed=P + cfg.bus_bytes)


@pytest.mark.parametrize("latency", [0, 1])
def test_small_blobs_whose_beats_come_right_after_the_start(latency):
    """One-beat and two-beat blobs (one chunk, a few), the first beat in the cycle the loader
    registers the start or the next."""
    layers = [(True, 4, 2, 1, 1), (True, 8, 3, 1, 1), (True, 4, 5, 2, 1), (False, 4, 1, 1, 3), (True, 8, 11, 1, 1),
              (True, 4, 1, 1, 1)]
    run_layer(CFG, layers, seed=latency, gaps=0.0, latency=latency)
    run_layer(CFG, layers, seed=latency + 2, gaps=0.5, latency=latency)


@pytest.mark.parametrize("bits", [4, 8])
def test_a_full_width_conv_takes_about_a_word_per_cycle(bits):
    """No gaps: a CONV layer with cin a multiple of P goes in at about one word per cycle."""
    cfg = CFG16_128
    P = cfg.pe_in
    (want, _, _, _, cycles), = run_layer(cfg, [(True, bits, 2 * P, 2 * P, 3)], seed=bits, gaps=0.0)
    assert cycles <= len(want) + 12


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
