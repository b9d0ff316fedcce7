"""A random program as plain data, and how it becomes a real Program (through ProgramBuilder).

The generator (`generate`) and the minimiser (`minimise`) both work on a `ProgramSpec`: named
buffers and layers whose tensors are `View`s of those buffers (a channel run, a slice of a
wider buffer, or interleaved runs a stride apart). Weights, requant parameters and input values
are not stored: they are drawn from each layer's and buffer's own seed at build time, so
removing a layer or shrinking a shape never changes what the other layers compute with, and a
spec is small enough to print and to store as JSON beside its .hwc file.

`build(config, spec)` is the one way a spec becomes a `Program` plus its input tensors:
buffers no layer writes are program inputs (random values over their range; a dilation map
gets values of its dilation class), buffers written and never read are program outputs, and
every buffer keeps its own bytes (`reuse_memory=False`), so `compare` can judge every layer.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from ...compiler.builder import ProgramBuilder, Tensor
from ...spec.config import EngineConfig
from ...spec.params import act_range, quantize_multiplier, weight_range
from ...spec.program import Program

__all__ = ["DILATION_FILLS", "OPS", "BufferSpec", "LayerSpec", "ProgramSpec", "View", "build",
           "input_values", "random_requant"]

OPS = ("conv", "dwconv", "deform", "maxpool", "add", "copy")
# How a dilation-map input is filled: all 0, below the clamp, up to the clamp, past it.
DILATION_FILLS = ("zero", "within", "at_clamp", "past_clamp")
_TARGET_RMS = 40.0


@dataclass(frozen=True)
class View:
    """Channels [offset, ...) of buffer `buf`: one run of `channels`, or runs of `group`
    channels `group_stride` apart (0: one run)."""

    buf: int
    offset: int
    channels: int
    group: int = 0
    group_stride: int = 0


@dataclass
class BufferSpec:
    name: str
    height: int
    width: int
    channels: int
    signed: bool
    seed: int = 0           # input values (when no layer writes the buffer)
    fill: str = "random"    # "random" or a DILATION_FILLS entry for a dilation map


@dataclass
class LayerSpec:
    op: str
    in0: View
    out: View
    in1: View | None = None       # ADD's second operand, DEFORM's dilation map
    kernel: int = 1
    stride: int = 1
    pad: int = 0
    weight_bits: int = 0
    upsample: bool = False
    clamp: tuple[int, int] | None = None    # None: the output type's full range
    seed: int = 0                           # weights and requant parameters


@dataclass
class ProgramSpec:
    seed: int
    buffers: list[BufferSpec] = field(default_factory=list)
    layers: list[LayerSpec] = field(default_factory=list)
    backpressure: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ProgramSpec":
        def view(v):
            return None if v is None else View(**v)

        layers = [LayerSpec(**{**L, "in0": view(L["in0"]), "out": view(L["out"]),
                               "in1": view(L.get("in1")),
                               "clamp": tuple(L["clamp"]) if L.get("clamp") else None})
                  for L in d["layers"]]
        return cls(int(d["seed"]), [BufferSpec(**b) for b in d["buffers"]], layers,
                   float(d.get("backpressure", 0.0)))


# -- building --------------------------------------------------------------------------------
def random_requant(rng, c: int, fan_in: int, w_bits: int, x_rms: float):
    """Random bias and per-channel (mult, shift) that follow the fan-in, so outputs use the
    8-bit range rather than saturating or dying (weights and inputs uniform)."""
    lo, hi = weight_range(w_bits)
    w_ms = float(np.mean(np.arange(lo, hi + 1) ** 2))
    real = _TARGET_RMS / math.sqrt(max(1, fan_in) * w_ms * x_rms ** 2)
    ms = [quantize_multiplier(real * float(f)) for f in rng.uniform(0.5, 2.0, size=c)]
    return rng.integers(-300, 300, size=c), [m for m, _ in ms], [s for _, s in ms]


def _rms(signed: bool) -> float:
    return 74.0 if signed else 147.0    # uniform int8 / uint8


def _layer(b: ProgramBuilder, name: str, L: LayerSpec, x: Tensor, x1: Tensor | None,
           out: Tensor, out_signed: bool) -> None:
    rng = np.random.default_rng([L.seed, 0x5EED])
    c = x.channels
    if L.op == "conv":
        lo, hi = weight_range(L.weight_bits)
        co = out.channels
        w = rng.integers(lo, hi + 1, size=(co, L.kernel, L.kernel, c))
        bias, mult, shift = random_requant(rng, co, L.kernel ** 2 * c, L.weight_bits, _rms(x.signed))
        b.conv(name, x, w, bias=bias, mult=mult, shift=shift, stride=L.stride, pad=L.pad,
               weight_bits=L.weight_bits, out_signed=out_signed, clamp=L.clamp,
               upsample=L.upsample, out=out)
    elif L.op in ("dwconv", "deform"):
        lo, hi = weight_range(L.weight_bits)
        w = rng.integers(lo, hi + 1, size=(c, 3, 3))
        bias, mult, shift = random_requant(rng, c, 9, L.weight_bits, _rms(x.signed))
        kw = dict(bias=bias, mult=mult, shift=shift, weight_bits=L.weight_bits,
                  out_signed=out_signed, clamp=L.clamp, upsample=L.upsample, out=out)
        if L.op == "dwconv":
            b.dwconv(name, x, w, stride=L.stride, **kw)
        else:
            b.deform(name, x, x1, w, **kw)
    elif L.op == "maxpool":
        b.maxpool(name, x, kernel=L.kernel, stride=L.stride, pad=L.pad, upsample=L.upsample,
                  out=out)
    elif L.op == "add":
        mult_a, mult_b = (int(v) for v in rng.integers(-300, 300, size=2))
        m, s = quantize_multiplier(_TARGET_RMS / (_rms(x.signed) * math.hypot(mult_a, mult_b) + 1.0))
        mean = lambda t: -0.5 if t.signed else 127.5  # noqa: E731  (inputs' mean, removed)
        centre = -(mean(x) * mult_a + mean(x1) * mult_b)
        b.add(name, x, x1, mult_a=mult_a, mult_b=mult_b,
              bias=np.round(centre + rng.integers(-1000, 1000, size=c)), mult=m, shift=s,
              out_signed=out_signed, clamp=L.clamp, upsample=L.upsample, out=out)
    elif L.op == "copy":
        b.copy(name, x, upsample=L.upsample, out=out)
    else:
        raise ValueError(f"layer {name}: unknown op {L.op!r}; choose from {', '.join(OPS)}")


def build(config: EngineConfig, spec: ProgramSpec) -> tuple[Program, dict[str, np.ndarray]]:
    """The Program and input tensors of `spec` (module docstring); SpecError if illegal."""
    written = {L.out.buf for L in spec.layers}
    read = {v.buf for L in spec.layers for v in (L.in0, L.in1) if v is not None}
    b = ProgramBuilder(config, extra={"source": f"hwconv verify seed {spec.seed}"},
                       reuse_memory=False)
    whole: dict[int, Tensor] = {}
    for i, B in enumerate(spec.buffers):
        if i in written:
            whole[i] = b.buffer(B.name, B.height, B.width, B.channels, signed=B.signed)
        elif i in read:
            whole[i] = b.input(B.name, B.height, B.width, B.channels, signed=B.signed)

    def tensor(v: View) -> Tensor:
        t = whole[v.buf]
        if v.offset == 0 and v.channels == t.channels and not v.group:
            return t
        return b.view(t, v.offset, v.channels, group_channels=v.group,
                      group_stride=v.group_stride)

    for j, L in enumerate(spec.layers):
        _layer(b, f"L{j}_{L.op}", L, tensor(L.in0), tensor(L.in1) if L.in1 else None,
               tensor(L.out), spec.buffers[L.out.buf].signed)
    for i in sorted(written - read):
        b.output(spec.buffers[i].name, whole[i])
    program = b.build()
    inputs = {spec.buffers[i].name: input_values(config, spec.buffers[i])
              for i in sorted(read - written)}
    return program, inputs


def input_values(config: EngineConfig, B: BufferSpec) -> np.ndarray:
    """A program input's values, from its own seed: uniform over its range, or for a dilation
    map values of its class (at least one pixel at the class's defining value)."""
    rng = np.random.default_rng([B.seed, 0x1A])
    shape = (B.height, B.width, B.channels)
    if B.fill == "random":
        lo, hi = act_range(config.act_bits, B.signed)
        return rng.integers(lo, hi + 1, size=shape)
    m = config.max_dilation
    top = {"zero": 0, "within": max(0, m - 1), "at_clamp": m, "past_clamp": min(255, m + 3)}[B.fill]
    values = rng.integers(0, top + 1, size=shape)
    if B.fill == "past_clamp":
        values.flat[int(rng.integers(values.size))] = int(rng.integers(m + 1, top + 1))
    elif top:
        values.flat[int(rng.integers(values.size))] = top
    return values
