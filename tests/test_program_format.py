"""The versioned binary program file (hwconv.spec.program): round trip, atomic save, and refusal of
every kind of damage with a ProgramFormatError whose message says what is wrong.

The header layout is written out below as the file-format contract (FORMAT_VERSION 1.0); a test
checks it against the implementation's table, so a silent layout change fails here.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hwconv.compiler import ProgramBuilder
from hwconv.golden import run_program
from hwconv.spec import (DESCRIPTOR_BYTES, FILE_HEADER_BYTES, FORMAT_VERSION, PREAMBLE_BYTES, EngineConfig,
                         Opcode, Program, ProgramFormatError, SpecError)
from hwconv.spec import program as program_mod

CFG = EngineConfig()
PROP = settings(max_examples=150, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# -- file header contract (little-endian), byte offsets ------------------------------------------
MAGIC = b"HWCVPROG"
OFF_MAJOR, OFF_MINOR, OFF_HASH, OFF_NLAYERS = 8, 10, 12, 16
OFF_IMAGE_OFF, OFF_IMAGE_BYTES = 20, 24
OFF_PARAMS_OFF, OFF_PARAMS_BYTES = 28, 32
OFF_META_OFF, OFF_META_BYTES = 36, 40
OFF_ARENA, OFF_BODY_CRC, OFF_HEADER_CRC = 44, 48, 60


def test_header_layout_matches_the_documented_contract():
    offs, pos = {}, 0
    for name, fmt in program_mod.FILE_HEADER_FIELDS:
        offs[name] = pos
        pos += struct.calcsize("<" + fmt)
    assert offs == {"magic": 0, "version_major": OFF_MAJOR, "version_minor": OFF_MINOR,
                    "config_hash": OFF_HASH, "n_layers": OFF_NLAYERS, "image_offset": OFF_IMAGE_OFF,
                    "image_bytes": OFF_IMAGE_BYTES, "params_offset": OFF_PARAMS_OFF,
                    "params_bytes": OFF_PARAMS_BYTES, "meta_offset": OFF_META_OFF,
                    "meta_bytes": OFF_META_BYTES, "arena_bytes": OFF_ARENA, "body_crc32": OFF_BODY_CRC}
    assert FILE_HEADER_BYTES == 64 and program_mod.FILE_MAGIC == MAGIC
    assert FORMAT_VERSION == (1, 0)


# -- helpers -------------------------------------------------------------------------------------
def u32(data: bytes, off: int) -> int:
    return struct.unpack_from("<I", data, off)[0]


def put(data: bytes, off: int, fmt: str, value: int) -> bytes:
    b = bytearray(data)
    struct.pack_into(fmt, b, off, value)
    return bytes(b)


def reseal(data: bytes) -> bytes:
    """Recompute the body CRC, then the header CRC, so only the deliberate change is wrong."""
    b = bytearray(data)
    struct.pack_into("<I", b, OFF_BODY_CRC, zlib.crc32(bytes(b[FILE_HEADER_BYTES:])))
    struct.pack_into("<I", b, OFF_HEADER_CRC, zlib.crc32(bytes(b[:OFF_HEADER_CRC])))
    return bytes(b)


def with_meta(data: bytes, meta: bytes) -> bytes:
    """Replace the metadata section (the last one) and fix its size and both CRCs."""
    off = u32(data, OFF_META_OFF)
    assert off + u32(data, OFF_META_BYTES) == len(data)
    return reseal(put(data[:off] + meta, OFF_META_BYTES, "<I", len(meta)))


def meta_of(data: bytes) -> dict:
    off, n = u32(data, OFF_META_OFF), u32(data, OFF_META_BYTES)
    return json.loads(data[off:off + n])


def flip(data: bytes, pos: int, mask: int = 0x01) -> bytes:
    b = bytearray(data)
    b[pos] ^= mask
    return bytes(b)


def rejected(data: bytes, *needles: str, **kw) -> str:
    with pytest.raises(ProgramFormatError) as ei:
        Program.from_bytes(data, source="prog.hwp", **kw)
    msg = str(ei.value)
    assert msg.startswith("prog.hwp: "), msg
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    return msg


def build_program(seed: int = 1234) -> Program:
    """conv 8-bit, conv 4-bit, offset conv clamped to [0, 7], deform + upsample, maxpool, dwconv,
    add, copies into a grouped (shuffled) concat, a conv reading a plain view of it."""
    rng = np.random.default_rng(seed)
    b = ProgramBuilder(CFG, extra={"model": "format-test", "variant": {"seed": seed, "tags": ["a", "b"]}})
    x = b.input("x", 8, 8, 3, scale=1 / 255)
    c1 = b.conv("c1_w8", x, rng.integers(-128, 128, (8, 3, 3, 3)), weight_bits=8, shift=11,
                bias=rng.integers(-500, 500, 8), scale=0.05)
    c2 = b.conv("c2_w4", c1, rng.integers(-8, 8, (8, 1, 1, 8)), shift=6, out_signed=True, scale=0.1)
    off = b.conv("offset", c1, rng.integers(-8, 8, (1, 3, 3, 8)), shift=9, clamp=(0, 7))
    d = b.deform("deform", c1, off, rng.integers(-8, 8, (8, 3, 3)), shift=4, upsample=True)
    mp = b.maxpool("pool", d, kernel=2, stride=2, pad=0)
    dw = b.dwconv("dw", mp, rng.integers(-8, 8, (8, 3, 3)), shift=3, stride=1)
    s = b.add("sum", dw, c2, mult_a=3, mult_b=-2, bias=7, shift=2)
    cat = b.buffer("cat", 8, 8, 16, signed=False, scale=0.2)
    b.copy("cp_sum", s, out=b.view(cat, 0, 8, group_channels=4, group_stride=8))
    b.copy("cp_c1", c1, out=b.view(cat, 4, 8, group_channels=4, group_stride=8))
    y = b.conv("head", b.view(cat, 4, 8), rng.integers(-8, 8, (5, 1, 1, 8)), mult=3, shift=5)
    b.output("cat", cat)
    b.output("y", y)
    b.output("offset", off)
    return b.build()


@pytest.fixture(scope="module")
def prog() -> Program:
    return build_program()


@pytest.fixture(scope="module")
def data(prog) -> bytes:
    return prog.to_bytes()


@pytest.fixture(scope="module")
def image_input() -> dict:
    return {"x": np.random.default_rng(7).integers(0, 256, (8, 8, 3))}


# -- round trip --------------------------------------------------------------------------------
def test_program_is_varied(prog):
    ops = [d.opcode for d in prog.layers]
    assert set(ops) == set(Opcode)
    assert {d.weight_bits for d in prog.layers if d.opcode == Opcode.CONV} == {4, 8}
    assert any(d.upsample for d in prog.layers)
    assert any(d.out.group_channels != d.out.channels for d in prog.layers)   # grouped view
    assert any(d.in0.pixel_stride > d.in0.channels for d in prog.layers)      # plain view
    off = prog.layers[prog.layer_names.index("offset")]
    assert (off.clamp_lo, off.clamp_hi) == (0, 7)


def test_round_trip_preserves_everything(prog, data):
    back = Program.from_bytes(data)
    assert back.layers == prog.layers
    assert back.params == prog.params
    assert back.layer_names == prog.layer_names
    assert back.tensors == prog.tensors
    assert back.arena_bytes == prog.arena_bytes
    assert back.extra == prog.extra
    assert back.config == prog.config
    assert back == prog
    assert back.to_bytes() == data  # re-encoding is byte-identical


def test_header_fields_describe_the_sections(prog, data):
    assert data[:8] == MAGIC
    assert struct.unpack_from("<HH", data, OFF_MAJOR) == FORMAT_VERSION
    assert u32(data, OFF_HASH) == CFG.config_hash
    assert u32(data, OFF_NLAYERS) == len(prog.layers)
    assert u32(data, OFF_IMAGE_OFF) == FILE_HEADER_BYTES
    assert u32(data, OFF_IMAGE_BYTES) == PREAMBLE_BYTES + len(prog.layers) * DESCRIPTOR_BYTES
    assert u32(data, OFF_PARAMS_OFF) == FILE_HEADER_BYTES + u32(data, OFF_IMAGE_BYTES)
    assert u32(data, OFF_PARAMS_BYTES) == len(prog.params)
    assert u32(data, OFF_META_OFF) + u32(data, OFF_META_BYTES) == len(data)
    assert u32(data, OFF_ARENA) == prog.arena_bytes
    assert data[FILE_HEADER_BYTES:FILE_HEADER_BYTES + u32(data, OFF_IMAGE_BYTES)] == prog.device_image()
    assert data[u32(data, OFF_PARAMS_OFF):u32(data, OFF_META_OFF)] == prog.params


def test_golden_outputs_identical_after_round_trip(prog, data, image_input, tmp_path):
    before = run_program(prog, image_input)
    path = tmp_path / "model.hwp"
    Program.from_bytes(data).save(path)
    after = run_program(Program.load(path), image_input)
    assert set(before) == set(after) == {"cat", "y", "offset"}
    for name in before:
        assert before[name].dtype == after[name].dtype
        assert np.array_equal(before[name], after[name]), name
    assert before["offset"].min() >= 0 and before["offset"].max() <= 7
    assert len(np.unique(before["offset"])) > 1  # the dilation map is not degenerate
    assert before["y"].any() and before["cat"].any()


# -- save / load via a path --------------------------------------------------------------------
def test_save_load_path(prog, tmp_path):
    path = tmp_path / "sub" / "dir" / "p.hwp"
    prog.save(path)
    assert Program.load(path) == prog
    assert Program.load(str(path), expect=CFG) == prog
    assert [p.name for p in path.parent.iterdir()] == ["p.hwp"]


def test_load_missing_file(tmp_path):
    path = tmp_path / "nope.hwp"
    with pytest.raises(ProgramFormatError, match="cannot read program") as ei:
        Program.load(path)
    assert str(path) in str(ei.value)


def test_load_error_names_the_path(data, tmp_path):
    path = tmp_path / "bad.hwp"
    path.write_bytes(data[:-1])
    with pytest.raises(ProgramFormatError) as ei:
        Program.load(path)
    assert str(ei.value).startswith(f"{path}: truncated")


def test_save_failing_encode_leaves_old_file(prog, tmp_path, monkeypatch):
    path = tmp_path / "p.hwp"
    path.write_bytes(b"old contents")

    def boom(self):
        raise SpecError("validation exploded")

    monkeypatch.setattr(Program, "validate", boom)
    with pytest.raises(SpecError, match="validation exploded"):
        prog.save(path)
    assert path.read_bytes() == b"old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.hwp"]


def test_save_failing_rename_leaves_old_file_and_no_temp(prog, tmp_path, monkeypatch):
    import hwconv.fileio as fileio

    path = tmp_path / "p.hwp"
    path.write_bytes(b"old contents")

    def no_replace(src, dst):
        assert Path(src).parent == tmp_path and Path(src).read_bytes() == prog.to_bytes()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fileio.os, "replace", no_replace)
    with pytest.raises(OSError, match="No space left"):
        prog.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == b"old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.hwp"]
    prog.save(path)  # and a later save succeeds over it
    assert Program.load(path) == prog
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.hwp"]


def test_to_bytes_refuses_an_invalid_program(prog):
    import dataclasses

    bad = dataclasses.replace(prog, layer_names=prog.layer_names[:-1])
    with pytest.raises(SpecError, match="layer names"):
        bad.to_bytes()


# -- corruption: each kind gets its own message --------------------------------------------------
def test_empty_file(data):
    rejected(b"", "truncated: 0 bytes", f"header alone is {FILE_HEADER_BYTES}")


@pytest.mark.parametrize("cut", [1, 8, 30, FILE_HEADER_BYTES - 1])
def test_truncated_header(data, cut):
    rejected(data[:cut], f"truncated: {cut} bytes")


def test_truncated_body_every_cut(data):
    cuts = np.unique(np.linspace(FILE_HEADER_BYTES, len(data) - 1, 40).astype(int))
    assert len(cuts) >= 35
    for cut in cuts:
        rejected(data[:cut], "truncated: the header describes", f"{len(data)} bytes", f"file has {cut}")


def test_wrong_magic(data):
    rejected(b"PK\x03\x04" + data[4:], "not a hwconv program")
    rejected(reseal(b"HWCVPROH" + data[8:]), "not a hwconv program")


def test_header_byte_flipped_anywhere(data):
    for pos in range(8, FILE_HEADER_BYTES):
        rejected(flip(data, pos), "header checksum mismatch")
        rejected(flip(data, pos, 0x80), "header checksum mismatch")


def test_body_byte_flipped_anywhere(prog, data):
    image_end = FILE_HEADER_BYTES + u32(data, OFF_IMAGE_BYTES)
    meta_off = u32(data, OFF_META_OFF)
    positions = set(np.linspace(FILE_HEADER_BYTES, len(data) - 1, 120).astype(int).tolist())
    positions |= {FILE_HEADER_BYTES, image_end - 1, image_end, meta_off - 1, meta_off, len(data) - 1}
    regions = set()
    for pos in sorted(positions):
        regions.add("image" if pos < image_end else "params" if pos < meta_off else "meta")
        rejected(flip(data, pos), "body checksum mismatch")
    assert regions == {"image", "params", "meta"}


def test_body_crc_field_itself_wrong(data):
    b = put(data, OFF_BODY_CRC, "<I", u32(data, OFF_BODY_CRC) ^ 1)
    rejected(reseal_header_only(b), "body checksum mismatch")


def reseal_header_only(data: bytes) -> bytes:
    return put(data, OFF_HEADER_CRC, "<I", zlib.crc32(data[:OFF_HEADER_CRC]))


@pytest.mark.parametrize("n", [1, 7, 64, 4096])
def test_trailing_garbage(data, n):
    rejected(data + b"\0" * n, f"{n} unexpected bytes after the last section")


def test_trailing_garbage_even_with_valid_crc(data):
    # Extra bytes covered by a recomputed body CRC are still refused.
    rejected(reseal(data + b"junk"), "4 unexpected bytes")


@pytest.mark.parametrize("major,minor", [(FORMAT_VERSION[0] + 1, FORMAT_VERSION[1]),
                                         (FORMAT_VERSION[0], FORMAT_VERSION[1] + 1),
                                         (FORMAT_VERSION[0] - 1, FORMAT_VERSION[1]),
                                         (FORMAT_VERSION[0] + 1, 0)])
def test_version_refused(data, major, minor):
    b = put(put(data, OFF_MAJOR, "<H", major), OFF_MINOR, "<H", minor)
    # Bump the preamble too, so only the version (not a header/preamble disagreement) is wrong.
    b = put(put(b, FILE_HEADER_BYTES + 4, "<H", major), FILE_HEADER_BYTES + 6, "<H", minor)
    rejected(reseal(b), f"program format version {major}.{minor}",
             f"reads {FORMAT_VERSION[0]}.0 to {FORMAT_VERSION[0]}.{FORMAT_VERSION[1]}", "re-export")


def test_wrong_engine_with_expect(data):
    other = EngineConfig(pe_in=8)
    msg = rejected(data, "built for engine config hash", f"0x{CFG.config_hash:08x}",
                   f"0x{other.config_hash:08x}", other.name, "re-export", expect=other)
    assert "w4a8_8x16" in msg
    assert Program.from_bytes(data, expect=EngineConfig()).config == CFG


def test_unknown_opcode_names_the_layer(prog, data):
    i = 3
    pos = FILE_HEADER_BYTES + PREAMBLE_BYTES + i * DESCRIPTOR_BYTES  # opcode is the first byte
    assert data[pos] == prog.layers[i].opcode
    msg = rejected(reseal(put(data, pos, "<B", 0xEE)), f"layer {i} ({prog.layer_names[i]})",
                   "unknown opcode 0xee")
    assert "CONV=0x01" in msg  # lists the known opcodes


def test_unknown_flag_bits_name_the_layer(prog, data):
    i = 1
    pos = FILE_HEADER_BYTES + PREAMBLE_BYTES + i * DESCRIPTOR_BYTES + 1  # flags
    rejected(reseal(put(data, pos, "<B", data[pos] | 0x40)), f"layer {i} ({prog.layer_names[i]})",
             "unknown flag bits 0x40")


def test_invalid_descriptor_field_names_the_layer(prog, data):
    i = prog.layer_names.index("head")
    pos = FILE_HEADER_BYTES + PREAMBLE_BYTES + i * DESCRIPTOR_BYTES + 2  # kernel
    rejected(reseal(put(data, pos, "<B", 5)), f"layer {i} (head)", "kernel=5", "BAD_DESCRIPTOR")


def test_preamble_disagreeing_with_header(data):
    rejected(reseal(put(data, FILE_HEADER_BYTES, "<I", 0x12345678)), "preamble disagrees")
    rejected(reseal(put(data, FILE_HEADER_BYTES + 12, "<I", 1)), "preamble disagrees")


def test_n_layers_disagreeing_with_image_size(data):
    n = u32(data, OFF_NLAYERS)
    rejected(reseal(put(data, OFF_NLAYERS, "<I", n + 1)), "device image is",
             f"for {n + 1} layers")


def test_header_config_hash_disagreeing_with_metadata(data):
    rejected(reseal(put(data, OFF_HASH, "<I", u32(data, OFF_HASH) ^ 1)),
             "metadata engine config does not match")


def test_arena_bytes_too_small_in_header(prog, data):
    rejected(reseal(put(data, OFF_ARENA, "<I", 16)), "ARENA_OUT_OF_BOUNDS")


@pytest.mark.parametrize("meta", [
    b"{not json",
    b"",
    b"\xff\xfe\x00",
    b"[1, 2, 3]",
    b'"a string"',
    b"{}",
], ids=["syntax", "empty", "not-utf8", "list", "string", "no-keys"])
def test_metadata_malformed(data, meta):
    rejected(with_meta(data, meta), "metadata section is malformed")


def _meta_variant(data: bytes, mutate) -> bytes:
    m = meta_of(data)
    mutate(m)
    return with_meta(data, json.dumps(m, sort_keys=True).encode())


def test_metadata_malformed_fields(data):
    def drop_layers(m):
        del m["layers"]

    def engine_unknown_field(m):
        m["engine"]["bogus"] = 1

    def layers_not_objects(m):
        m["layers"] = [1] * len(m["layers"])

    def tensor_ref_extra_key(m):
        m["tensors"][0]["ref"]["bogus"] = 1

    def scale_not_number(m):
        m["tensors"][0]["scale"] = "wide"

    def extra_not_mapping(m):
        m["extra"] = 5

    for mutate in (drop_layers, engine_unknown_field, layers_not_objects, tensor_ref_extra_key,
                   scale_not_number, extra_not_mapping):
        rejected(_meta_variant(data, mutate), "metadata section is malformed")
    msg = rejected(_meta_variant(data, engine_unknown_field), "bogus")
    assert "metadata" in msg


def test_metadata_semantic_errors(data):
    def wrong_engine(m):
        m["engine"]["pe_in"] = 8

    def missing_layer_name(m):
        m["layers"].pop()

    def duplicate_layer_name(m):
        m["layers"][1]["name"] = m["layers"][0]["name"]

    def bad_role(m):
        m["tensors"][0]["role"] = "scratch"

    def tensor_outside_arena(m):
        m["tensors"][0]["ref"]["addr"] = 1 << 30

    rejected(_meta_variant(data, wrong_engine), "metadata engine config does not match")
    rejected(_meta_variant(data, missing_layer_name), "metadata names 9 layers")
    rejected(_meta_variant(data, duplicate_layer_name), "duplicate layer name")
    rejected(_meta_variant(data, bad_role), "role 'scratch'")
    rejected(_meta_variant(data, tensor_outside_arena), "reaches outside")


@pytest.mark.parametrize("value", ["8", None, [8]])
def test_metadata_tensor_ref_wrong_type(data, value):
    def height_wrong_type(m):
        m["tensors"][0]["ref"]["height"] = value

    rejected(_meta_variant(data, height_wrong_type), "tensor")


@pytest.mark.parametrize("key,value", [("addr", -200), ("height", 8.5), ("pixel_stride", 5.5)])
def test_metadata_tensor_ref_bad_value(data, key, value):
    def mutate(m):
        m["tensors"][2]["ref"][key] = value

    rejected(_meta_variant(data, mutate), "tensor")


def test_sections_must_not_overlap_the_header(data):
    rejected(reseal(put(data, OFF_PARAMS_OFF, "<I", 0)), "params")


def test_metadata_deeply_nested(data):
    rejected(with_meta(data, b"[" * 100_000), "metadata section is malformed")


# -- never another exception type -------------------------------------------------------------------
def _assert_refused_or_identical(orig: bytes, damaged: bytes) -> None:
    try:
        back = Program.from_bytes(damaged)
    except ProgramFormatError as exc:
        assert str(exc).startswith("program: ") and len(str(exc)) > len("program: ")
        return
    assert damaged == orig, "damaged bytes were accepted"
    assert back.to_bytes() == orig


@PROP
@given(flips=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=4),
       cut=st.one_of(st.none(), st.integers(0, 1 << 20)))
def test_random_damage_only_raises_program_format_error(data, flips, cut):
    b = bytearray(data)
    for pos, mask in flips:
        b[pos % len(b)] ^= mask
    if cut is not None:
        del b[cut % (len(data) + 1):]
    _assert_refused_or_identical(data, bytes(b))


@PROP
@given(flips=st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(1, 255)), min_size=1, max_size=3),
       region=st.sampled_from(["header", "image", "params", "meta", "any"]))
def test_random_damage_with_valid_crcs_only_raises_program_format_error(data, flips, region):
    """Checksums recomputed: the structural checks behind them must hold on their own."""
    image_end = FILE_HEADER_BYTES + u32(data, OFF_IMAGE_BYTES)
    meta_off = u32(data, OFF_META_OFF)
    lo, hi = {"header": (8, OFF_BODY_CRC), "image": (FILE_HEADER_BYTES, image_end),
              "params": (image_end, meta_off), "meta": (meta_off, len(data)), "any": (0, len(data))}[region]
    b = bytearray(data)
    for pos, mask in flips:
        p = lo + pos % (hi - lo)
        if OFF_BODY_CRC <= p < FILE_HEADER_BYTES:
            continue  # CRC fields are rewritten anyway
        b[p] ^= mask
    damaged = reseal(bytes(b))
    try:
        Program.from_bytes(damaged)
    except ProgramFormatError:
        pass
