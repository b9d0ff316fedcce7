"""The golden engine: executes a device image exactly as the hardware does, on a byte arena.

`execute` mirrors the RTL's contract: it reads the preamble and descriptors from bytes, checks
each layer with the same rules the engine applies, and reports an ErrorCode and layer index
instead of raising, so the driver's golden backend and the RTL are interchangeable.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..spec.config import EngineConfig
from ..spec.errors import SpecError
from ..spec.isa import (DESCRIPTOR_BYTES, PREAMBLE_BYTES, PREAMBLE_FORMAT, PREAMBLE_MAGIC, Flag,
                        LayerDescriptor, Opcode)
from ..spec.params import REQUANT_RECORD_BYTES, unpack_requant, unpack_weights
from ..spec.program import FORMAT_VERSION, Program
from ..spec.registers import ErrorCode
from ..spec.validate import check_descriptor, check_requant_records, weight_count, weight_shape
from . import ops
from ..spec.memory import read_tensor, write_tensor

LayerHook = Callable[[int, LayerDescriptor, np.ndarray], None]


class EngineError(RuntimeError):
    """A program stopped with an error code, as the engine's ERROR register would report."""

    def __init__(self, code: ErrorCode, layer: int, message: str):
        super().__init__(f"engine error {code.name} at layer {layer}: {message}")
        self.code, self.layer, self.detail = code, layer, message


@dataclass
class RunResult:
    error: ErrorCode = ErrorCode.NONE
    error_layer: int = 0
    message: str = ""
    layers_done: int = 0
    layer_seconds: list[float] = field(default_factory=list)

    def raise_for_error(self) -> None:
        if self.error:
            raise EngineError(self.error, self.error_layer, self.message)


def accumulate(d: LayerDescriptor, cfg: EngineConfig, arena: np.ndarray, params: bytes) -> np.ndarray:
    """Exact int64 accumulators of a requantising layer (before bias and requantisation)."""
    x = read_tensor(arena, d.in0, bool(d.flags & Flag.IN0_SIGNED))
    if d.opcode == Opcode.ADD:
        return ops.add(x, read_tensor(arena, d.in1, bool(d.flags & Flag.IN1_SIGNED)), d.add_mult0, d.add_mult1)
    blob = np.frombuffer(params, dtype=np.uint8)
    w = unpack_weights(blob[d.weights_offset:], weight_count(d), d.weight_bits).reshape(weight_shape(d))
    if d.opcode == Opcode.CONV:
        return ops.conv2d(x, w, d.stride, d.pad)
    if d.opcode == Opcode.DWCONV:
        return ops.depthwise(x, w, d.stride, d.pad)
    dil = read_tensor(arena, d.in1, False)[:, :, 0]
    return ops.deform_depthwise(x, w, dil, cfg.max_dilation)


def compute_layer(d: LayerDescriptor, cfg: EngineConfig, arena: np.ndarray, params: bytes) -> np.ndarray:
    """Output of one layer at its computed size (before any upsampling on store)."""
    if d.opcode == Opcode.MAXPOOL:
        x = read_tensor(arena, d.in0, bool(d.flags & Flag.IN0_SIGNED))
        return ops.maxpool(x, d.kernel, d.stride, d.pad, bool(d.flags & Flag.IN0_SIGNED), cfg.act_bits)
    if d.opcode == Opcode.COPY:
        return read_tensor(arena, d.in0, bool(d.flags & Flag.IN0_SIGNED))
    acc = accumulate(d, cfg, arena, params)
    rec = np.frombuffer(params, dtype=np.uint8)[d.params_offset: d.params_offset + d.out.channels * REQUANT_RECORD_BYTES]
    bias, mult, shift = unpack_requant(rec, d.out.channels)
    return ops.requantize(acc, bias, mult, shift, d.clamp_lo, d.clamp_hi)


def store_layer(d: LayerDescriptor, arena: np.ndarray, y: np.ndarray) -> None:
    write_tensor(arena, d.out, ops.upsample2x(y) if d.upsample else y)


def execute(cfg: EngineConfig, image: bytes, params: bytes, arena: np.ndarray, *,
            on_layer: LayerHook | None = None) -> RunResult:
    """Run a device image against `arena` (uint8, modified in place) as the engine would."""
    res = RunResult()

    def stop(code: ErrorCode, layer: int, msg: str) -> RunResult:
        res.error, res.error_layer, res.message = code, layer, msg
        return res

    if len(image) < PREAMBLE_BYTES:
        return stop(ErrorCode.BAD_MAGIC, 0, f"device image is {len(image)} bytes, shorter than the preamble")
    magic, vmaj, _vmin, chash, n = struct.unpack(PREAMBLE_FORMAT, image[:PREAMBLE_BYTES])
    if magic != PREAMBLE_MAGIC:
        return stop(ErrorCode.BAD_MAGIC, 0, f"preamble magic 0x{magic:08x}, expected 0x{PREAMBLE_MAGIC:08x}")
    if vmaj != FORMAT_VERSION[0]:
        return stop(ErrorCode.VERSION_MISMATCH, 0, f"program format major {vmaj}, engine runs {FORMAT_VERSION[0]}")
    if chash != cfg.config_hash:
        return stop(ErrorCode.CONFIG_MISMATCH, 0,
                    f"program for config hash 0x{chash:08x}, engine is 0x{cfg.config_hash:08x}")
    if not 1 <= n <= cfg.max_layers:
        return stop(ErrorCode.TOO_MANY_LAYERS, 0, f"{n} layers, engine runs 1..{cfg.max_layers}")
    if len(image) < PREAMBLE_BYTES + n * DESCRIPTOR_BYTES:
        return stop(ErrorCode.AXI_ERROR, 0, "descriptor fetch past the end of the device image")

    for i in range(n):
        raw = image[PREAMBLE_BYTES + i * DESCRIPTOR_BYTES: PREAMBLE_BYTES + (i + 1) * DESCRIPTOR_BYTES]
        try:
            d = LayerDescriptor.unpack(raw, where=f"layer {i}")
        except SpecError as exc:
            known = raw[0] in {int(o) for o in Opcode}
            return stop(ErrorCode.BAD_DESCRIPTOR if known else ErrorCode.BAD_OPCODE, i, str(exc))
        code, msg = check_descriptor(d, cfg, arena_size=arena.size, params_size=len(params))
        if not code:  # records are read before the layer computes: a reserved bit stops it here
            code, msg = check_requant_records(d, params)
        if code:
            return stop(code, i, msg)
        t0 = time.perf_counter()
        y = compute_layer(d, cfg, arena, params)
        store_layer(d, arena, y)
        res.layer_seconds.append(time.perf_counter() - t0)
        res.layers_done = i + 1
        if on_layer is not None:
            on_layer(i, d, y)
    return res


def run_program(program: Program, inputs: dict[str, np.ndarray], *,
                on_layer: LayerHook | None = None) -> dict[str, np.ndarray]:
    """Convenience: allocate an arena, write the named inputs, run, return every output tensor."""
    arena = np.zeros(program.arena_bytes, dtype=np.uint8)
    missing = {t.name for t in program.inputs} - set(inputs)
    if missing:
        raise ValueError(f"missing program input(s): {sorted(missing)}")
    for name, value in inputs.items():
        try:
            t = program.tensor(name)
        except KeyError as exc:
            raise ValueError(exc.args[0]) from None
        if t.role != "input":
            raise ValueError(f"tensor {name!r} is a program {t.role}, not an input")
        want = (t.ref.height, t.ref.width, t.ref.channels)
        value = np.asarray(value)
        if not np.issubdtype(value.dtype, np.integer):
            raise ValueError(f"input {name!r}: dtype {value.dtype}, the engine takes integers "
                             "(quantise with the tensor's scale first)")
        if value.shape != want:
            raise ValueError(f"input {name!r}: shape {value.shape}, the program expects {want} (H, W, C)")
        lo, hi = (-128, 127) if t.signed else (0, 255)
        if value.size and (value.min() < lo or value.max() > hi):
            raise ValueError(f"input {name!r}: values outside [{lo}, {hi}]")
        write_tensor(arena, t.ref, value)
    res = execute(program.config, program.device_image(), program.params, arena, on_layer=on_layer)
    res.raise_for_error()
    return {t.name: read_tensor(arena, t.ref, t.signed) for t in program.outputs}
