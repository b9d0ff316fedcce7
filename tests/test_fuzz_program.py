"""Bounded-time fuzz of Program.load (issue 11, must show): damaged files whose checksums are
recomputed, so the damage reaches the section table, descriptors, params and metadata parsers.
Nothing may escape but ProgramFormatError, nothing may allocate beyond the stated cap, and a
program that loads runs on the golden engine within max_arena_bytes."""

from __future__ import annotations

import json
import struct
import tracemalloc
import zlib

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hwconv.compiler import ProgramBuilder
from hwconv.golden.engine import execute
from hwconv.spec import EngineConfig, Program, ProgramFormatError
from hwconv.spec.program import FILE_HEADER_BYTES, max_arena_bytes

CFG = EngineConfig()
FUZZ = settings(max_examples=150, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])
ALLOC_CAP = 32 * 1024 * 1024   # what one load may allocate, far below any claimed size


def _program() -> bytes:
    rng = np.random.default_rng(3)
    b = ProgramBuilder(CFG, extra={"class_names": ["a", "b", "c", "d"]})
    x = b.input("image", 8, 8, 3, scale=1 / 255)
    c1 = b.conv("c1", x, rng.integers(-8, 8, (8, 3, 3, 3)), shift=6, scale=0.1)
    d = b.dwconv("dw", c1, rng.integers(-8, 8, (8, 3, 3)), shift=4, scale=0.1)
    p = b.maxpool("pool", d, kernel=2, stride=2, pad=0)
    b.output("hm", b.conv("head", p, rng.integers(-8, 8, (4, 1, 1, 8)), shift=4, scale=0.1))
    return b.build().to_bytes()


GOOD = _program()
META_OFF = struct.unpack_from("<I", GOOD, 36)[0]


def reseal(data: bytes) -> bytes:
    b = bytearray(data)
    if len(b) >= FILE_HEADER_BYTES:
        struct.pack_into("<I", b, 48, zlib.crc32(bytes(b[FILE_HEADER_BYTES:])))
        struct.pack_into("<I", b, 60, zlib.crc32(bytes(b[:60])))
    return bytes(b)


def _load(data: bytes) -> Program | None:
    tracemalloc.start()
    try:
        try:
            prog = Program.from_bytes(data, source="fuzz.hwc")
        except ProgramFormatError:
            prog = None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < ALLOC_CAP + 3 * len(data), f"a load allocated {peak} bytes"
    if prog is not None:  # what loads must run within its bounded arena
        assert prog.arena_bytes <= max_arena_bytes(prog.config)
        arena = np.zeros(prog.arena_bytes, np.uint8)
        execute(prog.config, prog.device_image(), prog.params, arena)
    return prog


@FUZZ
@given(st.data())
def test_fuzz_bytes_resealed(data):
    raw = bytearray(GOOD)
    for _ in range(data.draw(st.integers(1, 6))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[:data.draw(st.integers(0, len(raw)))]
    _load(reseal(bytes(raw)))


@FUZZ
@given(field=st.sampled_from([16, 20, 24, 28, 32, 36, 40, 44]),
       value=st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 2**31, 2**32 - 1, 3_500_000_000])))
def test_fuzz_header_fields(field, value):
    raw = bytearray(GOOD)
    struct.pack_into("<I", raw, field, value)
    _load(reseal(bytes(raw)))


_json = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(), st.text(max_size=6)),
                     lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                     max_leaves=10)


@FUZZ
@given(path=st.sampled_from([("engine",), ("engine", "pe_in"), ("layers",), ("layers", 0), ("layers", 0, "name"),
                             ("layers", 1, "op"), ("tensors",), ("tensors", 0), ("tensors", 0, "ref"),
                             ("tensors", 0, "ref", "addr"), ("tensors", 1, "scale"), ("tensors", 0, "name"),
                             ("extra",), ("extra", "class_names"), ("format",)]),
       value=_json)
def test_fuzz_metadata_fields(path, value):
    meta = json.loads(GOOD[META_OFF:])
    node = meta
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    body = json.dumps(meta).encode()
    raw = bytearray(GOOD[:META_OFF] + body)
    struct.pack_into("<I", raw, 40, len(body))
    _load(reseal(bytes(raw)))


def test_good_program_still_loads():
    assert _load(GOOD) is not None
