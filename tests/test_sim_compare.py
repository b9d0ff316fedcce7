"""The simulation helpers that need no simulator: DRAM layout and access checks, the random
per-op programs and corrupted images the RTL tests use, and the arena comparison that finds the
first mismatching layer."""

from __future__ import annotations

import numpy as np
import pytest

from hwconv.compiler.synthetic import codenet_program
from hwconv.golden.engine import run_program
from hwconv.sim.compare import compare_arenas, element_offsets, golden_arena, owners
from hwconv.spec.memory import PAGE_BYTES
from hwconv.sim.layout import RAM_BASE, MemoryMap, Region, place_program, ram_bytes_for
from hwconv.sim.programs import (ERROR_KINDS, OPS, corrupt_image, expected_error, random_inputs,
                                 random_op_program)
from hwconv.spec import EngineConfig
from hwconv.spec.isa import Flag, Opcode
from hwconv.spec.registers import ErrorCode

CFG = EngineConfig()
SMALL = EngineConfig(pe_in=4, pe_out=8, axi_data_width=64)


# -- layout --------------------------------------------------------------------------------------
def test_program_layout_is_page_aligned_and_disjoint():
    prog, _ = random_op_program(CFG, "conv", 1)
    lay = place_program(prog)
    assert lay.image.base == RAM_BASE
    regions = lay.regions
    for r in regions:
        assert r.base % PAGE_BYTES == 0
    for a, b in zip(regions, regions[1:]):
        assert a.end <= b.base
    assert lay.image.size == len(prog.device_image()) and lay.params.size == len(prog.params)
    assert lay.arena.size == prog.arena_bytes and lay.arena.writable and not lay.image.writable
    assert ram_bytes_for(lay.end) >= lay.end and ram_bytes_for(1) == 1 << 20
    with pytest.raises(ValueError, match="aligned"):
        place_program(prog, base=100)


def test_memory_map_checks_accesses():
    m = MemoryMap()
    m.add(Region("image", 0x1000, 0x100, writable=False))
    m.add(Region("arena", 0x2000, 100))
    assert m.check(0x1000, 16, write=False) is None
    assert "read-only" in m.check(0x1000, 4, write=True)
    assert m.check(0x2000 + 96, 4, write=True) is None
    assert "outside" in m.check(0x2000 + 96, 16, write=True)         # byte-exact for writes
    assert m.check(0x2000 + 96, 16, write=False, granule=16) is None  # whole bus word on reads
    assert "outside every region" in m.check(0x0, 16, write=False)
    with pytest.raises(ValueError, match="overlaps"):
        m.add(Region("clash", 0x2010, 16))
    m.remove("arena")
    assert m.check(0x2000, 4, write=True) is not None


# -- random programs -----------------------------------------------------------------------------
@pytest.mark.parametrize("op", OPS)
def test_random_op_programs_are_valid_varied_and_lively(op):
    shapes, flags, lively = set(), set(), 0
    n = 25
    for seed in range(n):
        prog, inputs = random_op_program(SMALL, op, seed)
        assert [d.opcode.name.lower() for d in prog.layers] == [
            {"deform": "deform_dw", "dwconv": "dwconv"}.get(op, op)]
        out = run_program(prog, inputs)["y"]
        d = prog.layers[0]
        shapes.add((d.in0.channels, d.out.height, d.stride, d.kernel, d.in0.pixel_stride > d.in0.channels))
        flags.add(int(d.flags))
        lo, hi = (d.clamp_lo, d.clamp_hi) if d.opcode != Opcode.MAXPOOL and d.opcode != Opcode.COPY \
            else (out.min(), out.max())
        values = np.unique(out)
        if len(values) >= min(3, out.size) and (out > lo).any() and (out < hi).any():
            lively += 1
    assert len(shapes) >= n // 2, f"{op}: only {len(shapes)} distinct shapes in {n} programs"
    assert len(flags) >= 3, f"{op}: signedness/upsample flags hardly vary: {flags}"
    assert lively >= 0.7 * n, f"{op}: only {lively} of {n} outputs use their range"


def test_random_programs_reach_views_groups_upsample_and_clamped_dilation():
    seen = {"slice": False, "groups": False, "upsample": False, "out_view": False, "dil_clamped": False}
    for seed in range(40):
        for op in OPS:
            prog, inputs = random_op_program(SMALL, op, seed)
            d = prog.layers[0]
            seen["slice"] |= d.in0.pixel_stride > d.in0.channels
            seen["groups"] |= d.out.group_channels < d.out.channels
            seen["upsample"] |= bool(d.flags & Flag.UPSAMPLE2X)
            seen["out_view"] |= d.out.pixel_stride > d.out.channels
            if op == "deform":
                seen["dil_clamped"] |= bool((inputs["dilation"] > SMALL.max_dilation).any())
    assert all(seen.values()), seen


def test_random_op_program_rejects_unknown_op():
    with pytest.raises(ValueError, match="unknown op"):
        random_op_program(CFG, "fft", 0)


# -- corrupted images ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind, code", [("bad_magic", ErrorCode.BAD_MAGIC),
                                        ("config_hash", ErrorCode.CONFIG_MISMATCH),
                                        ("bad_opcode", ErrorCode.BAD_OPCODE),
                                        ("arena_out_of_bounds", ErrorCode.ARENA_OUT_OF_BOUNDS)])
def test_corrupt_images_give_the_golden_error(kind, code):
    prog, _ = codenet_program(SMALL, "tiny", reuse_memory=False)
    inputs = random_inputs(prog, 0)
    layer = 3
    res = expected_error(prog, corrupt_image(prog, kind, layer), inputs)
    assert res.error == code, res
    per_layer = kind in ("bad_opcode", "arena_out_of_bounds")
    assert res.error_layer == (layer if per_layer else 0)
    assert res.layers_done == (layer if per_layer else 0)
    assert set(ERROR_KINDS) >= {kind}
    with pytest.raises(ValueError, match="unknown fault"):
        corrupt_image(prog, "cosmic_ray")


# -- comparison ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    prog, _ = codenet_program(SMALL, "tiny", reuse_memory=False)
    inputs = random_inputs(prog, 1)
    return prog, inputs, golden_arena(prog, inputs)


def test_identical_arenas_match(tiny):
    prog, _, want = tiny
    cmp = compare_arenas(prog, want.copy(), want)
    assert cmp.match and cmp.differing_bytes == 0 and all(cmp.outputs.values())
    assert "bit-exact" in cmp.describe()


def test_first_mismatching_layer_and_coordinates(tiny):
    prog, _, want = tiny
    got = want.copy()
    for layer, yxc in ((7, (1, 2, 3)), (12, (0, 0, 0))):
        d = prog.layers[layer]
        y, x, c = (min(v, s - 1) for v, s in zip(yxc, (d.out.height, d.out.width, d.out.channels)))
        got[element_offsets(d.out)[y, x, c]] ^= 0x10
    cmp = compare_arenas(prog, bytes(got), want)
    assert not cmp.match and cmp.differing_bytes == 2
    first = cmp.first
    assert first.layer == 7 and first.name == prog.layer_names[7] and first.elements == 1
    d = prog.layers[7]
    assert first.yxc == tuple(min(v, s - 1) for v, s in zip((1, 2, 3), (d.out.height, d.out.width, d.out.channels)))
    assert first.got != first.want and abs(first.got - first.want) == 16
    assert [m.layer for m in cmp.layers] == [7, 12] and not cmp.unchecked
    assert f"layer 7 ({prog.layer_names[7]})" in cmp.describe()


def test_stray_bytes_and_outputs_reported(tiny):
    prog, _, want = tiny
    got = want.copy()
    image_ref = prog.tensor("image").ref
    got[image_ref.addr] ^= 1                                     # an input clobbered
    out = prog.outputs[0]
    got[element_offsets(out.ref)[0, 0, 0]] ^= 1                  # an output wrong
    cmp = compare_arenas(prog, got, want)
    assert cmp.stray_bytes == 1 and cmp.first_stray == image_ref.addr
    assert cmp.outputs[out.name] is False
    assert "outside every layer's output" in cmp.describe() and out.name in cmp.describe()
    assert owners(prog)[image_ref.addr] == -1


def test_overwritten_layers_are_reported_unchecked():
    prog, _ = codenet_program(SMALL, "tiny")                      # memory reuse on
    inputs = random_inputs(prog, 0)
    want = golden_arena(prog, inputs)
    own = owners(prog)
    unchecked = [i for i, d in enumerate(prog.layers) if not (own[element_offsets(d.out)] == i).any()]
    assert unchecked, "the tiny program with memory reuse overwrites no layer output"
    last = len(prog.layers) - 1
    got = want.copy()
    got[element_offsets(prog.layers[last].out)[0, 0, 0]] ^= 0xFF
    cmp = compare_arenas(prog, got, want)
    assert cmp.first.layer == last and cmp.unchecked == unchecked
    assert "reuse_memory=False" in cmp.describe()
    with pytest.raises(ValueError, match="bytes"):
        compare_arenas(prog, got[:-1], want)
