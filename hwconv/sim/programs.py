"""Programs for RTL tests: one random layer of each op, and corrupted device images.

`random_op_program(config, op, seed)` builds a one-op program (plus its input tensors) with a
random shape, stride, kernel, padding, weight width, signedness, channel count around the PE
tile sizes (1, pe-1, pe, pe+1, 2*pe+3, ...), strided views (inputs: a channel slice of a wider
buffer; outputs: a slice, or channel runs a stride apart) and sometimes the 2x upsample on store; the deformable op gets a
random dilation map including values above max_dilation (the engine clamps them). Requant
multipliers follow the fan-in so outputs use the 8-bit range rather than saturating or dying.
Built with `reuse_memory=False`, so every layer output stays in the arena.

`corrupt_image(program, kind, layer)` returns a device image the engine must refuse with the
error the golden model gives (`expected_error`): bad magic, another config hash, an unknown
opcode, a tensor outside the arena.
"""

from __future__ import annotations

import dataclasses
import math
import struct

import numpy as np

from ..compiler.builder import ProgramBuilder, Tensor
from ..golden.engine import RunResult, execute
from ..spec.memory import write_tensor
from ..spec.config import EngineConfig
from ..spec.isa import (channel_reach, DESCRIPTOR_FIELDS, PREAMBLE_BYTES, PREAMBLE_FIELDS, DESCRIPTOR_BYTES,
                        Opcode, field_offsets)
from ..spec.params import act_range, quantize_multiplier, weight_range
from ..spec.program import Program
from .verify.spec import random_requant

__all__ = ["ERROR_KINDS", "OPS", "corrupt_image", "expected_error", "random_inputs",
           "random_op_program"]

OPS = ("conv", "dwconv", "deform", "maxpool", "add", "copy")
ERROR_KINDS = ("bad_magic", "config_hash", "bad_opcode", "arena_out_of_bounds")
_TARGET_RMS = 40.0


def _channels(rng: np.random.Generator, cfg: EngineConfig) -> int:
    pe = int(rng.choice([cfg.pe_in, cfg.pe_out]))
    choices = sorted({1, 3, max(1, pe - 1), pe, pe + 1, 2 * pe + 3})
    return int(min(rng.choice(choices), cfg.max_channels, 48))


def _source(b: ProgramBuilder, rng, name: str, h: int, w: int, c: int, signed: bool) -> Tensor:
    """An input tensor: the whole buffer or a channel slice of a wider one (the engine reads
    inputs whose channels are one run: spec.validate)."""
    if rng.random() < 0.6:
        return b.input(name, h, w, c, signed=signed)
    extra = int(rng.integers(1, 6))
    off = int(rng.integers(0, extra + 1))
    return b.view(b.input(name, h, w, c + extra, signed=signed), off, c)


def _sink(b: ProgramBuilder, rng, h: int, w: int, c: int, signed: bool) -> Tensor | None:
    """Where the op stores: its own buffer (None), a channel slice of a wider buffer, or runs of
    channels a stride apart (as ShuffleNet's interleaved concat halves are stored)."""
    kind = rng.choice(["own", "slice", "groups"], p=[0.5, 0.3, 0.2])
    if kind == "own":
        return None
    if kind == "slice":
        extra = int(rng.integers(1, 6))
        cat = b.buffer("cat", h, w, c + extra, signed=signed)
        return b.view(cat, int(rng.integers(0, extra + 1)), c)
    g = int(rng.integers(1, c + 1))
    gs = g + int(rng.integers(1, 3))
    reach = channel_reach(c, g, gs)
    cat = b.buffer("cat", h, w, reach + int(rng.integers(0, 3)), signed=signed)
    return b.view(cat, 0, c, group_channels=g, group_stride=gs)


def random_op_program(config: EngineConfig, op: str, seed: int) -> tuple[Program, dict[str, np.ndarray]]:
    """A random one-op program and random inputs for it (see the module docstring)."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; choose from {', '.join(OPS)}")
    rng = np.random.default_rng([seed, OPS.index(op)])
    b = ProgramBuilder(config, extra={"source": f"random {op} seed {seed}"}, reuse_memory=False)
    h, w = (int(v) for v in rng.integers(1, 13, size=2))
    c = _channels(rng, config)
    signed_in = bool(rng.random() < 0.5)
    signed_out = bool(rng.random() < 0.5)
    x_rms = 74.0 if signed_in else 147.0  # uniform int8 / uint8
    upsample = bool(rng.random() < 0.25)
    x = _source(b, rng, "x", h, w, c, signed_in)

    def out_for(ho: int, wo: int, co: int, signed: bool) -> Tensor | None:
        f = 2 if upsample else 1
        return _sink(b, rng, ho * f, wo * f, co, signed)

    def clamp(signed: bool) -> tuple[int, int]:
        lo, hi = act_range(config.act_bits, signed)
        if rng.random() < 0.2:  # a narrow clamp, as the dilation predictor's
            hi = int(rng.integers(lo + 1, min(hi, lo + 20) + 1))
        return lo, hi

    if op == "conv":
        k = int(rng.choice([1, 3]))
        stride = int(rng.choice([1, 2, 4]))
        pad = k // 2 if rng.random() < 0.8 else 0
        bits = int(rng.choice([4, 8]))
        co = _channels(rng, config)
        ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
        if ho < 1 or wo < 1:
            pad, ho, wo = k // 2, (h - 1) // stride + 1, (w - 1) // stride + 1
        lo, hi = weight_range(bits)
        bias, mult, shift = random_requant(rng, co, k * k * c, bits, x_rms)
        y = b.conv("conv", x, rng.integers(lo, hi + 1, size=(co, k, k, c)), bias=bias, mult=mult,
                   shift=shift, stride=stride, pad=pad, weight_bits=bits, out_signed=signed_out,
                   clamp=clamp(signed_out), upsample=upsample,
                   out=out_for(ho, wo, co, signed_out))
    elif op in ("dwconv", "deform"):
        bits = int(rng.choice([4, 8]))
        lo, hi = weight_range(bits)
        weights = rng.integers(lo, hi + 1, size=(c, 3, 3))
        bias, mult, shift = random_requant(rng, c, 9, bits, x_rms)
        if op == "dwconv":
            stride = int(rng.choice([1, 2]))
            ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
            y = b.dwconv("dwconv", x, weights, bias=bias, mult=mult, shift=shift, stride=stride,
                         weight_bits=bits, out_signed=signed_out, clamp=clamp(signed_out),
                         upsample=upsample, out=out_for(ho, wo, c, signed_out))
        else:
            dil = b.input("dilation", h, w, 1, signed=False)
            y = b.deform("deform", x, dil, weights, bias=bias, mult=mult, shift=shift,
                         weight_bits=bits, out_signed=signed_out, clamp=clamp(signed_out),
                         upsample=upsample, out=out_for(h, w, c, signed_out))
    elif op == "maxpool":
        k = int(rng.choice([2, 3]))
        stride = int(rng.choice([1, 2]))
        pad = int(rng.integers(0, k))
        if h + 2 * pad < k or w + 2 * pad < k:
            pad = k - 1
        ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
        y = b.maxpool("maxpool", x, kernel=k, stride=stride, pad=pad, upsample=upsample,
                      out=out_for(ho, wo, c, signed_in))
    elif op == "add":
        other = _source(b, rng, "x2", h, w, c, bool(rng.random() < 0.5))
        mult_a, mult_b = (int(v) for v in rng.integers(-300, 300, size=2))
        real = _TARGET_RMS / (x_rms * math.hypot(mult_a, mult_b) + 1.0)
        m, s = quantize_multiplier(real)
        # The bias removes the inputs' mean (uint8 averages 127.5), so outputs centre in range.
        mean = lambda t: -0.5 if t.signed else 127.5  # noqa: E731
        centre = -(mean(x) * mult_a + mean(other) * mult_b)
        y = b.add("add", x, other, mult_a=mult_a, mult_b=mult_b,
                  bias=np.round(centre + rng.integers(-1000, 1000, size=c)), mult=m, shift=s,
                  out_signed=signed_out,
                  clamp=clamp(signed_out), upsample=upsample, out=out_for(h, w, c, signed_out))
    else:  # copy
        y = b.copy("copy", x, upsample=upsample, out=out_for(h, w, c, signed_in))
    b.output("y", y)
    program = b.build()
    return program, random_inputs(program, seed, max_dilation=config.max_dilation)


def random_inputs(program: Program, seed: int, *, max_dilation: int = 7) -> dict[str, np.ndarray]:
    """Uniform random inputs over each tensor's range; a tensor named 'dilation' gets values
    0..max_dilation+2 (the last two above the engine's clamp)."""
    rng = np.random.default_rng([seed, 7])
    out = {}
    for t in program.inputs:
        shape = (t.ref.height, t.ref.width, t.ref.channels)
        if t.name == "dilation":
            out[t.name] = rng.integers(0, max_dilation + 3, size=shape)
        else:
            lo, hi = act_range(program.config.act_bits, t.signed)
            out[t.name] = rng.integers(lo, hi + 1, size=shape)
    return out


# -- corrupted images --------------------------------------------------------------------------
_PRE = field_offsets(PREAMBLE_FIELDS)
_DESC = field_offsets(DESCRIPTOR_FIELDS)


def _patch(image: bytearray, at: int, fmt: str, value: int) -> None:
    struct.pack_into("<" + fmt, image, at, value)


def corrupt_image(program: Program, kind: str, layer: int = 0) -> bytes:
    """The program's device image with one fault (module docstring); `layer` picks the
    descriptor for bad_opcode and arena_out_of_bounds."""
    image = bytearray(program.device_image())
    if not 0 <= layer < len(program.layers):
        raise ValueError(f"layer {layer} is not in the {len(program.layers)}-layer program")
    desc = PREAMBLE_BYTES + layer * DESCRIPTOR_BYTES
    if kind == "bad_magic":
        _patch(image, _PRE["magic"][0], "I", 0x4E4F5045)
    elif kind == "config_hash":
        _patch(image, _PRE["config_hash"][0], "I", program.config.config_hash ^ 0x5A5A0001)
    elif kind == "bad_opcode":
        unknown = max(int(o) for o in Opcode) + 1
        _patch(image, desc + _DESC["opcode"][0], "B", unknown)
    elif kind == "arena_out_of_bounds":
        d = program.layers[layer]
        moved = dataclasses.replace(d, out=dataclasses.replace(d.out, addr=program.arena_bytes - 1))
        image[desc:desc + DESCRIPTOR_BYTES] = moved.pack()
    else:
        raise ValueError(f"unknown fault {kind!r}; choose from {', '.join(ERROR_KINDS)}")
    return bytes(image)


def expected_error(program: Program, image: bytes, inputs: dict[str, np.ndarray]) -> RunResult:
    """What the golden model reports for `image` (error code, layer, layers done)."""
    arena = np.zeros(program.arena_bytes, dtype=np.uint8)
    for name, value in inputs.items():
        write_tensor(arena, program.tensor(name).ref, np.asarray(value))
    return execute(program.config, image, program.params, arena)
