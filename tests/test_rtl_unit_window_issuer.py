"""WindowIssuer against a Python model of a row's steps: for every (pixel, out block, tap, in
block) the line-buffer lane it reads (when the tap is inside the image), the weight word, the
flags and the tag, for CONV (stride 2, padding), DEFORM_DW (a dilation map past the clamp) and
ADD, under random MAC-array backpressure. The memories are modelled by the testbench: each read
returns its own address (the line buffer's after a second read, as its two-stage read does), so
every beat shows the addresses it was made from."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from hwconv.rtl.row_loader import n_slots
from hwconv.rtl.window_issuer import WindowIssuer
from hwconv.spec import EngineConfig
from hwconv.spec.isa import DEPTHWISE_ROW_TAPS as K

P = 4
CFG = EngineConfig(pe_in=P, pe_out=P, axi_data_width=64, max_width=32, max_dilation=3)
SLOT_BASE = [100 * s for s in range(n_slots(CFG))]
SKIPS = [(3 * s) % CFG.bus_bytes for s in range(n_slots(CFG))]


DEPTHWISE = ("deform", "deform_one_block", "dwconv")


def model(kind, oy, base_slot, rows, h, w, wo, cin, cout, ps0, ps1, stride, pad, k, dil):
    """The row's beats; a depthwise beat is a kernel row (`addr`/`inb` its column 0, `row`/
    `inb_row` the others); a packed CONV's beat a pair of out blocks (tag 2q, `word2` block
    2q + 1's weight word, `pair2` whether the pair has it)."""
    dw = kind in DEPTHWISE
    packed = kind == "packed"
    taps = 2 if kind == "add" else k if dw else k * k
    cbi = -(-cin // P) if kind in ("conv", "packed") else 1
    ob_n = -(-cout // P)
    beats = []
    for x in range(wo):
        for ob in range(0, ob_n, 2 if packed else 1):
            word = ob * taps * cbi
            for t in range(taps):
                ky, kx0 = (t, 0) if dw else divmod(t, k)
                for cb in range(cbi):
                    taps_read = []
                    for kx in range(kx0, kx0 + (K if dw else 1)):
                        if kind.startswith("deform"):
                            d = min(dil[x], CFG.max_dilation)
                            iy, ix = oy + (ky - 1) * d, x + (kx - 1) * d
                            slot = (base_slot + (ky - 1) * d) % rows
                        elif kind == "add":
                            iy, ix, slot = oy, x, t
                        else:
                            iy, ix = oy * stride - pad + ky, x * stride - pad + kx
                            slot = (base_slot + ky) % rows
                        inb = 0 <= iy < h and 0 <= ix < w
                        ps = ps1 if kind == "add" and t == 1 else ps0
                        lane = (cb if kind in ("conv", "packed") else ob) * P
                        taps_read.append((SLOT_BASE[slot] + SKIPS[slot] + ix * ps + lane if inb else None, int(inb)))
                    (addr, inb), rest = taps_read[0], taps_read[1:]
                    beats.append(dict(addr=addr, word=word, inb=inb, first=int(t == 0 and cb == 0),
                                      last=int(t == taps - 1 and cb == cbi - 1), second=t % 2, tag=ob,
                                      row=[a for a, _ in rest], inb_row=[f for _, f in rest],
                                      word2=word + taps * cbi, pair2=int(packed and ob + 1 < ob_n)))
                    word += 1
    return beats


CASES = {
    "conv": dict(oy=2, base_slot=1, rows=3, h=7, w=9, wo=5, cin=6, cout=5, ps0=6, ps1=0, stride=2, pad=1, k=3),
    "deform": dict(oy=4, base_slot=4, rows=7, h=9, w=8, wo=8, cin=5, cout=5, ps0=5, ps1=1, stride=1, pad=1, k=3),
    # one block: a pixel's three steps wait for the next pixel's dilation
    "deform_one_block": dict(oy=3, base_slot=2, rows=7, h=9, w=8, wo=8, cin=3, cout=3, ps0=3, ps1=1, stride=1,
                             pad=1, k=3),
    "packed": dict(oy=2, base_slot=1, rows=3, h=7, w=9, wo=4, cin=6, cout=19, ps0=6, ps1=0, stride=1, pad=1, k=3),
    "dwconv": dict(oy=3, base_slot=1, rows=3, h=8, w=9, wo=5, cin=6, cout=6, ps0=6, ps1=0, stride=2, pad=1, k=3),
    "add": dict(oy=3, base_slot=0, rows=2, h=5, w=6, wo=6, cin=6, cout=6, ps0=8, ps1=6, stride=1, pad=0, k=1),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_issuer_steps_match_the_model_under_backpressure(kind):
    c = dict(CASES[kind])
    rng = np.random.default_rng(len(kind))
    dil = rng.integers(0, CFG.max_dilation + 3, c["wo"]).tolist()
    dil[0] = 2  # the row's first pixel needs its own dilation, not the previous row's
    want = model(kind, dil=dil, **c)
    dut = WindowIssuer(CFG)
    got = []
    line_read = [0] * K  # the line buffer's first read stage, per read port
    stall = rng.random(20_000) < 0.3

    async def bench(ctx):
        d, g = dut.desc, dut.geo
        for name, v in dict(kernel=c["k"], stride=c["stride"], pad=c["pad"]).items():
            ctx.set(getattr(d, name), v)
        for name, v in dict(height=c["h"], width=c["w"], channels=c["cin"], pixel_stride=c["ps0"]).items():
            ctx.set(getattr(d.in0, name), v)
        ctx.set(d.in1.pixel_stride, c["ps1"])
        ctx.set(d.out.channels, c["cout"])
        ctx.set(getattr(g, {"add": "add", "conv": "conv", "packed": "conv"}.get(kind, "depthwise")), 1)
        ob_n = -(-c["cout"] // P)
        ctx.set(g.packed, int(kind == "packed"))
        ctx.set(g.ob_steps, -(-ob_n // 2) if kind == "packed" else ob_n)
        ctx.set(g.block_words, c["k"] ** 2 * -(-c["cin"] // P))
        if kind.startswith("deform"):
            ctx.set(g.deform, 1)
        ctx.set(g.rows, c["rows"])
        ctx.set(g.taps, 2 if kind == "add" else c["k"] if kind in DEPTHWISE else c["k"] ** 2)
        ctx.set(g.cbi_n, -(-c["cin"] // P) if kind in ("conv", "packed") else 1)
        ctx.set(g.ob_n, -(-c["cout"] // P))
        ctx.set(g.wo, c["wo"])
        for s in range(n_slots(CFG)):
            ctx.set(dut.slot_base[s], SLOT_BASE[s])
            ctx.set(dut.skips[s], SKIPS[s])
        ctx.set(dut.oy, c["oy"])
        ctx.set(dut.base_slot, c["base_slot"])
        t = 0
        await ctx.tick().repeat(2)  # the per-layer constants are registered from desc and geo
        ctx.set(dut.start, 1)
        ctx.set(dut.dil_data, dil[ctx.get(dut.dil_addr)])
        await ctx.tick()
        ctx.set(dut.start, 0)
        while len(got) < len(want):
            assert t < 20_000, "the issuer stopped"
            ctx.set(dut.o.ready, int(not stall[t]))
            a = ctx.get(dut.dil_addr)
            ctx.set(dut.dil_data, dil[a] if a < len(dil) else 0)
            r_en, w_addr, w_addr2 = ctx.get(dut.r_en), ctx.get(dut.w_addr), ctx.get(dut.w_addr2)
            r_addr = [ctx.get(dut.r_addr[j]) for j in range(K)]
            if ctx.get(dut.o.valid) and ctx.get(dut.o.ready):
                p = dut.o.p
                x_row, inb_row = ctx.get(p.x_row), ctx.get(p.in_bounds_row)
                inbr = [(inb_row >> j) & 1 for j in range(K - 1)]
                got.append(dict(addr=ctx.get(p.x) if ctx.get(p.in_bounds) else None, word=ctx.get(p.w),
                                inb=ctx.get(p.in_bounds), first=ctx.get(p.first), last=ctx.get(p.last),
                                second=ctx.get(p.second), tag=ctx.get(p.tag), word2=ctx.get(p.w2),
                                pair2=ctx.get(p.pair2),
                                row=[(x_row >> (8 * P * j)) & ((1 << 8 * P) - 1) if inbr[j] else None
                                     for j in range(K - 1)], inb_row=inbr))
            await ctx.tick()
            if r_en:  # the memories: a read returns its own address, held while not enabled; the
                # line buffer's read is two stages moving on r_en, the weight banks' one
                for j in range(K):
                    ctx.set(dut.r_data[j], line_read[j])
                line_read[:] = r_addr
                ctx.set(dut.w_data, w_addr)
                ctx.set(dut.w_data2, w_addr2)
            t += 1
        assert ctx.get(dut.done)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    if kind != "add":  # only ADD reads `second` (its in1 tap)
        for b in got + want:
            b.pop("second")
    if kind != "packed":  # only a packed CONV reads the second block's weights
        for b in got + want:
            b.pop("word2")
    if kind not in DEPTHWISE:  # only the depthwise ops read a kernel row
        for b in got + want:
            b.pop("row"), b.pop("inb_row")
    assert got == want
    assert sum(b["inb"] for b in want) > len(want) // 2  # most taps read the line buffer
