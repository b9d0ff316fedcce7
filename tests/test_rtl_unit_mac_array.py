"""MacArray against a small Python model of what one accumulation computes, every mode (packed:
two out blocks per multiplier, the pair's blocks one after the other), under random input gaps
and output backpressure (bit-exact)."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from hwconv.rtl.mac_array import PIPELINE_DEPTH, MacArray
from hwconv.spec import EngineConfig
from hwconv.spec.isa import DEPTHWISE_ROW_TAPS as K

P = 4
CFG = EngineConfig(pe_in=P, pe_out=P)


def _operand(byte: int, signed: bool) -> int:
    return byte - 256 if signed and byte >= 128 else byte


def model(mode: dict, beats: list[dict]) -> list[tuple[list[int], int]]:
    """What the array computes: per accumulation (first .. last), each lane's sum or max; packed,
    the second block's sums too (tag + 1), when the pair has it."""
    out, acc, acc2 = [], [0] * P, [0] * P
    for bt in beats:
        sgn = mode["in1_signed"] if mode["add"] and bt["second"] else mode["in0_signed"]
        pad = -128 if mode["pool"] and sgn else 0
        x = [_operand(v, sgn) if bt["in_bounds"] else pad for v in bt["x"]]
        w = [[_operand(v, True) for v in row] for row in bt["w"]]
        w2 = [[_operand(v, True) for v in row] for row in bt["w2"]]
        for b in range(P):
            if mode["packed"]:
                acc2[b] = (0 if bt["first"] else acc2[b]) + sum(w2[b][j] * x[j] for j in range(P))
            if mode["conv"]:
                term = sum(w[b][j] * x[j] for j in range(P))
            elif mode["depthwise"]:  # a kernel row: tap t's byte of channel b times weight t
                taps = [x] + [[_operand(v, sgn) if bt["in_bounds_row"][t] else pad for v in row]
                              for t, row in enumerate(bt["x_row"])]
                term = sum(w[b][t] * taps[t][b] for t in range(K))
            elif mode["add"]:
                term = (mode["add_mult1"] if bt["second"] else mode["add_mult0"]) * x[b]
            else:
                term = x[b]
            if mode["pool"]:
                acc[b] = term if bt["first"] or term > acc[b] else acc[b]
            else:
                acc[b] = (0 if bt["first"] else acc[b]) + term
        if bt["last"]:
            out.append(([((a + 2**31) % 2**32) - 2**31 for a in acc], bt["tag"]))
            if mode["packed"] and bt["pair2"]:
                out.append(([((a + 2**31) % 2**32) - 2**31 for a in acc2], bt["tag"] + 1))
    return out


MODES = {
    "conv": dict(conv=1), "depthwise": dict(depthwise=1), "add": dict(add=1), "pool": dict(pool=1),
    "copy": dict(), "packed": dict(conv=1, packed=1),
}


@pytest.mark.parametrize("kind,seed", [(k, s) for s, k in enumerate(MODES)] + [("packed", 11), ("packed", 12)])
def test_mac_array_matches_model_under_backpressure(kind, seed):
    rng = np.random.default_rng(seed)
    mode = dict(conv=0, depthwise=0, add=0, pool=0, packed=0, in0_signed=int(rng.integers(2)),
                in1_signed=int(rng.integers(2)),
                add_mult0=int(rng.integers(-3000, 3000)), add_mult1=int(rng.integers(-3000, 3000)))
    mode.update(MODES[kind])
    beats = []
    for _ in range(60):
        n = int(rng.integers(1, 5))  # beats in one accumulation
        tag = int(rng.integers(0, 1000)) & ~1
        pair2 = int(rng.random() < 0.8)
        for i in range(n):
            w = rng.integers(0, 256, (P, P))
            if kind == "depthwise":  # a kernel row's weights in lanes 0..K-1, the others 0
                w[:, K:] = 0
            w2 = rng.integers(0, 256, (P, P))
            if kind == "packed":  # 4-bit weights, as the loader stores them: sign-extended bytes
                w, w2 = (rng.integers(-8, 8, (P, P)) & 0xFF for _ in range(2))
            beats.append(dict(x=rng.integers(0, 256, P).tolist(), w=w.tolist(), w2=w2.tolist(), pair2=pair2,
                              x_row=rng.integers(0, 256, (K - 1, P)).tolist(),
                              in_bounds=int(rng.random() > 0.2),
                              in_bounds_row=(rng.random(K - 1) > 0.2).astype(int).tolist(),
                              second=i % 2, first=int(i == 0), last=int(i == n - 1), tag=tag))
    want = model(mode, beats)
    dut = MacArray(CFG)
    got = []
    gap = rng.random(10 * len(beats)) < 0.3
    stall = rng.random(10 * len(beats)) < 0.3

    async def bench(ctx):
        for name, value in mode.items():
            ctx.set(getattr(dut.mode, name), value)
        await ctx.tick()            # mode is set at least a cycle before the layer's first beat
        i = t = 0
        while len(got) < len(want):
            assert t < 10 * len(beats), "the array stopped producing"
            ctx.set(dut.o.ready, 0 if stall[t] else 1)
            ctx.set(dut.i.valid, int(i < len(beats) and not gap[t]))
            if i < len(beats):
                bt = beats[i]
                ctx.set(dut.i.p.x, sum(v << (8 * j) for j, v in enumerate(bt["x"])))
                ctx.set(dut.i.p.w, sum(v << (8 * (b * P + j)) for b in range(P) for j, v in enumerate(bt["w"][b])))
                ctx.set(dut.i.p.w2, sum(v << (8 * (b * P + j)) for b in range(P) for j, v in enumerate(bt["w2"][b])))
                ctx.set(dut.i.p.x_row, sum(v << (8 * (P * t + j)) for t, row in enumerate(bt["x_row"])
                                           for j, v in enumerate(row)))
                ctx.set(dut.i.p.in_bounds_row, sum(f << t for t, f in enumerate(bt["in_bounds_row"])))
                for f in ("in_bounds", "second", "first", "last", "tag", "pair2"):
                    ctx.set(getattr(dut.i.p, f), bt[f])
            took = ctx.get(dut.i.valid) and ctx.get(dut.i.ready)
            if ctx.get(dut.o.valid) and ctx.get(dut.o.ready):
                got.append(([ctx.get(dut.o.p.acc[b]) for b in range(P)], ctx.get(dut.o.p.tag)))
            await ctx.tick()
            i += took
            t += 1

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert got == want


def test_a_block_per_cycle_when_every_beat_is_last_and_the_consumer_is_ready():
    """The skid buffer keeps the throughput: COPY-like beats (each one a whole accumulation) go
    in and come out one per cycle, PIPELINE_DEPTH cycles apart, and `i.ready` never drops."""
    n = 40
    dut = MacArray(CFG)
    accepted, produced = [], []

    async def bench(ctx):
        ctx.set(dut.o.ready, 1)
        for t in range(n + 3 * PIPELINE_DEPTH(P)):
            ctx.set(dut.i.valid, int(len(accepted) < n))
            ctx.set(dut.i.p.x, t & 0xFF)
            ctx.set(dut.i.p.in_bounds, 1)
            ctx.set(dut.i.p.first, 1)
            ctx.set(dut.i.p.last, 1)
            ctx.set(dut.i.p.tag, t)
            if ctx.get(dut.i.valid) and ctx.get(dut.i.ready):
                accepted.append(t)
            if ctx.get(dut.o.valid):
                produced.append((t, ctx.get(dut.o.p.tag)))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert accepted == list(range(n))
    assert produced == [(t + PIPELINE_DEPTH(P), t) for t in range(n)]


def test_pipeline_depth_counts_lane_operand_product_tree_accumulator_and_skid_stages():
    assert PIPELINE_DEPTH(4) == 1 + 4 + 2 + 1 + 1
    assert PIPELINE_DEPTH(16) == 1 + 4 + 4 + 1 + 1


@pytest.mark.slow
def test_every_multiplier_maps_to_a_dsp_with_its_operand_product_and_output_registers(tmp_path):
    """yosys packs A/B/M/P registers into DSP48E1 (xc7); its xilinx_dsp does not pack them into
    DSP48E2, so the register structure is checked on xc7 (the same RTL goes to both families)."""
    import json
    import subprocess

    from amaranth.back import verilog

    from hwconv.rtl.resources import SynthError, yosys_command

    try:
        argv, _ = yosys_command()
    except SynthError as exc:
        pytest.skip(str(exc))
    (tmp_path / "mac.v").write_text(verilog.convert(MacArray(CFG), name="mac"))
    script = ("read_verilog mac.v; rename -hide w:*; "
              "synth_xilinx -flatten -family xc7 -noiopad -noclkbuf -top mac; write_json net.json")
    subprocess.run([*argv, "-q", "-p", script], cwd=tmp_path, check=True, capture_output=True, timeout=900)
    cells = [c for mod in json.loads((tmp_path / "net.json").read_text())["modules"].values()
             for c in mod["cells"].values() if c["type"] == "DSP48E1"]
    assert len(cells) == P * P
    for c in cells:
        regs = {k: int(c["parameters"][k], 2) for k in ("AREG", "BREG", "MREG", "PREG")}
        assert all(regs.values()), regs


@pytest.mark.slow
def test_the_array_alone_meets_250_mhz_on_the_timing_estimate(tmp_path):
    """hwconv.rtl.timing on the xcup netlist: every multiplier's operands and product registered
    (fabric flip-flops at the DSP48E2 pins count: Vivado packs them) and an estimated Fmax of at
    least 250 MHz (the Ultra96-V2 clock) for the array on its own."""
    from amaranth.back import verilog

    from hwconv.rtl import timing
    from hwconv.rtl.resources import SynthError, synthesize

    src = tmp_path / "mac.v"
    src.write_text(verilog.convert(MacArray(CFG), name="mac"))
    try:
        synthesize(src, "mac", "xcup", netlist_path=tmp_path / "net.json", timeout_s=900)
    except SynthError as exc:
        pytest.skip(str(exc))
    report = timing.analyse(timing.load_netlist(tmp_path / "net.json", "mac"), "xcup", verilog=src.read_text())
    assert report.unregistered == []
    assert report.fmax_mhz >= 250, timing.format_report(report)


def test_the_engine_packing_splits_every_product_exactly():
    """The MAC array's packed operand and split, exhaustively: every pair of 4-bit weights times
    every activation, signed or unsigned (the operand as the array forms it, 17 bits; the split
    as the array registers it: lo = P[k-1:0] signed, hi = P[k+HI-1:k] + P[k-1], HI = k + 1)."""
    from hwconv.rtl.mac_array import PACK_SHIFT, W_BITS
    k = PACK_SHIFT
    w0, w1, a = np.meshgrid(np.arange(-8, 8), np.arange(-8, 8), np.arange(-128, 256), indexing="ij")
    operand = (w1 << k) + w0
    assert operand.min() >= -(1 << (W_BITS - 1)) and operand.max() < 1 << (W_BITS - 1)
    p = operand * a
    lo = ((p & ((1 << k) - 1)) ^ (1 << (k - 1))) - (1 << (k - 1))
    hi_bits = k + 1
    hi = (((p >> k) + ((p >> (k - 1)) & 1)) & ((1 << hi_bits) - 1))
    hi = (hi ^ (1 << (hi_bits - 1))) - (1 << (hi_bits - 1))
    assert np.array_equal(lo, w0 * a) and np.array_equal(hi, w1 * a)
