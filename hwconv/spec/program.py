"""The versioned binary program file: what `hwconv export` writes and every backend runs.

File layout (little-endian), sections in this order, each offset/size in the header:

    header   FILE_HEADER_BYTES: magic, version, engine config hash, section table, CRC32s
    image    the device image the engine fetches from DESC_BASE: preamble + one descriptor per layer
    params   the params blob the engine reads from PARAMS_BASE: packed weights, requant records
    meta     UTF-8 JSON for the host: engine config, layer names, input/output tensor table

The header CRC covers the header, the body CRC everything after it, so truncation, corruption,
another format version or another engine are each refused with a message saying which.

A program file is untrusted input. `Program.load` reads the header first and then exactly the
size it declares, at most PROGRAM_MAX_BYTES; the arena it claims is bounded before anything is
allocated (`max_arena_bytes`: ARENA_MAX_BYTES, the engine's address space, and no more than the
highest byte a layer or tensor reaches, rounded up to ARENA_ALIGN); the metadata JSON nests at
most JSON_MAX_DEPTH deep; names are unique and printed escaped (errors.printable).
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .config import EngineConfig
from ..fileio import loads_json
from .errors import ProgramFormatError, SpecError, printable
from .isa import (DESCRIPTOR_BYTES, PREAMBLE_BYTES, PREAMBLE_FORMAT, PREAMBLE_MAGIC, REQUANT_OPS,
                  WEIGHTED_OPS, Flag, LayerDescriptor, TensorRef)
from .params import unpack_requant, unpack_weights
from .registers import pack_fields
from .validate import (check_accumulator, check_descriptor, check_requant_records, used_inputs, weight_count,
                       weight_shape)

FORMAT_VERSION = (1, 0)  # (major, minor): a reader accepts its major and any minor <= its own
VERSION_WORD = pack_fields("VERSION", major=FORMAT_VERSION[0], minor=FORMAT_VERSION[1])  # what VERSION reads
FILE_MAGIC = b"HWCVPROG"
FILE_HEADER_FIELDS = (
    ("magic", "8s"),
    ("version_major", "H"),
    ("version_minor", "H"),
    ("config_hash", "I"),
    ("n_layers", "I"),
    ("image_offset", "I"),
    ("image_bytes", "I"),
    ("params_offset", "I"),
    ("params_bytes", "I"),
    ("meta_offset", "I"),
    ("meta_bytes", "I"),
    ("arena_bytes", "I"),
    ("body_crc32", "I"),
)
FILE_HEADER_BYTES = 64
_HDR_USED = "<" + "".join(f for _, f in FILE_HEADER_FIELDS)
_HDR_FORMAT = _HDR_USED + f"{FILE_HEADER_BYTES - 4 - struct.calcsize(_HDR_USED)}x" + "I"  # + header CRC
assert struct.calcsize(_HDR_FORMAT) == FILE_HEADER_BYTES

PROGRAM_MAX_BYTES = 256 * 1024 * 1024  # a CoDeNet-sized program is ~1 MB; the reader reads no more
ARENA_MAX_BYTES = 1 << 30              # 1 GiB: half the Ultra96-V2's DRAM; CoDeNet's arena is a few MB
ARENA_ALIGN = 1 << 16                  # slack allowed above the highest byte the program reaches
META_MAX_DEPTH = 16                    # the metadata JSON nests 4 deep
HEATMAP_OUTPUT = "hm"                  # the detector's class heatmap output: one channel per class


def max_arena_bytes(config: EngineConfig) -> int:
    """The largest arena a program for `config` may claim: ARENA_MAX_BYTES, within the engine's
    address space and the 32-bit ARENA_SIZE register."""
    return min(ARENA_MAX_BYTES, 1 << config.addr_width, (1 << 32) - 1)


@dataclass(frozen=True)
class TensorInfo:
    """A program input or output: where it lives, its sign and the float scale of one LSB."""

    name: str
    role: str  # "input" | "output"
    ref: TensorRef
    signed: bool
    scale: float

    def to_dict(self) -> dict:
        return {"name": self.name, "role": self.role, "signed": self.signed, "scale": self.scale,
                "ref": {k: getattr(self.ref, k) for k in ("addr", "height", "width", "channels",
                                                          "pixel_stride", "group_channels", "group_stride")}}

    @classmethod
    def from_dict(cls, d: dict) -> "TensorInfo":
        """Strict: metadata comes from a file, so every field is type-checked, nothing coerced."""
        name, role, signed, scale = d["name"], d["role"], d["signed"], d["scale"]
        if not isinstance(name, str) or not isinstance(role, str):
            raise SpecError(f"tensor {name!r}: name and role must be strings")
        if not isinstance(signed, bool):
            raise SpecError(f"tensor {name!r}: signed must be true or false, got {signed!r}")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) \
                or scale <= 0:
            raise SpecError(f"tensor {name!r}: scale must be a positive finite number, got {scale!r}")
        ref = d["ref"]
        if not isinstance(ref, dict):
            raise SpecError(f"tensor {name!r}: ref must be an object")
        tref = TensorRef(**ref)
        tref.check(f"tensor {name!r}")
        return cls(name=name, role=role, ref=tref, signed=signed, scale=float(scale))


@dataclass
class Program:
    config: EngineConfig
    layers: list[LayerDescriptor]
    layer_names: list[str]
    params: bytes
    arena_bytes: int
    tensors: list[TensorInfo]
    extra: dict = field(default_factory=dict)  # free-form provenance (model, variant, ...)

    # -- views ------------------------------------------------------------------------------
    @property
    def inputs(self) -> list[TensorInfo]:
        return [t for t in self.tensors if t.role == "input"]

    @property
    def outputs(self) -> list[TensorInfo]:
        return [t for t in self.tensors if t.role == "output"]

    def tensor(self, name: str) -> TensorInfo:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(f"program has no tensor {name!r}; it has: {', '.join(printable(t.name) for t in self.tensors)}")

    def layer_weights(self, i: int) -> np.ndarray | None:
        d = self.layers[i]
        if d.opcode not in WEIGHTED_OPS:
            return None
        n = weight_count(d)
        raw = np.frombuffer(self.params, dtype=np.uint8, offset=d.weights_offset)
        return unpack_weights(raw, n, d.weight_bits).reshape(weight_shape(d))

    def layer_requant(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        d = self.layers[i]
        if d.opcode not in REQUANT_OPS:
            return None
        return unpack_requant(memoryview(self.params)[d.params_offset:], d.out.channels)

    # -- validation ---------------------------------------------------------------------------
    def validate(self) -> None:
        """Everything the engine would check at runtime, plus the compile-time overflow proof."""
        cfg = self.config
        if not 1 <= len(self.layers) <= cfg.max_layers:
            raise SpecError(f"program has {len(self.layers)} layers; the engine runs 1..{cfg.max_layers}")
        if len(self.layer_names) != len(self.layers):
            raise SpecError(f"{len(self.layer_names)} layer names for {len(self.layers)} layers")
        limit = max_arena_bytes(cfg)
        if not 0 < self.arena_bytes <= limit:
            raise SpecError(f"arena of {self.arena_bytes} bytes; a program for this engine may claim "
                            f"1..{limit} (spec.program.max_arena_bytes)")
        seen = set()
        for i, (d, name) in enumerate(zip(self.layers, self.layer_names)):
            where = f"layer {i} ({printable(name)})"
            if name in seen:
                raise SpecError(f"{where}: duplicate layer name")
            seen.add(name)
            if d.layer_id != i:
                raise SpecError(f"{where}: layer_id is {d.layer_id}, expected {i}")
            code, msg = check_descriptor(d, cfg, arena_size=self.arena_bytes, params_size=len(self.params))
            if not code:
                code, msg = check_requant_records(d, self.params)
            if code:
                raise SpecError(f"{where}: {msg} [{code.name}]")
            rq = self.layer_requant(i)
            if rq is not None:
                check_accumulator(d, self.layer_weights(i), rq[0], cfg, where=where)
        names = set()
        for t in self.tensors:
            if t.name in names:
                raise SpecError(f"tensor {t.name!r}: duplicate tensor name")
            names.add(t.name)
            if t.role not in ("input", "output"):
                raise SpecError(f"tensor {t.name!r}: role {t.role!r}, must be input or output")
            t.ref.check(f"tensor {t.name!r}")
            if t.ref.addr + t.ref.span > self.arena_bytes:
                raise SpecError(f"tensor {t.name!r} reaches outside the {self.arena_bytes}-byte arena")
        reach = self.highest_byte()
        if self.arena_bytes > -(-reach // ARENA_ALIGN) * ARENA_ALIGN:
            raise SpecError(f"arena of {self.arena_bytes} bytes, but no layer or tensor reaches past byte "
                            f"{reach}: the arena may exceed that by at most {ARENA_ALIGN} bytes of alignment")
        self._check_class_names()

    def highest_byte(self) -> int:
        """One past the highest arena byte any layer or program tensor uses."""
        refs = [t.ref for t in self.tensors]
        for d in self.layers:
            refs += [d.out] + [getattr(d, name) for name in used_inputs(d)]
        return max((r.addr + r.span for r in refs), default=0)

    def _check_class_names(self) -> None:
        names = self.extra.get("class_names")
        if names is None:
            return
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise SpecError("metadata extra.class_names must be a list of strings")
        hm = [t for t in self.outputs if t.name == HEATMAP_OUTPUT]
        if hm and len(names) != hm[0].ref.channels:
            raise SpecError(f"metadata extra.class_names names {len(names)} classes, the {HEATMAP_OUTPUT!r} "
                            f"output has {hm[0].ref.channels}")

    # -- encoding -----------------------------------------------------------------------------
    def device_image(self) -> bytes:
        pre = struct.pack(PREAMBLE_FORMAT, PREAMBLE_MAGIC, FORMAT_VERSION[0], FORMAT_VERSION[1],
                          self.config.config_hash, len(self.layers))
        return pre + b"".join(d.pack() for d in self.layers)

    def meta(self) -> dict:
        return {"format": "hwconv-program", "engine": self.config.to_dict(),
                "layers": [{"name": n, "op": d.opcode.name} for n, d in zip(self.layer_names, self.layers)],
                "tensors": [t.to_dict() for t in self.tensors], "extra": self.extra}

    def to_bytes(self) -> bytes:
        self.validate()
        image = self.device_image()
        meta = json.dumps(self.meta(), sort_keys=True).encode()
        image_off = FILE_HEADER_BYTES
        params_off = image_off + len(image)
        meta_off = params_off + len(self.params)
        body = image + self.params + meta
        vals = [FILE_MAGIC, *FORMAT_VERSION, self.config.config_hash, len(self.layers),
                image_off, len(image), params_off, len(self.params), meta_off, len(meta),
                self.arena_bytes, zlib.crc32(body)]
        head = struct.pack(_HDR_FORMAT, *vals, 0)
        head = head[:-4] + struct.pack("<I", zlib.crc32(head[:-4]))
        return head + body

    def save(self, path: str | Path) -> None:
        from ..fileio import atomic_write_bytes

        atomic_write_bytes(path, self.to_bytes())

    # -- decoding -----------------------------------------------------------------------------
    @classmethod
    def from_bytes(cls, data: bytes, *, source: str = "program",
                   expect: EngineConfig | None = None) -> "Program":
        def fail(msg: str) -> ProgramFormatError:
            return ProgramFormatError(f"{source}: {msg}")

        data = bytes(data)  # accept bytearray/memoryview
        if len(data) < FILE_HEADER_BYTES:
            raise fail(f"truncated: {len(data)} bytes, the header alone is {FILE_HEADER_BYTES}")
        if data[:8] != FILE_MAGIC:
            raise fail(f"not a hwconv program (magic {data[:8]!r}, expected {FILE_MAGIC!r})")
        vals = struct.unpack(_HDR_FORMAT, data[:FILE_HEADER_BYTES])
        h = dict(zip((n for n, _ in FILE_HEADER_FIELDS), vals[:-1]))
        if zlib.crc32(data[:FILE_HEADER_BYTES - 4]) != vals[-1]:
            raise fail("header checksum mismatch: the header is corrupted")
        major, minor = h["version_major"], h["version_minor"]
        if major != FORMAT_VERSION[0] or minor > FORMAT_VERSION[1]:
            raise fail(f"program format version {major}.{minor}; this hwconv reads "
                       f"{FORMAT_VERSION[0]}.0 to {FORMAT_VERSION[0]}.{FORMAT_VERSION[1]} "
                       "(re-export the model with this hwconv)")
        # Sections are contiguous and in order; anything else is a corrupted section table.
        expected = {"image_offset": FILE_HEADER_BYTES,
                    "params_offset": FILE_HEADER_BYTES + h["image_bytes"],
                    "meta_offset": FILE_HEADER_BYTES + h["image_bytes"] + h["params_bytes"]}
        for key, want in expected.items():
            if h[key] != want:
                raise fail(f"section table corrupted: {key} is {h[key]}, expected {want}")
        end = h["meta_offset"] + h["meta_bytes"]
        if len(data) < end:
            raise fail(f"truncated: the header describes {end} bytes, the file has {len(data)}")
        if len(data) > end:
            raise fail(f"{len(data) - end} unexpected bytes after the last section")
        if zlib.crc32(data[FILE_HEADER_BYTES:]) != h["body_crc32"]:
            raise fail("body checksum mismatch: descriptors, weights or metadata are corrupted")
        if expect is not None and h["config_hash"] != expect.config_hash:
            raise fail(f"built for engine config hash 0x{h['config_hash']:08x}, but this engine is "
                       f"{expect.name} with hash 0x{expect.config_hash:08x}; re-export for this engine")
        if h["arena_bytes"] > ARENA_MAX_BYTES:  # refused before anything is built, whatever the engine
            raise fail(f"claims an arena of {h['arena_bytes']} bytes, more than the {ARENA_MAX_BYTES} "
                       "a program may (spec.program.ARENA_MAX_BYTES)")
        try:
            meta = loads_json(data[h["meta_offset"]:h["meta_offset"] + h["meta_bytes"]].decode(),
                              source="metadata", max_depth=META_MAX_DEPTH)
            if not isinstance(meta, dict):
                raise SpecError("metadata must be a JSON object")
            config = EngineConfig.from_dict(meta["engine"], source=f"{source} metadata")
            names = [layer["name"] for layer in meta["layers"]]
            ops = [layer["op"] for layer in meta["layers"]]
            if not all(isinstance(n, str) for n in names + ops):
                raise SpecError("layer names and ops must be strings")
            tensors = [TensorInfo.from_dict(t) for t in meta["tensors"]]
            extra = meta.get("extra", {})
            if not isinstance(extra, dict):
                raise SpecError("extra must be an object")
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError,
                RecursionError) as exc:
            raise fail(f"metadata section is malformed: {type(exc).__name__}: {printable(str(exc), 200)}") from None
        if config.config_hash != h["config_hash"]:
            raise fail("metadata engine config does not match the header's config hash")

        image = data[h["image_offset"]:h["image_offset"] + h["image_bytes"]]
        n = h["n_layers"]
        if len(image) != PREAMBLE_BYTES + n * DESCRIPTOR_BYTES:
            raise fail(f"device image is {len(image)} bytes, expected {PREAMBLE_BYTES + n * DESCRIPTOR_BYTES} "
                       f"for {n} layers")
        magic, vmaj, vmin, chash, pn = struct.unpack(PREAMBLE_FORMAT, image[:PREAMBLE_BYTES])
        if (magic, vmaj, vmin, chash, pn) != (PREAMBLE_MAGIC, major, minor, h["config_hash"], n):
            raise fail("device image preamble disagrees with the file header")
        layers = []
        for i in range(n):
            raw = image[PREAMBLE_BYTES + i * DESCRIPTOR_BYTES:PREAMBLE_BYTES + (i + 1) * DESCRIPTOR_BYTES]
            where = f"layer {i} ({printable(names[i]) if i < len(names) else '?'})"
            try:
                layers.append(LayerDescriptor.unpack(raw, where=where))
            except SpecError as exc:
                raise fail(str(exc)) from None
        if len(names) != n:
            raise fail(f"metadata names {len(names)} layers, the device image has {n}")
        for i, (d, op) in enumerate(zip(layers, ops)):
            if d.opcode.name != op:
                raise fail(f"layer {i} ({printable(names[i])}): metadata says {printable(op)}, "
                           f"the descriptor is {d.opcode.name}")
        prog = cls(config=config, layers=layers, layer_names=names,
                   params=bytes(data[h["params_offset"]:h["params_offset"] + h["params_bytes"]]),
                   arena_bytes=h["arena_bytes"], tensors=tensors, extra=extra)
        try:
            prog.validate()
        except SpecError as exc:
            raise fail(str(exc)) from None
        return prog

    @classmethod
    def load(cls, path: str | Path, *, expect: EngineConfig | None = None) -> "Program":
        """Read a program file: a regular file, read as far as its header declares, at most
        PROGRAM_MAX_BYTES (a device such as /dev/zero or a FIFO is refused, not read forever)."""
        from ..fileio import InputFileError, read_capped

        path = Path(path)
        try:
            data = read_capped(path, limit=PROGRAM_MAX_BYTES, what="program")
        except InputFileError as exc:
            raise ProgramFormatError(str(exc)) from None
        return cls.from_bytes(data, source=str(path), expect=expect)


def signed_flags(in0: bool = False, in1: bool = False, out: bool = False) -> Flag:
    f = Flag(0)
    if in0:
        f |= Flag.IN0_SIGNED
    if in1:
        f |= Flag.IN1_SIGNED
    if out:
        f |= Flag.OUT_SIGNED
    return f
