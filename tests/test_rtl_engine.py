"""EngineCore in Amaranth's simulator against the golden engine, byte for byte on the whole arena:
every op, signedness, strides, paddings, dilation maps, grouped and upsampled stores, concat views,
AXI backpressure, error codes and the per-layer counters."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from engine_harness import golden_arena, initial_arena, run_engine
from hwconv.compiler import ProgramBuilder
from hwconv.compiler.cost import layer_macs
from hwconv.spec import EngineConfig, ErrorCode
from hwconv.spec.isa import DESCRIPTOR_BYTES, PREAMBLE_BYTES, PREAMBLE_FIELD_OFFSETS, TensorRef
from hwconv.spec.params import REQUANT_RECORD_BYTES

# A small engine so that each simulation takes about a second.
CFG = EngineConfig(pe_in=4, pe_out=4, axi_data_width=64, max_width=32, max_channels=64, max_layers=16,
                   line_buffer_bytes=4096, weight_buffer_bytes=4096, row_buffer_bytes=2048, max_dilation=3)


def _check(build, *, cfg=CFG, seed=0, stall=0.0, latency=(1, 3)):
    rng = np.random.default_rng(seed)
    b = ProgramBuilder(cfg)
    inputs = build(b, rng)
    p = b.build()
    arena = initial_arena(p, inputs)
    gold, res = golden_arena(p, p.device_image(), arena)
    assert res.error == ErrorCode.NONE, res.message
    run = run_engine(cfg, p.device_image(), p.params, arena, stall=stall, latency=latency, seed=seed,
                     perf_layers=len(p.layers))
    assert run.error == ErrorCode.NONE
    assert run.layers_done == len(p.layers)
    bad = np.flatnonzero(run.arena != gold)
    assert bad.size == 0, f"{bad.size} bytes differ, first at arena offset {bad[0]}"
    assert run.layer_macs == [layer_macs(d) for d in p.layers]
    assert all(c > 0 for c in run.layer_cycles) and sum(run.layer_cycles) <= run.cycles
    return run


def _w(rng, shape, bits=4):
    lo = -(1 << (bits - 1))
    return rng.integers(lo, -lo, size=shape)


def _rq(rng, c):
    return dict(bias=rng.integers(-200, 200, c), mult=rng.integers(1, 200, c), shift=rng.integers(6, 12, c))


def _img(rng, shape, signed):
    return rng.integers(-128, 128, size=shape) if signed else rng.integers(0, 256, size=shape)


@pytest.mark.parametrize("k,stride,pad,bits,signed", [
    (1, 1, 0, 4, False), (1, 2, 0, 4, True), (3, 1, 1, 4, False), (3, 2, 1, 8, True), (3, 4, 1, 8, False),
    (3, 1, 0, 4, True), (1, 4, 0, 8, True),
])
def test_conv(k, stride, pad, bits, signed):
    def build(b, rng):
        h, w, cin, cout = 7, 6, 5, 6
        x = b.input("x", h, w, cin, signed=signed)
        y = b.conv("c", x, _w(rng, (cout, k, k, cin), bits), stride=stride, pad=pad, weight_bits=bits,
                   out_signed=not signed, **_rq(rng, cout))
        b.output("y", y)
        return {"x": _img(rng, (h, w, cin), signed)}
    _check(build, seed=k * 10 + stride)


@pytest.mark.parametrize("stride,signed", [(1, False), (2, True)])
def test_depthwise(stride, signed):
    def build(b, rng):
        x = b.input("x", 6, 7, 7, signed=signed)
        b.output("y", b.dwconv("d", x, _w(rng, (7, 3, 3)), stride=stride, **_rq(rng, 7)))
        return {"x": _img(rng, (6, 7, 7), signed)}
    _check(build, seed=stride)


@pytest.mark.parametrize("max_dil", [0, 2, 5])
def test_deformable_dilations_clamped_at_max(max_dil):
    def build(b, rng):
        x = b.input("x", 9, 8, 6)
        d = b.input("d", 9, 8, 1)
        b.output("y", b.deform("df", x, d, _w(rng, (6, 3, 3)), **_rq(rng, 6)))
        return {"x": _img(rng, (9, 8, 6), False), "d": rng.integers(0, max_dil + 2, size=(9, 8, 1))}
    _check(build, seed=max_dil)


def test_maxpool_signed_and_unsigned():
    def build(b, rng):
        x = b.input("x", 7, 6, 5, signed=True)
        u = b.input("u", 6, 6, 3)
        b.output("a", b.maxpool("p3", x, kernel=3, stride=2, pad=1))
        b.output("b", b.maxpool("p2", x, kernel=2, stride=2, pad=0))
        b.output("c", b.maxpool("p1", u, kernel=3, stride=1, pad=2))
        return {"x": _img(rng, (7, 6, 5), True), "u": _img(rng, (6, 6, 3), False)}
    _check(build)


def test_add_mixed_signedness():
    def build(b, rng):
        x = b.input("x", 4, 5, 6)
        z = b.input("z", 4, 5, 6, signed=True)
        b.output("y", b.add("a", x, z, mult_a=300, mult_b=-200, out_signed=True, **_rq(rng, 6)))
        return {"x": _img(rng, (4, 5, 6), False), "z": _img(rng, (4, 5, 6), True)}
    _check(build)


def test_concat_views_upsample_and_interleaved_shuffle_stores():
    def build(b, rng):
        x = b.input("x", 3, 4, 6)
        x2 = b.input("x2", 6, 8, 4)
        cat = b.buffer("cat", 6, 8, 10, signed=False)
        b.copy("up", x, upsample=True, out=b.view(cat, 0, 6))
        b.conv("c", x2, _w(rng, (4, 1, 1, 4)), mult=1, shift=3, out=b.view(cat, 6, 4))
        shuf = b.buffer("shuf", 6, 8, 8, signed=False)
        for i in range(2):  # ShuffleNet's channel shuffle as two interleaved stores
            b.conv(f"s{i}", b.view(cat, 2 * i, 4), _w(rng, (4, 1, 1, 4)), mult=1, shift=3,
                   out=b.view(shuf, i, 4, group_channels=1, group_stride=2))
        b.output("cat", cat)
        b.output("shuf", shuf)
        b.output("upc", b.conv("uc", x, _w(rng, (5, 1, 1, 6)), mult=1, shift=4, upsample=True))
        return {"x": _img(rng, (3, 4, 6), False), "x2": _img(rng, (6, 8, 4), False)}
    _check(build)


def test_backpressure_on_every_axi_channel():
    def build(b, rng):
        x = b.input("x", 5, 6, 6, signed=True)
        y = b.conv("c", x, _w(rng, (6, 3, 3, 6)), stride=1, out_signed=True, **_rq(rng, 6))
        b.output("y", b.dwconv("d", y, _w(rng, (6, 3, 3)), out_signed=True, **_rq(rng, 6)))
        return {"x": _img(rng, (5, 6, 6), True)}
    _check(build, stall=0.4, latency=(1, 8), seed=7)


def test_wider_array_and_bus():
    cfg = dataclasses.replace(CFG, pe_in=8, pe_out=8, axi_data_width=128, weight_buffer_bytes=8192)

    def build(b, rng):
        x = b.input("x", 5, 6, 19)
        y = b.conv("c", x, _w(rng, (10, 3, 3, 19)), **_rq(rng, 10))
        b.output("y", b.dwconv("d", y, _w(rng, (10, 3, 3)), **_rq(rng, 10)))
        return {"x": _img(rng, (5, 6, 19), False)}
    _check(build, cfg=cfg)


# -- errors are states -------------------------------------------------------------------------
def _small_program(rng):
    b = ProgramBuilder(CFG)
    x = b.input("x", 4, 4, 4)
    y = b.conv("c1", x, _w(rng, (4, 1, 1, 4)), mult=1, shift=3)
    b.output("y", b.conv("c2", y, _w(rng, (4, 1, 1, 4)), mult=1, shift=3))
    p = b.build()
    return p, initial_arena(p, {"x": _img(rng, (4, 4, 4), False)})


def _patch(image: bytes, offset: int, raw: bytes) -> bytes:
    return image[:offset] + raw + image[offset + len(raw):]


def _desc_field(layer: int, field: str) -> int:
    from hwconv.spec.isa import DESCRIPTOR_FIELD_OFFSETS
    return PREAMBLE_BYTES + layer * DESCRIPTOR_BYTES + DESCRIPTOR_FIELD_OFFSETS[field][0]


def _tensor_ref_of(p, layer, name):
    return getattr(p.layers[layer], name)


@pytest.mark.parametrize("case", ["magic", "hash", "n_layers", "opcode", "kernel", "arena", "params",
                                  "row_buffer", "requant_reserved"])
def test_bad_programs_stop_with_the_golden_error_code(case):
    rng = np.random.default_rng(1)
    p, arena = _small_program(rng)
    image, params, arena_size = p.device_image(), p.params, None
    if case == "magic":
        image = _patch(image, PREAMBLE_FIELD_OFFSETS["magic"][0], b"XXXX")
    elif case == "hash":
        image = _patch(image, PREAMBLE_FIELD_OFFSETS["config_hash"][0], b"\x01\x02\x03\x04")
    elif case == "n_layers":
        image = _patch(image, PREAMBLE_FIELD_OFFSETS["n_layers"][0], (99).to_bytes(4, "little"))
    elif case == "opcode":
        image = _patch(image, _desc_field(1, "opcode"), b"\x7e")
    elif case == "kernel":
        image = _patch(image, _desc_field(1, "kernel"), b"\x05")
    elif case == "arena":
        ref: TensorRef = p.layers[1].out
        image = _patch(image, _desc_field(1, "out"), ref.with_(addr=len(arena) - 8).pack())
    elif case == "params":
        params = params[:len(params) // 2]
    elif case == "requant_reserved":  # layer 1's third record sets bit 30 of its mult/shift word
        at = p.layers[1].params_offset + 2 * REQUANT_RECORD_BYTES + 7
        params = params[:at] + bytes([params[at] | 0x40]) + params[at + 1:]
    elif case == "row_buffer":
        ref = p.layers[1].out
        image = _patch(image, _desc_field(1, "out"), ref.with_(pixel_stride=400).pack())
        arena_size = 1 << 20
    golden = np.zeros(max(arena.size, arena_size or 0), np.uint8)
    golden[:arena.size] = arena
    from hwconv.golden import execute
    want = execute(CFG, image, params, golden)
    assert want.error != ErrorCode.NONE
    run = run_engine(CFG, image, params, arena, arena_size=arena_size)
    assert (run.error, run.error_layer) == (want.error, want.error_layer)
    if case == "requant_reserved":
        assert want.error == ErrorCode.BAD_REQUANT and want.error_layer == 1
    assert run.layers_done == want.layers_done


def test_a_rerun_after_an_error_is_clean():
    rng = np.random.default_rng(2)
    p, arena = _small_program(rng)
    gold, _ = golden_arena(p, p.device_image(), arena)
    bad = _patch(p.device_image(), _desc_field(1, "opcode"), b"\x7e")
    assert run_engine(CFG, bad, p.params, arena).error == ErrorCode.BAD_OPCODE
    run = run_engine(CFG, p.device_image(), p.params, arena)
    assert run.error == ErrorCode.NONE and np.array_equal(run.arena, gold)


def test_unequal_array_is_refused_with_a_reason():
    from hwconv.rtl.engine import EngineCore
    with pytest.raises(ValueError, match="square"):
        EngineCore(dataclasses.replace(CFG, pe_out=8))


def test_cycle_model_within_ten_percent_of_the_engine_counters_per_layer():
    from hwconv.compiler.cycles import program_cycles

    def build(b, rng):
        x = b.input("x", 8, 8, 12)
        dl = b.input("dl", 8, 8, 1)
        y = b.conv("c3", x, _w(rng, (12, 3, 3, 12)), **_rq(rng, 12))
        y2 = b.conv("c1", y, _w(rng, (20, 1, 1, 12)), **_rq(rng, 20))
        b.output("y3", b.dwconv("d", y2, _w(rng, (20, 3, 3)), stride=2, **_rq(rng, 20)))
        y4 = b.deform("df", y, dl, _w(rng, (12, 3, 3)), **_rq(rng, 12))
        y5 = b.maxpool("p", y4, kernel=3, stride=2, pad=1)
        b.output("y6", b.add("a", y, y4, mult_a=3, mult_b=5, **_rq(rng, 12)))
        b.output("y7", b.copy("cp", y5, upsample=True))
        return {"x": _img(rng, (8, 8, 12), False), "dl": rng.integers(0, 4, size=(8, 8, 1))}

    rng = np.random.default_rng(0)
    b = ProgramBuilder(CFG)
    inputs = build(b, rng)
    p = b.build()
    run = run_engine(CFG, p.device_image(), p.params, initial_arena(p, inputs), latency=(4, 4),
                     perf_layers=len(p.layers))
    model = program_cycles(p.layers, CFG, mem_latency=4)
    for d, got, want in zip(p.layers, run.layer_cycles, model):
        assert abs(want.total - got) <= 0.1 * got, f"{d.opcode.name}: model {want.total}, engine {got}"


def test_a_rows_flush_overlapping_the_next_rows_store():
    """Slow writes keep a row's flush running while the next row is stored into the other half
    of the row buffer (the Verilator bench found the two sharing one write port)."""
    def build(b, rng):
        x = b.input("x", 10, 5, 35)
        b.output("y", b.copy("cp", x))
        b.output("z", b.conv("c", x, _w(rng, (9, 1, 1, 35)), **_rq(rng, 9)))
        return {"x": _img(rng, (10, 5, 35), False)}
    _check(build, stall={"w": 0.8, "b": 0.8}, latency=(1, 1))
