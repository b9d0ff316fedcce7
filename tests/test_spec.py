"""The engine contract (hwconv.spec): EngineConfig, descriptor/tensor-ref encoding, the register
map and the static descriptor checks of validate.py."""

from __future__ import annotations

import dataclasses
import json
import struct
from dataclasses import fields, replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hwconv.compiler import ProgramBuilder
from hwconv.spec.memory import read_tensor, write_tensor
from hwconv.spec import (DESCRIPTOR_BYTES, DESCRIPTOR_FIELD_OFFSETS, REGISTERS, EngineConfig, ErrorCode,
                         Flag, LayerDescriptor, Opcode, SpecError, TensorRef, offset, reg)
from hwconv.spec.registers import REGISTER_MAP_BYTES
from hwconv.spec.validate import check_descriptor

PROP = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
CFG = EngineConfig()


# ==================================================================================================
# EngineConfig
# ==================================================================================================
BAD_VALUES = {
    "pe_in": [0, 2, 3, 12, 256, -16, 16.0, "16"],
    "pe_out": [0, 24, 129, 256, None],
    "weight_bits": [2, 6, 16, "4"],
    "act_bits": [4, 16],
    "acc_bits": [15, 33, 24.0],
    "max_dilation": [-1, 16, 2.5],
    "max_width": [7, 4097, 256.0],
    "max_channels": [0, 65536],
    "weight_buffer_bytes": [0, 1023, 4096.0, 3000, 1024],
    "line_buffer_bytes": [512, 3000, 2.0**16],
    "row_buffer_bytes": [0, 5000],
    "max_layers": [0, 4097],
    "axi_data_width": [16, 96, 1024],
    "addr_width": [16, 36, 128],
    "clock_mhz": [0.5, 1000.5, -1, "250", None],
}

# One valid non-default value for every field that has an alternative.
OTHER_VALUES = {
    "pe_in": 8, "pe_out": 32, "weight_bits": 8, "acc_bits": 24, "max_dilation": 3, "max_width": 512,
    "max_channels": 1024, "weight_buffer_bytes": 32 * 1024, "max_layers": 128, "axi_data_width": 64,
    "addr_width": 40, "clock_mhz": 200.0, "line_buffer_bytes": 32 * 1024, "row_buffer_bytes": 8 * 1024,
}


def test_bad_value_table_covers_every_field():
    assert set(BAD_VALUES) == {f.name for f in fields(EngineConfig)}


@pytest.mark.parametrize("field,value", [(f, v) for f, vs in BAD_VALUES.items() for v in vs])
def test_config_bad_field_named(field, value):
    with pytest.raises(SpecError) as ei:
        EngineConfig(**{field: value})
    assert f"EngineConfig.{field}={value!r}" in str(ei.value)


@pytest.mark.parametrize("field,value", [
    ("pe_in", 4), ("pe_in", 128), ("pe_out", 2), ("acc_bits", 16), ("acc_bits", 32), ("max_dilation", 0),
    ("max_dilation", 15), ("max_width", 8), ("max_width", 4096), ("max_channels", 1), ("max_channels", 65535),
    ("weight_buffer_bytes", 4096), ("line_buffer_bytes", 1024), ("row_buffer_bytes", 1024), ("max_layers", 1), ("max_layers", 4096), ("axi_data_width", 32),
    ("axi_data_width", 512), ("addr_width", 64), ("clock_mhz", 1), ("clock_mhz", 1000.0),
])
def test_config_boundary_values_accepted(field, value):
    assert getattr(EngineConfig(**{field: value}), field) == value


def test_config_is_frozen_and_with_revalidates():
    with pytest.raises(dataclasses.FrozenInstanceError):
        CFG.pe_in = 8  # type: ignore[misc]
    assert CFG.with_(pe_in=8).pe_in == 8 and CFG.pe_in == 16
    with pytest.raises(SpecError, match="pe_in"):
        CFG.with_(pe_in=3)


def test_config_name_and_stem():
    assert CFG.name == "w4a8_16x16"
    assert CFG.stem == "w4a8_16x16_250mhz"
    c = EngineConfig(weight_bits=8, pe_in=8, pe_out=32, clock_mhz=187.4)
    assert c.name == "w8a8_8x32"
    assert c.stem == "w8a8_8x32_187mhz"
    assert EngineConfig(clock_mhz=99.6).stem.endswith("_100mhz")


def test_line_buffer_rows():
    assert EngineConfig(max_dilation=7).line_buffer_rows == 15
    assert EngineConfig(max_dilation=0).line_buffer_rows == 1


def test_other_values_cover_every_field_but_act_bits():
    # act_bits has a single legal value (8), so it is the one field that cannot change.
    assert set(OTHER_VALUES) == {f.name for f in fields(EngineConfig)} - {"act_bits"}


@pytest.mark.parametrize("field", sorted(OTHER_VALUES))
def test_config_hash_changes_with_each_field(field):
    other = CFG.with_(**{field: OTHER_VALUES[field]})
    assert other != CFG
    assert other.config_hash != CFG.config_hash
    assert 0 <= other.config_hash < 1 << 32


def test_config_hash_all_distinct_and_stable():
    hashes = {CFG.with_(**{f: v}).config_hash for f, v in OTHER_VALUES.items()} | {CFG.config_hash}
    assert len(hashes) == len(OTHER_VALUES) + 1
    assert EngineConfig().config_hash == CFG.config_hash
    # An int clock is the same config as the float one.
    assert EngineConfig(clock_mhz=250) == CFG and EngineConfig(clock_mhz=250).config_hash == CFG.config_hash


@pytest.mark.parametrize("changes,same_as", [
    ({"weight_bits": 4.0}, {}), ({"axi_data_width": 128.0}, {}), ({"addr_width": 32.0}, {}),
    ({"pe_in": True}, {}),
])
def test_equal_configs_have_equal_hash_or_are_refused(changes, same_as):
    try:
        c = EngineConfig(**changes)
    except SpecError:
        return
    ref = EngineConfig(**same_as)
    assert c == ref
    assert c.config_hash == ref.config_hash


@pytest.mark.parametrize("suffix", [".toml", ".json"])
@pytest.mark.parametrize("cfg", [CFG, EngineConfig(pe_in=8, pe_out=32, weight_bits=8, acc_bits=24, max_dilation=3,
                                                   axi_data_width=64, addr_width=40, clock_mhz=187.5,
                                                   max_layers=17, weight_buffer_bytes=8192)])
def test_config_save_load_round_trip(tmp_path, suffix, cfg):
    path = tmp_path / f"engine{suffix}"
    cfg.save(path)
    back = EngineConfig.load(path)
    assert back == cfg
    assert back.config_hash == cfg.config_hash
    assert isinstance(back.clock_mhz, float)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp files left


def test_config_file_formats(tmp_path):
    CFG.save(tmp_path / "e.toml")
    text = (tmp_path / "e.toml").read_text()
    assert text.lstrip().startswith("[engine]")
    CFG.save(tmp_path / "e.json")
    assert json.loads((tmp_path / "e.json").read_text()) == CFG.to_dict()
    # A TOML file without the [engine] table is read as the table itself; missing fields default.
    (tmp_path / "flat.toml").write_text("pe_in = 8\nclock_mhz = 100.0\n")
    assert EngineConfig.load(tmp_path / "flat.toml") == EngineConfig(pe_in=8, clock_mhz=100.0)


@pytest.mark.parametrize("suffix,text", [
    (".toml", "[engine]\npe_in = 16\nbogus_width = 3\n"),
    (".json", '{"pe_in": 16, "bogus_width": 3}'),
])
def test_config_unknown_field_rejected(tmp_path, suffix, text):
    path = tmp_path / f"e{suffix}"
    path.write_text(text)
    with pytest.raises(SpecError) as ei:
        EngineConfig.load(path)
    msg = str(ei.value)
    assert str(path) in msg and "bogus_width" in msg and "unknown" in msg
    assert "pe_out" in msg  # lists the known fields


@pytest.mark.parametrize("suffix,text,kind", [
    (".toml", "[engine\npe_in = 16\n", "toml"),
    (".toml", "[engine]\npe_in = \n", "toml"),
    (".json", '{"pe_in": 16', "json"),
])
def test_config_malformed_file_rejected(tmp_path, suffix, text, kind):
    path = tmp_path / f"broken{suffix}"
    path.write_text(text)
    with pytest.raises(SpecError) as ei:
        EngineConfig.load(path)
    assert str(ei.value).lower().startswith(f"{path}: not valid {kind}".lower())


def test_config_bad_value_in_file_names_file_and_field(tmp_path):
    path = tmp_path / "e.toml"
    path.write_text("[engine]\npe_in = 12\n")
    with pytest.raises(SpecError) as ei:
        EngineConfig.load(path)
    assert str(path) in str(ei.value) and "EngineConfig.pe_in=12" in str(ei.value)


def test_config_file_not_a_table(tmp_path):
    path = tmp_path / "e.json"
    path.write_text("[1, 2]")
    with pytest.raises(SpecError, match="must be a table/object, got list"):
        EngineConfig.load(path)


def test_config_missing_file(tmp_path):
    with pytest.raises(SpecError, match="cannot read engine config"):
        EngineConfig.load(tmp_path / "absent.toml")


# ==================================================================================================
# TensorRef
# ==================================================================================================
def test_tensor_ref_defaults_normalise():
    r = TensorRef(64, 2, 3, 5)
    assert (r.pixel_stride, r.group_channels, r.group_stride) == (5, 5, 5)
    assert r == TensorRef(64, 2, 3, 5, 5, 5, 5)
    assert r.channel_offsets() == [0, 1, 2, 3, 4]
    assert r.span == 2 * 3 * 5
    assert r.n_groups == 1


def test_tensor_ref_plain_view_span():
    # channels 4..7 of a 2x3x10 buffer
    r = TensorRef(4, 2, 3, 4, pixel_stride=10)
    assert r.channel_offsets() == [0, 1, 2, 3]
    assert r.span == 5 * 10 + 4


def test_tensor_ref_grouped_view():
    r = TensorRef(0, 2, 3, 4, pixel_stride=8, group_channels=2, group_stride=4)
    assert r.channel_offsets() == [0, 1, 4, 5]
    assert r.n_groups == 2
    assert r.span == 5 * 8 + 5 + 1
    # ragged last run
    r = TensorRef(10, 1, 1, 5, pixel_stride=9, group_channels=2, group_stride=3)
    assert r.channel_offsets() == [0, 1, 3, 4, 6]
    assert r.n_groups == 3
    assert r.span == 7
    assert TensorRef(0, 0, 0, 0, 0, 0, 0).span == 0


@st.composite
def grouped_refs(draw):
    channels = draw(st.integers(1, 12))
    g = draw(st.integers(1, channels))
    gs = draw(st.integers(g, g + 5))
    reach = ((channels - 1) // g) * gs + (channels - 1) % g + 1
    ps = draw(st.integers(reach, reach + 6))
    return TensorRef(draw(st.integers(0, 40)), draw(st.integers(1, 4)), draw(st.integers(1, 4)), channels,
                     ps, g, gs)


@PROP
@given(ref=grouped_refs())
def test_tensor_ref_span_is_exactly_the_touched_bytes(ref):
    """span and channel_offsets against the bytes a write really touches."""
    ref.check("t")
    arena = np.zeros(ref.addr + ref.span + 8, dtype=np.uint8)
    vals = np.arange(1, ref.height * ref.width * ref.channels + 1).reshape(ref.height, ref.width, ref.channels) % 251 + 1
    write_tensor(arena, ref, vals)
    touched = np.flatnonzero(arena)
    assert touched.min() == ref.addr
    assert touched.max() == ref.addr + ref.span - 1
    assert touched.size == vals.size  # no two elements share a byte
    expected = {ref.addr + (y * ref.width + x) * ref.pixel_stride + off
                for y in range(ref.height) for x in range(ref.width) for off in ref.channel_offsets()}
    assert set(touched.tolist()) == expected
    assert np.array_equal(read_tensor(arena, ref, False), vals)


@pytest.mark.parametrize("ref,needle", [
    (TensorRef(0, 0, 3, 4), "t.height = 0"),
    (TensorRef(0, 3, 0, 4), "t.width = 0"),
    (TensorRef(0, 3, 3, 0, 4, 1, 1), "t.channels = 0"),
    (TensorRef(0, 3, 3, 4, 8, 5, 5), "t.group_channels = 5"),
    (TensorRef(0, 3, 3, 4, 8, 2, 1), "t.group_stride = 1 < group_channels = 2"),
    (TensorRef(0, 3, 3, 4, pixel_stride=3), "t.pixel_stride = 3"),
    (TensorRef(0, 3, 3, 4, 5, 2, 4), "t.pixel_stride = 5"),  # second run reaches byte 6
])
def test_tensor_ref_check_errors(ref, needle):
    with pytest.raises(SpecError) as ei:
        ref.check("t")
    assert needle in str(ei.value)


def test_tensor_ref_check_accepts_tight_views():
    TensorRef(0, 3, 3, 4, 6, 2, 4).check("t")
    TensorRef(0, 1, 1, 1).check("t")


def test_tensor_ref_pack_out_of_range():
    with pytest.raises(SpecError, match="does not fit"):
        TensorRef(0, 70000, 1, 1).pack()
    with pytest.raises(SpecError, match="does not fit"):
        TensorRef(-1, 1, 1, 1).pack()


# ==================================================================================================
# LayerDescriptor encoding
# ==================================================================================================
u8, u16, u32 = st.integers(0, 255), st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF)
i16 = st.integers(-0x8000, 0x7FFF)
refs = st.builds(TensorRef, addr=u32, height=u16, width=u16, channels=u16, pixel_stride=u16,
                 group_channels=u16, group_stride=u16)
descriptors = st.builds(
    LayerDescriptor, opcode=st.sampled_from(list(Opcode)), in0=refs, out=refs, in1=refs,
    flags=st.integers(0, 15).map(Flag), kernel=u8, stride=u8, pad=u8, weight_bits=u8, layer_id=u16,
    weights_offset=u32, params_offset=u32, clamp_lo=i16, clamp_hi=i16, add_mult0=i16, add_mult1=i16)


@PROP
@given(d=descriptors)
def test_descriptor_pack_unpack_round_trip(d):
    raw = d.pack()
    assert len(raw) == DESCRIPTOR_BYTES
    back = LayerDescriptor.unpack(raw)
    assert back == d
    assert back.pack() == raw
    assert isinstance(back.opcode, Opcode) and isinstance(back.flags, Flag)
    # Fields sit where the offset table says (the RTL slices by it).
    for name in ("opcode", "flags", "kernel", "stride", "pad", "weight_bits"):
        assert raw[DESCRIPTOR_FIELD_OFFSETS[name][0]] == int(getattr(d, name))
    off, width = DESCRIPTOR_FIELD_OFFSETS["weights_offset"]
    assert width == 4 and struct.unpack_from("<I", raw, off)[0] == d.weights_offset
    off, width = DESCRIPTOR_FIELD_OFFSETS["clamp_lo"]
    assert width == 2 and struct.unpack_from("<h", raw, off)[0] == d.clamp_lo
    off, width = DESCRIPTOR_FIELD_OFFSETS["out"]
    assert TensorRef.unpack(raw[off:off + width]) == d.out


def test_descriptor_size_and_layout():
    assert DESCRIPTOR_BYTES == 128
    spans = sorted(DESCRIPTOR_FIELD_OFFSETS.values())
    assert spans[0][0] == 0
    for (a, wa), (b, _) in zip(spans, spans[1:]):
        assert a + wa == b  # packed, no overlap
    assert spans[-1][0] + spans[-1][1] <= DESCRIPTOR_BYTES
    # the unused tail is zero
    d = LayerDescriptor(Opcode.CONV, TensorRef(0, 1, 1, 1), TensorRef(0, 1, 1, 1), clamp_lo=-1, clamp_hi=-1)
    assert d.pack()[spans[-1][0] + spans[-1][1]:] == bytes(DESCRIPTOR_BYTES - spans[-1][0] - spans[-1][1])


def _raw_desc() -> bytearray:
    return bytearray(LayerDescriptor(Opcode.ADD, TensorRef(0, 1, 1, 1), TensorRef(0, 1, 1, 1)).pack())


@pytest.mark.parametrize("code", [0x00, 0x07, 0x7F, 0xFF])
def test_unpack_unknown_opcode(code):
    raw = _raw_desc()
    raw[DESCRIPTOR_FIELD_OFFSETS["opcode"][0]] = code
    with pytest.raises(SpecError) as ei:
        LayerDescriptor.unpack(bytes(raw), where="layer 9 (head)")
    msg = str(ei.value)
    assert msg.startswith("layer 9 (head): ") and f"unknown opcode 0x{code:02x}" in msg
    assert "COPY=0x06" in msg


@pytest.mark.parametrize("flags,bad", [(0x10, 0x10), (0x80 | 0x01, 0x80), (0xF3, 0xF0)])
def test_unpack_unknown_flag_bits(flags, bad):
    raw = _raw_desc()
    raw[DESCRIPTOR_FIELD_OFFSETS["flags"][0]] = flags
    with pytest.raises(SpecError) as ei:
        LayerDescriptor.unpack(bytes(raw), where="layer 2")
    assert f"layer 2: unknown flag bits 0x{bad:02x}" in str(ei.value)


@pytest.mark.parametrize("n", [0, 127, 129])
def test_unpack_wrong_length(n):
    with pytest.raises(SpecError, match=f"{n} bytes, a descriptor is 128"):
        LayerDescriptor.unpack(bytes(n))


@pytest.mark.parametrize("changes", [{"kernel": 256}, {"clamp_hi": 40000}, {"weights_offset": -1},
                                     {"layer_id": 1 << 16}])
def test_descriptor_pack_out_of_range(changes):
    d = replace(LayerDescriptor(Opcode.CONV, TensorRef(0, 1, 1, 1), TensorRef(0, 1, 1, 1), layer_id=5), **changes)
    with pytest.raises(SpecError, match=f"layer {d.layer_id}: a descriptor field is out of range"):
        d.pack()


def test_descriptor_compute_hw():
    out = TensorRef(0, 8, 6, 1)
    d = LayerDescriptor(Opcode.COPY, TensorRef(0, 4, 3, 1), out, flags=Flag.UPSAMPLE2X)
    assert d.upsample and d.compute_hw == (4, 3)
    assert replace(d, flags=Flag(0)).compute_hw == (8, 6)


# ==================================================================================================
# Register map
# ==================================================================================================
def test_register_offsets_unique_and_aligned():
    offs = [r.offset for r in REGISTERS]
    assert len(set(offs)) == len(offs)
    assert all(o % 4 == 0 and 0 <= o < REGISTER_MAP_BYTES for o in offs)
    assert len({r.name for r in REGISTERS}) == len(REGISTERS)
    for r in REGISTERS:
        used = 0
        for _, lsb, width in r.bits:
            mask = ((1 << width) - 1) << lsb
            assert not used & mask and lsb + width <= 32
            used |= mask


def test_register_lookup():
    assert offset("ID") == 0x00
    assert offset("ERROR") == 0x14
    assert offset("ERROR_LAYER") == 0x18
    assert offset("LAYERS_DONE") == 0x44
    for r in REGISTERS:
        assert reg(r.name) is r and offset(r.name) == r.offset
    assert reg("STATUS").field("error") == (2, 1)
    assert reg("VERSION").field("major") == (16, 16)
    with pytest.raises(KeyError, match="no field 'bogus'"):
        reg("STATUS").field("bogus")


def test_unknown_register_lists_known_names():
    with pytest.raises(KeyError) as ei:
        reg("STATUSS")
    msg = str(ei.value)
    assert "no register 'STATUSS'" in msg
    for r in REGISTERS:
        assert r.name in msg
    with pytest.raises(KeyError, match="no register"):
        offset("nope")


def test_error_codes_are_stable():
    assert [(e.name, e.value) for e in ErrorCode] == [
        ("NONE", 0), ("BAD_MAGIC", 1), ("VERSION_MISMATCH", 2), ("CONFIG_MISMATCH", 3), ("TOO_MANY_LAYERS", 4),
        ("BAD_OPCODE", 5), ("BAD_DESCRIPTOR", 6), ("ARENA_OUT_OF_BOUNDS", 7), ("PARAMS_OUT_OF_BOUNDS", 8),
        ("AXI_ERROR", 9), ("BAD_REQUANT", 10)]


# ==================================================================================================
# check_descriptor: one rule at a time, starting from a valid program
# ==================================================================================================
@pytest.fixture(scope="module")
def prog():
    rng = np.random.default_rng(3)
    b = ProgramBuilder(CFG)
    x = b.input("x", 8, 8, 4)
    c = b.conv("conv", x, rng.integers(-8, 8, (6, 3, 3, 4)), shift=6)
    off = b.conv("offset", c, rng.integers(-8, 8, (1, 1, 1, 6)), shift=6, clamp=(0, 7))
    d = b.deform("deform", c, off, rng.integers(-8, 8, (6, 3, 3)), shift=4, upsample=True)
    m = b.maxpool("pool", d, kernel=2, stride=2, pad=0)
    dw = b.dwconv("dw", m, rng.integers(-8, 8, (6, 3, 3)), shift=3, out_signed=True)
    s = b.add("add", c, dw, mult_a=2, mult_b=1, shift=1)
    cp = b.copy("copy", s)
    b.output("y", cp)
    return b.build()


def layer(prog, name) -> LayerDescriptor:
    return prog.layers[prog.layer_names.index(name)]


def check(prog, d, *, arena=None, params=None):
    return check_descriptor(d, prog.config, arena_size=prog.arena_bytes if arena is None else arena,
                            params_size=len(prog.params) if params is None else params)


def test_valid_layers_pass(prog):
    for d in prog.layers:
        assert check(prog, d) == (ErrorCode.NONE, "")


BAD = ErrorCode.BAD_DESCRIPTOR


def chans(ref: TensorRef, c: int) -> TensorRef:
    """The same tensor with c channels in one dense run (pixel stride unchanged)."""
    return ref.with_(channels=c, group_channels=c, group_stride=c)


def _out_hw(d, h, w):
    return replace(d, out=d.out.with_(height=h, width=w))


CASES = [
    # (layer, mutate, code, needle)
    ("conv", lambda d: replace(d, kernel=5), BAD, "CONV kernel=5"),
    ("conv", lambda d: replace(d, kernel=2), BAD, "kernel=2"),
    ("dw", lambda d: replace(d, kernel=1), BAD, "DWCONV kernel=1"),
    ("pool", lambda d: replace(d, kernel=1), BAD, "MAXPOOL kernel=1"),
    ("add", lambda d: replace(d, kernel=3), BAD, "ADD kernel=3"),
    ("conv", lambda d: replace(d, stride=3), BAD, "CONV stride=3"),
    ("dw", lambda d: replace(d, stride=4), BAD, "DWCONV stride=4"),
    ("deform", lambda d: replace(d, stride=2), BAD, "DEFORM_DW stride=2"),
    ("copy", lambda d: replace(d, stride=2), BAD, "COPY stride=2"),
    ("conv", lambda d: replace(d, pad=2), BAD, "CONV pad=2, must be in [0, 1]"),
    ("pool", lambda d: replace(d, pad=2), BAD, "MAXPOOL pad=2, must be in [0, 1]"),
    ("deform", lambda d: replace(d, pad=0), BAD, "DEFORM_DW pad must be 1"),
    ("conv", lambda d: replace(d, weight_bits=2), BAD, "weight_bits=2"),
    ("deform", lambda d: replace(d, weight_bits=0), BAD, "weight_bits=0"),
    ("conv", lambda d: replace(d, out=d.out.with_(channels=0)), BAD, "out.channels = 0"),
    ("conv", lambda d: replace(d, in0=d.in0.with_(group_stride=1, group_channels=2)), BAD, "in0.group_stride"),
    ("add", lambda d: replace(d, in1=d.in1.with_(pixel_stride=1)), BAD, "in1.pixel_stride"),
    ("conv", lambda d: replace(d, in0=d.in0.with_(channels=CFG.max_channels + 1,
                                                   pixel_stride=CFG.max_channels + 1,
                                                   group_channels=CFG.max_channels + 1,
                                                   group_stride=CFG.max_channels + 1)),
     BAD, "in0.channels=2049 exceeds the engine's max_channels=2048"),
    ("copy", lambda d: replace(d, in0=d.in0.with_(width=CFG.max_width + 1)), BAD,
     "in0.width=257 exceeds the engine's max_width=256"),
    ("deform", lambda d: _out_hw(d, 15, 16), BAD, "UPSAMPLE2X needs an even out tensor, got 15x16"),
    ("conv", lambda d: _out_hw(d, 9, 8), BAD, "gives 8x8, but out computes 9x8"),
    ("conv", lambda d: replace(d, stride=2), BAD, "gives 4x4, but out computes 8x8"),
    ("pool", lambda d: _out_hw(d, 8, 7), BAD, "gives 8x8, but out computes 8x7"),
    ("deform", lambda d: _out_hw(d, 8, 8), BAD, "out computes 4x4"),
    ("add", lambda d: _out_hw(d, 4, 8), BAD, "ADD: in0 8x8"),
    ("copy", lambda d: _out_hw(d, 8, 4), BAD, "COPY: in0 8x8"),
    ("dw", lambda d: replace(d, out=chans(d.out, 5)), BAD, "DWCONV: out.channels=5 != in0.channels=6"),
    ("pool", lambda d: replace(d, out=chans(d.out, 5)), BAD, "out.channels=5 != in0.channels=6"),
    ("deform", lambda d: replace(d, in1=d.in1.with_(channels=2, pixel_stride=2, group_channels=2, group_stride=2)),
     BAD, "DEFORM_DW dilation map in1 must be 8x8x1, got 8x8x2"),
    ("deform", lambda d: replace(d, in1=d.in1.with_(height=4)), BAD, "dilation map in1 must be 8x8x1, got 4x8x1"),
    ("deform", lambda d: replace(d, flags=d.flags | Flag.IN1_SIGNED), BAD, "dilation map in1 must be unsigned"),
    ("add", lambda d: replace(d, in1=chans(d.in1, 5)), BAD, "ADD operands differ"),
    ("add", lambda d: replace(d, in1=d.in1.with_(height=4)), BAD, "in1 4x8x6"),
    ("pool", lambda d: replace(d, flags=d.flags | Flag.OUT_SIGNED), BAD, "MAXPOOL keeps the scale and sign"),
    ("copy", lambda d: replace(d, flags=d.flags | Flag.IN0_SIGNED), BAD, "COPY keeps the scale and sign"),
    ("conv", lambda d: replace(d, clamp_hi=256), BAD, "clamp [0, 256] must lie within the output range [0, 255]"),
    ("conv", lambda d: replace(d, clamp_lo=-1), BAD, "clamp [-1, 255]"),
    ("offset", lambda d: replace(d, clamp_lo=8), BAD, "clamp [8, 7]"),
    ("dw", lambda d: replace(d, clamp_lo=-129), BAD, "output range [-128, 127]"),
    ("dw", lambda d: replace(d, clamp_hi=128), BAD, "clamp [-128, 128]"),
    ("add", lambda d: replace(d, flags=d.flags | Flag.OUT_SIGNED), BAD, "output range [-128, 127]"),
    ("conv", lambda d: replace(d, out=d.out.with_(addr=10**6)), ErrorCode.ARENA_OUT_OF_BOUNDS, "out reaches byte"),
    ("add", lambda d: replace(d, in1=d.in1.with_(addr=d.in1.addr + 10**6)), ErrorCode.ARENA_OUT_OF_BOUNDS,
     "in1 reaches byte"),
    ("conv", lambda d: replace(d, weights_offset=10**6), ErrorCode.PARAMS_OUT_OF_BOUNDS, "weights reach byte"),
    ("dw", lambda d: replace(d, params_offset=10**6), ErrorCode.PARAMS_OUT_OF_BOUNDS, "requant records reach byte"),
    ("add", lambda d: replace(d, params_offset=10**6), ErrorCode.PARAMS_OUT_OF_BOUNDS, "requant records"),
]


@pytest.mark.parametrize("name,mutate,code,needle", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_check_descriptor_rule(prog, name, mutate, code, needle):
    d = layer(prog, name)
    assert check(prog, d)[0] == ErrorCode.NONE
    got, msg = check(prog, mutate(d))
    assert got == code, msg
    assert needle in msg, msg


def test_check_descriptor_ignores_in1_of_single_input_ops(prog):
    d = layer(prog, "conv")
    assert d.in1 == TensorRef(0, 0, 0, 0, 0, 0, 0)
    assert check(prog, replace(d, in1=TensorRef(10**6, 1, 1, 1)))[0] == ErrorCode.NONE


def test_check_descriptor_arena_edges(prog):
    for d in prog.layers:
        end = max(r.addr + r.span for r in (d.in0, d.out, d.in1)
                  if r is not d.in1 or d.opcode in (Opcode.ADD, Opcode.DEFORM_DW))
        assert check(prog, d, arena=end)[0] == ErrorCode.NONE
        code, msg = check(prog, d, arena=end - 1)
        assert code == ErrorCode.ARENA_OUT_OF_BOUNDS and f"reaches byte {end} of a {end - 1}-byte arena" in msg


def test_check_descriptor_params_edges(prog):
    conv = layer(prog, "conv")
    w_end = conv.weights_offset + (6 * 3 * 3 * 4 + 1) // 2  # 4-bit: two per byte
    r_end = conv.params_offset + 6 * 8
    assert check(prog, conv, params=r_end)[0] == ErrorCode.NONE
    code, msg = check(prog, conv, params=r_end - 1)
    assert code == ErrorCode.PARAMS_OUT_OF_BOUNDS and "requant records" in msg
    assert w_end < conv.params_offset
    code, msg = check(prog, conv, params=w_end - 1)
    assert code == ErrorCode.PARAMS_OUT_OF_BOUNDS and f"weights reach byte {w_end}" in msg
    # Ops without params never touch the blob.
    for name in ("pool", "copy"):
        assert check(prog, layer(prog, name), params=0)[0] == ErrorCode.NONE


def test_check_descriptor_computed_width_limit():
    cfg = EngineConfig(max_width=8)
    d = LayerDescriptor(Opcode.COPY, TensorRef(0, 4, 8, 1), TensorRef(0, 8, 16, 1), flags=Flag.UPSAMPLE2X)
    assert check_descriptor(d, cfg, arena_size=1 << 20, params_size=0)[0] == ErrorCode.NONE  # out may be wider
    d = LayerDescriptor(Opcode.CONV, TensorRef(0, 4, 8, 1), TensorRef(0, 4, 9, 1), kernel=1, weight_bits=4)
    code, msg = check_descriptor(d, cfg, arena_size=1 << 20, params_size=1 << 20)
    assert code == BAD and "computed width 9 exceeds the engine's max_width=8" in msg


def test_register_field_masks():
    from hwconv.spec.registers import mask
    assert (mask("CONTROL", "start"), mask("CONTROL", "soft_reset")) == (1, 2)
    assert mask("STATUS", "error") == 4 and mask("VERSION", "major") == 0xFFFF << 16
    with pytest.raises(KeyError, match="no field 'nope'"):
        mask("STATUS", "nope")


def test_rows_are_prefetched_only_where_the_line_buffer_has_room():
    from hwconv.spec.validate import line_buffer_rows, line_buffer_words, prefetches_rows
    cfg = EngineConfig(line_buffer_bytes=16 * 1024)          # 1024 words of 16 bytes
    small = LayerDescriptor(Opcode.CONV, TensorRef(0, 8, 64, 16), TensorRef(0, 8, 64, 16), kernel=1, weight_bits=4)
    assert prefetches_rows(small, cfg) and line_buffer_rows(small, cfg) == 2   # its row plus the next
    # 320 x 16 bytes a row: 321 words; three (the 3x3 window) fit, four do not
    wide = LayerDescriptor(Opcode.CONV, TensorRef(0, 8, 320, 16), TensorRef(0, 8, 320, 16), kernel=3, pad=1,
                           weight_bits=4)
    assert not prefetches_rows(wide, cfg) and line_buffer_rows(wide, cfg) == 3
    assert line_buffer_words(wide, cfg) == 3 * 321 <= cfg.line_buffer_depth   # still runs, without it
    add = LayerDescriptor(Opcode.ADD, TensorRef(0, 8, 64, 16), TensorRef(0, 8, 64, 16), in1=TensorRef(0, 8, 64, 16))
    assert not prefetches_rows(add, cfg) and line_buffer_rows(add, cfg) == 2
