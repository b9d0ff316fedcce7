"""DescriptorChecker against its Python model: the error code of `spec.validate.check_descriptor`
and, for a good descriptor, the geometry record every engine unit reads (validate's own sizing
functions), on real layers of every op and on random mutations of them."""

from __future__ import annotations

import numpy as np
from amaranth.sim import Simulator

from hwconv.compiler import ProgramBuilder
from hwconv.rtl.checker import DescriptorChecker
from hwconv.spec import EngineConfig, ErrorCode, SpecError
from hwconv.spec.isa import DESCRIPTOR_FIELD_OFFSETS, WEIGHTED_OPS, Flag, LayerDescriptor, Opcode
from hwconv.spec.params import packed_weight_bytes
from hwconv.spec.validate import (blocks, check_descriptor, packs_out_blocks, prefetches_rows, line_buffer_rows, line_slot_words, row_bytes,
                                  weight_count)

CFG = EngineConfig(pe_in=4, pe_out=4, axi_data_width=64, max_width=32, max_channels=64, max_layers=16,
                   line_buffer_bytes=4096, weight_buffer_bytes=4096, row_buffer_bytes=2048, max_dilation=3)
ARENA, PARAMS = 1 << 16, 1 << 12


def _layers() -> list[LayerDescriptor]:
    rng = np.random.default_rng(0)
    b = ProgramBuilder(CFG)
    w = lambda *s: rng.integers(-8, 8, size=s)  # noqa: E731
    rq = lambda c: dict(bias=np.zeros(c, int), mult=np.ones(c, int), shift=np.full(c, 4))  # noqa: E731
    x = b.input("x", 8, 8, 6)
    dmap = b.input("d", 8, 8, 1)
    y = b.conv("c", x, w(5, 3, 3, 6), stride=2, pad=1, **rq(5))
    b.output("dw", b.dwconv("dw", x, w(6, 3, 3), **rq(6)))
    b.output("df", b.deform("df", x, dmap, w(6, 3, 3), **rq(6)))
    b.output("mp", b.maxpool("mp", x, kernel=3, stride=2, pad=1))
    b.output("ad", b.add("ad", x, x, mult_a=3, mult_b=-2, **rq(6)))
    b.output("up", b.copy("cp", y, upsample=True))
    shuf = b.buffer("shuf", 8, 8, 12, signed=False)
    b.conv("s", x, w(6, 1, 1, 6), mult=1, shift=3, out=b.view(shuf, 1, 6, group_channels=1, group_stride=2))
    b.output("shuf", shuf)
    return list(b.build().layers)


def _mutations(layers, rng, n):
    out = []
    fields = [f for f in DESCRIPTOR_FIELD_OFFSETS if f not in ("opcode", "flags")]
    for _ in range(n):
        d = layers[rng.integers(len(layers))]
        raw = bytearray(d.pack())
        off, size = DESCRIPTOR_FIELD_OFFSETS[fields[rng.integers(len(fields))]][:2]
        i = off + int(rng.integers(size))
        raw[i] = int(rng.choice([0, 1, 2, 3, 0xFF, raw[i] + 1 & 0xFF, raw[i] - 1 & 0xFF]))
        try:
            out.append(LayerDescriptor.unpack(bytes(raw)))
        except SpecError:
            continue
    return out


def _want_geometry(d: LayerDescriptor) -> dict:
    op = d.opcode
    ho, wo = d.compute_hw
    return dict(
        conv=op == Opcode.CONV, depthwise=op in (Opcode.DWCONV, Opcode.DEFORM_DW), deform=op == Opcode.DEFORM_DW,
        pool=op == Opcode.MAXPOOL, add=op == Opcode.ADD, copy=op == Opcode.COPY, upsample=d.upsample,
        in0_signed=bool(d.flags & Flag.IN0_SIGNED), in1_signed=bool(d.flags & Flag.IN1_SIGNED),
        out_signed=bool(d.flags & Flag.OUT_SIGNED),
        taps=2 if op == Opcode.ADD else 1 if op == Opcode.COPY else
        d.kernel if op in (Opcode.DWCONV, Opcode.DEFORM_DW) else d.kernel ** 2,
        rows=line_buffer_rows(d, CFG), cb_in=blocks(d.in0.channels, CFG.pe_in), ob_n=blocks(d.out.channels, CFG.pe_out),
        cbi_n=blocks(d.in0.channels, CFG.pe_in) if op == Opcode.CONV else 1, ho=ho, wo=wo,
        packed=packs_out_blocks(d), prefetch=prefetches_rows(d, CFG),
        ob_steps=-(-blocks(d.out.channels, CFG.pe_out) // 2) if packs_out_blocks(d) else blocks(d.out.channels, CFG.pe_out),
        block_words=d.kernel ** 2 * blocks(d.in0.channels, CFG.pe_in),
        row_len0=row_bytes(d.in0), row_len1=row_bytes(d.in1) if op in (Opcode.ADD, Opcode.DEFORM_DW) else None,
        slot_words=line_slot_words(d, CFG), out_reach=d.out.reach, out_row_len=row_bytes(d.out),
        in0_row_stride=d.in0.width * d.in0.pixel_stride, out_row_stride=d.out.width * d.out.pixel_stride,
        in1_row_stride=d.in1.width * d.in1.pixel_stride if op in (Opcode.ADD, Opcode.DEFORM_DW) else None,
        weight_bytes=packed_weight_bytes(weight_count(d), d.weight_bits) if op in WEIGHTED_OPS else None)


def test_checker_matches_validate_on_every_op_and_random_mutations():
    layers = _layers()
    rng = np.random.default_rng(3)
    cases = layers + _mutations(layers, rng, 60)
    dut = DescriptorChecker(CFG)
    got = []

    async def bench(ctx):
        ctx.set(dut.arena_size, ARENA)
        ctx.set(dut.params_size, PARAMS)
        for d in cases:
            ctx.set(dut.desc.as_value(), int.from_bytes(d.pack(), "little"))
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            ctx.set(dut.desc.as_value(), 0)    # the checker judges its own copy from `start`
            for _ in range(200):
                await ctx.tick()
                if ctx.get(dut.done):
                    break
            else:
                raise AssertionError("checker never done")
            geo = {f: ctx.get(getattr(dut.geo, f)) for f in _want_geometry(d)}
            assert ctx.get(dut.bad) == (ctx.get(dut.code) != ErrorCode.NONE)
            got.append((ErrorCode(ctx.get(dut.code)), geo))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    n_good = 0
    for d, (code, geo) in zip(cases, got):
        want, why = check_descriptor(d, CFG, arena_size=ARENA, params_size=PARAMS)
        assert code == want, f"{d}: engine {code.name}, golden {want.name} ({why})"
        if want == ErrorCode.NONE:
            n_good += 1
            for f, v in _want_geometry(d).items():
                if v is not None:
                    assert geo[f] == int(v), f"{d.opcode.name} {f}: {geo[f]} != {int(v)}"
    assert n_good >= len(layers)
    assert len({c for c, _ in got}) >= 3  # the mutations reach several codes
