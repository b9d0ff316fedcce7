"""Golden engine error reporting: execute() on damaged device images reports the ErrorCode and the
layer (as the ERROR / ERROR_LAYER / LAYERS_DONE registers would), run_program raises EngineError or a
clear ValueError, and the compiler proves accumulators cannot overflow."""

from __future__ import annotations

import dataclasses
import struct

import numpy as np
import pytest

from hwconv.compiler import ProgramBuilder
from hwconv.golden import EngineError, execute, run_program
from hwconv.golden.engine import RunResult
from hwconv.spec import (DESCRIPTOR_BYTES, FORMAT_VERSION, PREAMBLE_BYTES, PREAMBLE_MAGIC, EngineConfig,
                         ErrorCode, Opcode, Program, SpecError)
from hwconv.spec.isa import PREAMBLE_FIELD_OFFSETS

CFG = EngineConfig()
# Preamble contract (little-endian byte offsets).
PRE_MAGIC, PRE_MAJOR, PRE_MINOR, PRE_HASH, PRE_NLAYERS = 0, 4, 6, 8, 12


def test_preamble_layout():
    assert {k: v[0] for k, v in PREAMBLE_FIELD_OFFSETS.items()} == {
        "magic": PRE_MAGIC, "version_major": PRE_MAJOR, "version_minor": PRE_MINOR,
        "config_hash": PRE_HASH, "n_layers": PRE_NLAYERS}
    assert PREAMBLE_MAGIC.to_bytes(4, "little") == b"HWCP"


def build(cfg: EngineConfig = CFG) -> Program:
    rng = np.random.default_rng(11)
    b = ProgramBuilder(cfg)
    x = b.input("x", 6, 6, 3)
    c1 = b.conv("c1", x, rng.integers(-8, 8, (4, 3, 3, 3)), shift=5, bias=rng.integers(-50, 50, 4))
    dw = b.dwconv("dw", c1, rng.integers(-8, 8, (4, 3, 3)), shift=3)
    pw = b.conv("pw", dw, rng.integers(-8, 8, (8, 1, 1, 4)), weight_bits=8, shift=9)
    mp = b.maxpool("mp", pw, kernel=2, stride=2, pad=0)
    s = b.add("sum", mp, mp, mult_a=1, mult_b=2, shift=1)
    b.output("y", s)
    b.output("pw", pw)
    return b.build()


@pytest.fixture(scope="module")
def prog() -> Program:
    return build()


@pytest.fixture(scope="module")
def img() -> np.ndarray:
    return np.random.default_rng(5).integers(0, 256, (6, 6, 3))


def loaded_arena(prog: Program, img: np.ndarray, size: int | None = None) -> np.ndarray:
    from hwconv.spec.memory import write_tensor

    arena = np.zeros(prog.arena_bytes if size is None else size, dtype=np.uint8)
    write_tensor(arena, prog.tensor("x").ref, img)
    return arena


def patched(image: bytes, off: int, fmt: str, value: int) -> bytes:
    b = bytearray(image)
    struct.pack_into(fmt, b, off, value)
    return bytes(b)


def run(prog, image=None, params=None, arena=None, img=None) -> RunResult:
    if arena is None:
        arena = loaded_arena(prog, img if img is not None else np.zeros((6, 6, 3), np.int64))
    return execute(prog.config, prog.device_image() if image is None else image,
                   prog.params if params is None else params, arena)


def assert_error(res: RunResult, code: ErrorCode, layer: int, *needles: str, done: int | None = None):
    assert res.error == code, res
    assert res.error_layer == layer, res
    assert res.layers_done == (layer if done is None else done), res
    for needle in needles:
        assert needle in res.message, res.message
    with pytest.raises(EngineError) as ei:
        res.raise_for_error()
    assert ei.value.code == code and ei.value.layer == layer
    assert str(ei.value).startswith(f"engine error {code.name} at layer {layer}: ")


# -- success -----------------------------------------------------------------------------------
def test_success_reports_none_and_all_layers(prog, img):
    seen = []
    arena = loaded_arena(prog, img)
    res = execute(CFG, prog.device_image(), prog.params, arena, on_layer=lambda i, d, y: seen.append((i, d.opcode)))
    assert res.error == ErrorCode.NONE and res.message == ""
    assert res.layers_done == len(prog.layers) == 5
    assert len(res.layer_seconds) == 5
    assert seen == [(i, d.opcode) for i, d in enumerate(prog.layers)]
    res.raise_for_error()  # no-op
    out = run_program(prog, {"x": img})
    assert set(out) == {"y", "pw"} and out["y"].shape == (3, 3, 8) and out["y"].any()


# -- preamble ------------------------------------------------------------------------------------
def test_bad_magic(prog):
    assert_error(run(prog, patched(prog.device_image(), PRE_MAGIC, "<I", 0xDEADBEEF)),
                 ErrorCode.BAD_MAGIC, 0, "0xdeadbeef", f"0x{PREAMBLE_MAGIC:08x}")


@pytest.mark.parametrize("n", [0, 1, PREAMBLE_BYTES - 1])
def test_image_shorter_than_preamble(prog, n):
    assert_error(run(prog, prog.device_image()[:n]), ErrorCode.BAD_MAGIC, 0, "shorter than the preamble")


@pytest.mark.parametrize("major", [FORMAT_VERSION[0] + 1, FORMAT_VERSION[0] - 1, 0xFFFF])
def test_version_mismatch(prog, major):
    assert_error(run(prog, patched(prog.device_image(), PRE_MAJOR, "<H", major)),
                 ErrorCode.VERSION_MISMATCH, 0, f"major {major}")


def test_config_mismatch(prog):
    other = build(EngineConfig(pe_in=8))
    assert other.device_image() != prog.device_image()
    res = run(prog, other.device_image(), other.params)
    assert_error(res, ErrorCode.CONFIG_MISMATCH, 0, f"0x{other.config.config_hash:08x}",
                 f"0x{CFG.config_hash:08x}")
    # and the same image runs on the engine it was built for
    arena = np.zeros(other.arena_bytes, np.uint8)
    assert execute(other.config, other.device_image(), other.params, arena).error == ErrorCode.NONE


@pytest.mark.parametrize("n", [0, CFG.max_layers + 1, 0xFFFFFFFF])
def test_layer_count_out_of_range(prog, n):
    assert_error(run(prog, patched(prog.device_image(), PRE_NLAYERS, "<I", n)),
                 ErrorCode.TOO_MANY_LAYERS, 0, f"{n} layers", f"1..{CFG.max_layers}")


def test_max_layers_is_inclusive():
    cfg = EngineConfig(max_layers=5)
    p = build(cfg)
    assert len(p.layers) == 5
    assert execute(cfg, p.device_image(), p.params, np.zeros(p.arena_bytes, np.uint8)).error == ErrorCode.NONE


def test_descriptors_missing_from_image(prog):
    image = prog.device_image()
    assert_error(run(prog, image[:-1]), ErrorCode.AXI_ERROR, 0, "past the end")
    n = len(prog.layers)
    assert_error(run(prog, patched(image, PRE_NLAYERS, "<I", n + 1)), ErrorCode.AXI_ERROR, 0)


def test_fewer_layers_in_preamble_runs_a_prefix(prog, img):
    res = run(prog, patched(prog.device_image(), PRE_NLAYERS, "<I", 2), img=img)
    assert res.error == ErrorCode.NONE and res.layers_done == 2


# -- per-layer errors ------------------------------------------------------------------------------
def desc_pos(i: int) -> int:
    return PREAMBLE_BYTES + i * DESCRIPTOR_BYTES


@pytest.mark.parametrize("opcode", [0x00, 0x07, 0xEE])
def test_unknown_opcode_in_layer_2(prog, img, opcode):
    # The first two layers run (and write their outputs) before the bad descriptor is fetched.
    ref_arena = loaded_arena(prog, img)
    good = execute(CFG, patched(prog.device_image(), PRE_NLAYERS, "<I", 2), prog.params, ref_arena)
    assert good.layers_done == 2
    arena = loaded_arena(prog, img)
    res = run(prog, patched(prog.device_image(), desc_pos(2), "<B", opcode), arena=arena)
    assert_error(res, ErrorCode.BAD_OPCODE, 2, f"unknown opcode 0x{opcode:02x}", "layer 2")
    assert len(res.layer_seconds) == 2
    assert np.array_equal(arena, ref_arena)


def test_unknown_opcode_in_last_layer(prog):
    last = len(prog.layers) - 1
    assert_error(run(prog, patched(prog.device_image(), desc_pos(last), "<B", 0x42)), ErrorCode.BAD_OPCODE, last)


def test_bad_descriptor_field(prog):
    i = prog.layer_names.index("pw")
    image = patched(prog.device_image(), desc_pos(i) + 2, "<B", 5)  # kernel
    assert_error(run(prog, image), ErrorCode.BAD_DESCRIPTOR, i, "CONV kernel=5")
    image = patched(prog.device_image(), desc_pos(0) + 3, "<B", 3)  # stride
    assert_error(run(prog, image), ErrorCode.BAD_DESCRIPTOR, 0, "stride=3")


def _reach(d) -> int:
    refs = [d.in0, d.out] + ([d.in1] if d.opcode in (Opcode.ADD, Opcode.DEFORM_DW) else [])
    return max(r.addr + r.span for r in refs)


def test_arena_too_small(prog, img):
    assert_error(run(prog, arena=np.zeros(16, np.uint8)), ErrorCode.ARENA_OUT_OF_BOUNDS, 0, "16-byte arena")
    # One byte short of the largest reach: the first layer touching that byte stops the run.
    need = max(_reach(d) for d in prog.layers)
    assert need <= prog.arena_bytes
    first = next(i for i, d in enumerate(prog.layers) if _reach(d) == need)
    res = run(prog, arena=loaded_arena(prog, img, need - 1))
    assert_error(res, ErrorCode.ARENA_OUT_OF_BOUNDS, first, f"reaches byte {need} of a {need - 1}-byte arena")
    # Exactly the largest reach is enough, and gives the same outputs as the planned arena.
    small, full = loaded_arena(prog, img, need), loaded_arena(prog, img)
    assert run(prog, arena=small).error == ErrorCode.NONE
    assert run(prog, arena=full).error == ErrorCode.NONE
    assert np.array_equal(small, full[:need])


def test_params_truncated(prog):
    assert_error(run(prog, params=b""), ErrorCode.PARAMS_OUT_OF_BOUNDS, 0, "0-byte params blob")
    # Cut inside the last requantising layer's records.
    last = max(i for i, d in enumerate(prog.layers) if d.opcode in (Opcode.CONV, Opcode.ADD, Opcode.DWCONV))
    d = prog.layers[last]
    end = d.params_offset + d.out.channels * 8
    assert end <= len(prog.params)
    assert_error(run(prog, params=prog.params[:end - 1]), ErrorCode.PARAMS_OUT_OF_BOUNDS, last,
                 "requant records", f"{end - 1}-byte params blob")
    assert run(prog, params=prog.params[:end]).error == ErrorCode.NONE
    # Cut inside a layer's weights.
    pw = prog.layer_names.index("pw")
    w_end = prog.layers[pw].weights_offset + 8 * 4  # 8-bit 1x1 conv, 4 -> 8 channels
    assert_error(run(prog, params=prog.params[:w_end - 1]), ErrorCode.PARAMS_OUT_OF_BOUNDS, pw, "weights reach")


# -- run_program -----------------------------------------------------------------------------------
def test_run_program_raises_engine_error_with_layer(prog, img):
    bad = dataclasses.replace(prog, layers=list(prog.layers))
    bad.layers[2] = dataclasses.replace(bad.layers[2], stride=3)
    with pytest.raises(EngineError) as ei:
        run_program(bad, {"x": img})
    assert ei.value.code == ErrorCode.BAD_DESCRIPTOR and ei.value.layer == 2
    assert "engine error BAD_DESCRIPTOR at layer 2" in str(ei.value) and "stride=3" in ei.value.detail


def test_run_program_params_error(prog, img):
    with pytest.raises(EngineError) as ei:
        run_program(dataclasses.replace(prog, params=prog.params[:10]), {"x": img})
    assert ei.value.code == ErrorCode.PARAMS_OUT_OF_BOUNDS and ei.value.layer == 0


def test_run_program_missing_input(prog):
    with pytest.raises(ValueError, match=r"missing program input\(s\): \['x'\]"):
        run_program(prog, {})


@pytest.mark.parametrize("shape", [(6, 6), (6, 6, 4), (3, 6, 6), (1, 6, 6, 3)])
def test_run_program_wrong_shape(prog, shape):
    with pytest.raises(ValueError) as ei:
        run_program(prog, {"x": np.zeros(shape, np.int64)})
    assert f"input 'x': shape {shape}, the program expects (6, 6, 3) (H, W, C)" in str(ei.value)


@pytest.mark.parametrize("value", [256, -1, 1000])
def test_run_program_out_of_range_unsigned(prog, value):
    x = np.zeros((6, 6, 3), np.int64)
    x[1, 2, 0] = value
    with pytest.raises(ValueError, match=r"input 'x': values outside \[0, 255\]"):
        run_program(prog, {"x": x})


def test_run_program_signed_input_range():
    b = ProgramBuilder(CFG)
    x = b.input("s", 2, 2, 1, signed=True)
    b.output("o", b.copy("cp", x))
    p = b.build()
    v = np.array([-128, 127, 0, -1]).reshape(2, 2, 1)
    out = run_program(p, {"s": v})["o"]
    assert out.dtype == np.int8 and np.array_equal(out, v)
    for bad in (-129, 128):
        with pytest.raises(ValueError, match=r"input 's': values outside \[-128, 127\]"):
            run_program(p, {"s": np.full((2, 2, 1), bad)})


def test_run_program_rejects_outputs_and_unknown_names_as_inputs(prog, img):
    with pytest.raises(ValueError, match="tensor 'y' is a program output, not an input"):
        run_program(prog, {"x": img, "y": np.zeros((3, 3, 8), np.int64)})
    with pytest.raises((KeyError, ValueError), match="no tensor 'z'"):
        run_program(prog, {"x": img, "z": img})


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("value", [0.5, float("nan")])
def test_run_program_rejects_non_integer_inputs(prog, value):
    x = np.zeros((6, 6, 3))
    x[0, 0, 0] = value
    with pytest.raises(ValueError):
        run_program(prog, {"x": x})


# -- compile-time accumulator proof ------------------------------------------------------------------
ACC16 = EngineConfig(acc_bits=16)
LIMIT16 = (1 << 15) - 1


def _acc_program(weights, *, bias=0, signed_in=False, cfg=ACC16):
    b = ProgramBuilder(cfg)
    x = b.input("x", 4, 4, 2, signed=signed_in)
    y = b.copy("first", x)
    z = b.conv("wide", y, np.asarray(weights).reshape(-1, 1, 1, 2), weight_bits=8, bias=bias, shift=8)
    b.output("z", z)
    return b.build()


def test_accumulator_overflow_names_layer_and_channel():
    w = [[1, 1], [127, 127], [-128, 0]]  # channel 1: 254 * 255 = 64770 > 32767
    with pytest.raises(SpecError) as ei:
        _acc_program(w)
    msg = str(ei.value)
    assert msg.startswith("layer 1 (wide): accumulator of output channel 1 can reach 64770"), msg
    assert "16-bit accumulator (max 32767)" in msg
    # The same layer is fine with the default 32-bit accumulator.
    _acc_program(w, cfg=CFG)


def test_accumulator_bound_is_exact_at_the_limit():
    w = [[0, 0], [127, 1]]  # 128 * 255 = 32640
    _acc_program(w, bias=[0, LIMIT16 - 32640])
    with pytest.raises(SpecError, match=f"channel 1 can reach {LIMIT16 + 1}"):
        _acc_program(w, bias=[0, LIMIT16 - 32640 + 1])
    with pytest.raises(SpecError, match=f"channel 1 can reach {LIMIT16 + 1}"):
        _acc_program(w, bias=[0, -(LIMIT16 - 32640 + 1)])  # |bias| counts


def test_accumulator_bound_uses_input_sign():
    w = [[-128, 127]]  # signed input: 255 * 128 = 32640; unsigned input: 255 * 255 = 65025
    _acc_program(w, signed_in=True, bias=LIMIT16 - 32640)
    with pytest.raises(SpecError, match="channel 0 can reach 65025"):
        _acc_program(w)


def test_accumulator_overflow_in_add():
    b = ProgramBuilder(ACC16)
    x = b.input("x", 2, 2, 3)
    b.output("o", b.add("sum", x, x, mult_a=100, mult_b=-29, shift=7))  # 129 * 255 = 32895
    with pytest.raises(SpecError, match=r"layer 0 \(sum\): accumulator of output channel 0 can reach 32895"):
        b.build()


# -- requant records: reserved bits (issue 11 item 4) -------------------------------------------------
@pytest.mark.parametrize("name", ["c1", "dw", "pw", "sum"])
@pytest.mark.parametrize("bit", [30, 31])
def test_reserved_requant_bits_stop_the_layer(prog, img, name, bit):
    """Bits 31:30 of a record's mult/shift word are reserved: the layer stops with BAD_REQUANT before
    it computes (they used to leak into the shift and change results silently)."""
    from hwconv.golden.engine import compute_layer, store_layer

    i = prog.layer_names.index(name)
    d = prog.layers[i]
    channel = d.out.channels - 1
    params = bytearray(prog.params)
    pos = d.params_offset + channel * 8 + 4
    struct.pack_into("<I", params, pos, struct.unpack_from("<I", params, pos)[0] | (1 << bit))
    arena = loaded_arena(prog, img)
    before = arena.copy()
    res = run(prog, params=bytes(params), arena=arena)
    assert_error(res, ErrorCode.BAD_REQUANT, i, f"output channel {channel}", "reserved bits 31:30")
    # the stopped layer wrote nothing: the arena is what the layers before it left
    prefix = loaded_arena(prog, img)
    for j in range(i):
        store_layer(prog.layers[j], prefix, compute_layer(prog.layers[j], CFG, prefix, prog.params))
    assert np.array_equal(arena, prefix)
    assert np.array_equal(arena, before) == (i == 0)
    with pytest.raises(EngineError) as ei:
        run_program(dataclasses.replace(prog, params=bytes(params)), {"x": img})
    assert ei.value.code == ErrorCode.BAD_REQUANT and ei.value.layer == i


def test_reserved_requant_bits_refused_by_the_program_checks(prog):
    d = prog.layers[0]
    params = bytearray(prog.params)
    params[d.params_offset + 7] |= 0x80
    with pytest.raises(SpecError, match=r"layer 0 \(c1\): requant record of output channel 0 sets reserved "
                                        r"bits 31:30 \(word 0x8"):
        dataclasses.replace(prog, params=bytes(params)).validate()
