"""Program files as untrusted input (issue 11 items 3, 4, 5, 8, 10): sizes bounded before
allocation, reserved requant bits refused by the reader and the golden engine alike, metadata
checked (class names, duplicate tensors, deep JSON), names printed escaped, engine files by suffix."""

from __future__ import annotations

import json
import os
import struct
import tracemalloc
import zlib

import numpy as np
import pytest

from hwconv.cli import main
from hwconv.compiler import ProgramBuilder
from hwconv.golden.engine import execute
from hwconv.describe import format_program
from hwconv.spec import EngineConfig, ErrorCode, Program, ProgramFormatError, SpecError
from hwconv.spec.errors import printable
from hwconv.spec.params import REQUANT_RECORD_BYTES
from hwconv.spec.program import ARENA_MAX_BYTES, FILE_HEADER_BYTES, max_arena_bytes

CFG = EngineConfig()
OFF_META_OFF, OFF_META_BYTES, OFF_ARENA, OFF_BODY_CRC, OFF_HEADER_CRC = 36, 40, 44, 48, 60


def reseal(data: bytes) -> bytes:
    b = bytearray(data)
    struct.pack_into("<I", b, OFF_BODY_CRC, zlib.crc32(bytes(b[FILE_HEADER_BYTES:])))
    struct.pack_into("<I", b, OFF_HEADER_CRC, zlib.crc32(bytes(b[:OFF_HEADER_CRC])))
    return bytes(b)


def with_meta(data: bytes, meta: bytes) -> bytes:
    off = struct.unpack_from("<I", data, OFF_META_OFF)[0]
    b = bytearray(data[:off] + meta)
    struct.pack_into("<I", b, OFF_META_BYTES, len(meta))
    return reseal(bytes(b))


def meta_of(data: bytes) -> dict:
    off, n = struct.unpack_from("<II", data, OFF_META_OFF)
    return json.loads(data[off:off + n])


def small_program(names=("c1", "c2"), extra=None, hm_classes: int | None = None) -> Program:
    rng = np.random.default_rng(0)
    b = ProgramBuilder(CFG, extra=extra or {})
    x = b.input("x", 8, 8, 3, scale=1 / 255)
    c1 = b.conv(names[0], x, rng.integers(-8, 8, (8, 1, 1, 3)), shift=4, scale=0.1)
    y = b.conv(names[1], c1, rng.integers(-8, 8, (hm_classes or 4, 1, 1, 8)), shift=4, scale=0.1)
    b.output("hm" if hm_classes else "y", y)
    return b.build()


# ------------------------------------------------------------------------------ memory bombs (item 3)

def test_arena_bomb_refused_before_allocating():
    data = small_program().to_bytes()
    b = bytearray(data)
    struct.pack_into("<I", b, OFF_ARENA, 3_500_000_000)     # the 3.5 GB claim
    bomb = reseal(bytes(b))
    assert len(bomb) < 57_000
    tracemalloc.start()
    try:
        with pytest.raises(ProgramFormatError, match=r"claims an arena of 3500000000 bytes, more than the "
                                                     rf"{ARENA_MAX_BYTES}"):
            Program.from_bytes(bomb, source="bomb.hwc")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 * 1024 * 1024


def test_arena_beyond_what_the_program_reaches_is_refused():
    data = small_program().to_bytes()
    b = bytearray(data)
    struct.pack_into("<I", b, OFF_ARENA, 512 * 1024 * 1024)  # under the absolute cap, far above the reach
    with pytest.raises(ProgramFormatError, match="no layer or tensor reaches past byte"):
        Program.from_bytes(reseal(bytes(b)), source="p.hwc")


def test_arena_cap_follows_the_address_width():
    assert max_arena_bytes(CFG) == ARENA_MAX_BYTES
    assert max_arena_bytes(CFG.with_(addr_width=64)) == ARENA_MAX_BYTES


def test_load_refuses_devices_and_fifos(tmp_path):
    with pytest.raises(ProgramFormatError, match="/dev/zero: program must be a regular file, this is a device"):
        Program.load("/dev/zero")
    fifo = tmp_path / "p.hwc"
    os.mkfifo(fifo)
    with pytest.raises(ProgramFormatError, match="this is a FIFO"):
        Program.load(fifo)


def test_inspect_dev_zero_is_one_line(capsys):
    assert main(["inspect", "/dev/zero"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "/dev/zero: program must be a regular file" in err


# ------------------------------------------------------------------------------ silent wrong results (item 4)

def _with_reserved_bit(prog: Program, layer: int, channel: int, bit: int) -> bytes:
    """The program file with bit `bit` of one requant word set (body CRC recomputed)."""
    data = bytearray(prog.to_bytes())
    d = prog.layers[layer]
    params_off = FILE_HEADER_BYTES + len(prog.device_image())
    pos = params_off + d.params_offset + channel * REQUANT_RECORD_BYTES + 4
    word = struct.unpack_from("<I", data, pos)[0]
    struct.pack_into("<I", data, pos, word | (1 << bit))
    return reseal(bytes(data))


@pytest.mark.parametrize("bit", [30, 31])
def test_reserved_requant_bits_refused_by_the_reader(bit):
    prog = small_program()
    bad = _with_reserved_bit(prog, 1, 2, bit)
    with pytest.raises(ProgramFormatError, match=r"layer 1 \(c2\): requant record of output channel 2 sets "
                                                 r"reserved bits 31:30 .*\[BAD_REQUANT\]"):
        Program.from_bytes(bad, source="p.hwc")


@pytest.mark.parametrize("bit", [30, 31])
def test_reserved_requant_bits_stop_the_golden_engine(bit):
    prog = small_program()
    params = bytearray(prog.params)
    pos = prog.layers[1].params_offset + 3 * REQUANT_RECORD_BYTES + 4
    params[pos + 3] |= 1 << (bit - 24)
    arena = np.zeros(prog.arena_bytes, np.uint8)
    res = execute(CFG, prog.device_image(), bytes(params), arena)
    assert (res.error, res.error_layer, res.layers_done) == (ErrorCode.BAD_REQUANT, 1, 1)
    assert "output channel 3" in res.message
    # the untouched blob runs
    assert execute(CFG, prog.device_image(), prog.params, np.zeros(prog.arena_bytes, np.uint8)).error == 0


def test_class_names_must_match_the_heatmap():
    names = ["a", "b", "c"]
    ok = small_program(extra={"class_names": names}, hm_classes=3)
    assert Program.from_bytes(ok.to_bytes()).extra["class_names"] == names
    data = ok.to_bytes()
    meta = meta_of(data)
    meta["extra"]["class_names"] = ["a", "b"]
    with pytest.raises(ProgramFormatError, match=r"class_names names 2 classes, the 'hm' output has 3"):
        Program.from_bytes(with_meta(data, json.dumps(meta).encode()), source="p.hwc")
    meta["extra"]["class_names"] = ["a", 2, "c"]
    with pytest.raises(ProgramFormatError, match="class_names must be a list of strings"):
        Program.from_bytes(with_meta(data, json.dumps(meta).encode()), source="p.hwc")
    with pytest.raises(SpecError, match="class_names names 20 classes"):
        small_program(extra={"class_names": [str(i) for i in range(20)]}, hm_classes=10)


def test_deep_metadata_json_is_one_line():
    data = small_program().to_bytes()
    deep = ("[" * 100_000 + "]" * 100_000).encode()
    with pytest.raises(ProgramFormatError, match="metadata: JSON nests 100000 levels deep") as ei:
        Program.from_bytes(with_meta(data, deep), source="p.hwc")
    assert "\n" not in str(ei.value)
    meta = meta_of(data)
    meta["extra"]["x"] = json.loads("[" * 30 + "]" * 30)
    with pytest.raises(ProgramFormatError, match="nests 32 levels deep"):
        Program.from_bytes(with_meta(data, json.dumps(meta).encode()), source="p.hwc")


def test_deep_json_through_the_cli(tmp_path, capsys):
    p = tmp_path / "deep.hwc"
    p.write_bytes(with_meta(small_program().to_bytes(), ("{\"a\":" * 100_000 + "1" + "}" * 100_000).encode()))
    assert main(["inspect", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "levels deep" in err


def test_metadata_not_an_object():
    with pytest.raises(ProgramFormatError, match="metadata must be a JSON object"):
        Program.from_bytes(with_meta(small_program().to_bytes(), b"[1, 2]"), source="p.hwc")


# ------------------------------------------------------------------------------ names (item 8)

def test_duplicate_tensor_names_refused():
    data = small_program().to_bytes()
    meta = meta_of(data)
    meta["tensors"][1]["name"] = meta["tensors"][0]["name"]
    with pytest.raises(ProgramFormatError, match="tensor 'x': duplicate tensor name"):
        Program.from_bytes(with_meta(data, json.dumps(meta).encode()), source="p.hwc")


def test_names_from_a_file_are_printed_escaped(tmp_path, capsys):
    evil = "c1\x1b[2J\nforged row  0 CONV"
    prog = small_program(names=(evil, "c2"))
    assert Program.from_bytes(prog.to_bytes()).layer_names[0] == evil   # kept, only printed escaped
    text = format_program(prog, "p.hwc")
    assert "\x1b" not in text and "\nforged" not in text
    assert "c1\\x1b[2J\\nforged row" in text
    p = tmp_path / "evil.hwc"
    p.write_bytes(prog.to_bytes())
    assert main(["inspect", str(p)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\nforged" not in out


def test_tensor_names_escaped_in_inspect():
    data = small_program().to_bytes()
    meta = meta_of(data)
    meta["tensors"][0]["name"] = "x\x1b[31m\r\n  output fake"
    # the input's name is also in no descriptor, so only the table shows it
    prog = Program.from_bytes(with_meta(data, json.dumps(meta).encode()))
    text = format_program(prog)
    assert "\x1b" not in text and "\r" not in text and "x\\x1b[31m\\r\\n  output fake" in text


def test_printable():
    assert printable("conv1") == "conv1"
    assert printable("a\nb\x1b[0m\t") == "a\\nb\\x1b[0m\\t"
    assert printable("é✓") == "é✓"
    assert printable("x" * 500) == "x" * 77 + "..."
    assert printable(3) == "3"


# ------------------------------------------------------------------------------ engine files (item 10)

def test_engine_file_suffix_decides_the_parser(tmp_path):
    y = tmp_path / "engine.yaml"
    y.write_text(CFG.to_json())   # JSON text, but the name says YAML
    with pytest.raises(SpecError, match=r"engine.yaml: engine config must be a \.toml or \.json file"):
        EngineConfig.load(y)
    t = tmp_path / "engine.toml"
    CFG.save(t)
    assert EngineConfig.load(t) == CFG
    j = tmp_path / "engine.json"
    CFG.save(j)
    assert EngineConfig.load(j) == CFG


def test_engine_file_deep_or_huge(tmp_path):
    j = tmp_path / "e.json"
    j.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(SpecError, match="e.json: JSON nests 100000 levels deep"):
        EngineConfig.load(j)
    t = tmp_path / "e.toml"
    t.write_text("a = " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(SpecError, match="e.toml: not valid toml"):
        EngineConfig.load(t)
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    with pytest.raises(SpecError, match="fifo.toml: engine config must be a regular file, this is a FIFO"):
        EngineConfig.load(fifo)
    (tmp_path / "big.json").write_bytes(b" " * (2 << 20))
    with pytest.raises(SpecError, match="more than the 1048576-byte limit"):
        EngineConfig.load(tmp_path / "big.json")
    with pytest.raises(SpecError, match="engine config must be a table"):
        (tmp_path / "l.json").write_text("[1]")
        EngineConfig.load(tmp_path / "l.json")


def test_missing_tensor_message_escapes_names():
    data = small_program().to_bytes()
    meta = meta_of(data)
    meta["tensors"][0]["name"] = "x\x1b[31m"
    prog = Program.from_bytes(with_meta(data, json.dumps(meta).encode()))
    with pytest.raises(KeyError) as ei:
        prog.tensor("nope")
    msg = ei.value.args[0]
    assert "\x1b" not in msg and "it has: x\\x1b[31m, y" in msg
