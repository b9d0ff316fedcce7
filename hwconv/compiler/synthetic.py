"""Synthetic CoDeNet-shaped programs: the real layer graph with random integer weights.

Used for benchmarks and tests before a trained model exists. Requantisation multipliers are chosen
from the fan-in so activations keep a lively range through the whole network (a network of
all-zero activations would exercise nothing).

Shape of the network (CoDeNet / CenterNet on ShuffleNetV2): stem conv 3x3 (8-bit weights), optional
maxpool, three ShuffleNet stages (a stride-2 unit, then basic units), a decoder of three
[offset 1x1 conv -> deformable depthwise 3x3 -> pointwise 1x1 + ReLU -> nearest 2x] blocks, and the
CenterNet heads (heatmap, wh, reg). Channel shuffle is folded into the memory layout: each unit
writes its two halves interleaved channel by channel, so every later split is a contiguous view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..golden.engine import accumulate, compute_layer, store_layer
from ..golden.memory import write_tensor
from ..spec.config import EngineConfig
from ..spec.isa import REQUANT_OPS
from ..spec.params import REQUANT_RECORD_BYTES, pack_requant, quantize_multiplier, unpack_requant, weight_range
from ..spec.program import Program
from .builder import ProgramBuilder, Tensor

_TARGET_RMS = 40.0  # rms of every requantised pre-activation the multipliers aim for
_IMAGE_RMS = 147.0  # rms of uniform 0..255 pixels


@dataclass(frozen=True)
class BackboneShape:
    input_size: int = 256
    stem_stride: int = 4            # 4: one stride-4 conv (config a); 2: stride-2 conv + maxpool
    widths: tuple[int, ...] = (24, 116, 232, 464)
    repeats: tuple[int, ...] = (3, 7, 3)   # basic units after each stage's stride-2 unit
    decoder: tuple[int, ...] = (256, 128, 64)
    head_conv: int = 64
    num_classes: int = 20


CODENET_SHAPES = {
    "a": BackboneShape(256, 4),
    "b": BackboneShape(256, 2),
    "c": BackboneShape(512, 4),
    "tiny": BackboneShape(128, 4, (8, 16, 32, 64), (1, 1, 1), (32, 16, 16), 16, 2),
}


class _Net:
    def __init__(self, cfg: EngineConfig, rng: np.random.Generator, reuse_memory: bool = True):
        self.b = ProgramBuilder(cfg, extra={"source": "synthetic"}, reuse_memory=reuse_memory)
        self.rng = rng
        self.macs = 0

    def _w(self, shape, bits):
        lo, hi = weight_range(bits)
        return self.rng.integers(lo, hi + 1, size=shape)

    def _real_mult(self, x: Tensor, fan_in: int, bits: int, target: float = _TARGET_RMS) -> float:
        """Multiplier that maps the expected accumulator rms to `target` (zero-mean weights)."""
        lo, hi = weight_range(bits)
        w_ms = np.mean(np.arange(lo, hi + 1) ** 2)
        if x.buffer.name == "image":
            x_rms = _IMAGE_RMS
        else:  # signed tensors keep the target rms; ReLU keeps half the energy
            x_rms = _TARGET_RMS if x.signed else _TARGET_RMS / math.sqrt(2)
        return target / math.sqrt(fan_in * w_ms * x_rms ** 2)

    def _mult(self, x: Tensor, fan_in: int, bits: int):
        return quantize_multiplier(self._real_mult(x, fan_in, bits))

    def conv(self, name, x: Tensor, cout: int, k: int = 1, stride: int = 1, relu=True, bits=4, **kw):
        m, s = self._mult(x, k * k * x.channels, bits)
        bias = self.rng.integers(-200, 200, size=cout)
        y = self.b.conv(name, x, self._w((cout, k, k, x.channels), bits), bias=bias, mult=m, shift=s,
                        stride=stride, weight_bits=bits, out_signed=not relu, **kw)
        ho, wo = (y.height // 2, y.width // 2) if kw.get("upsample") else (y.height, y.width)
        self.macs += ho * wo * cout * k * k * x.channels
        return y

    def dw(self, name, x: Tensor, stride: int = 1, relu=False, **kw):
        m, s = self._mult(x, 9, 4)
        y = self.b.dwconv(name, x, self._w((x.channels, 3, 3), 4), mult=m, shift=s, stride=stride,
                          out_signed=not relu, **kw)
        self.macs += y.height * y.width * x.channels * 9
        return y

    def deform_block(self, name, x: Tensor, cout: int, max_dil: int):
        # Offset predictor: its requant clamps straight to [0, max_dil], so its output *is* the
        # integer dilation map (scale exactly 1) and the engine needs no offset unit.
        real = self._real_mult(x, x.channels, 4, target=max_dil / 2)
        m, s = quantize_multiplier(real)
        dil = self.b.conv(f"{name}.offset", x, self._w((1, 1, 1, x.channels), 4), mult=m, shift=s,
                          bias=round(max_dil / 2 / real), clamp=(0, max_dil))
        self.macs += x.height * x.width * x.channels
        m, s = self._mult(x, 9, 4)
        y = self.b.deform(f"{name}.deform", x, dil, self._w((x.channels, 3, 3), 4), mult=m, shift=s)
        self.macs += x.height * x.width * x.channels * 9
        return self.conv(f"{name}.pw", y, cout, upsample=True)

    def shuffle_unit(self, name, x: Tensor, cout: int, stride: int) -> Tensor:
        """One ShuffleNetV2 unit. channel_shuffle(cat([a, b]), 2) puts a[i] at channel 2i and b[i] at
        2i+1, so the two halves are stored interleaved (group_channels=1, group_stride=2): the
        buffer then *is* the shuffled tensor and the next unit's split halves are contiguous views."""
        half = cout // 2
        h = (x.height - 1) // stride + 1
        out = self.b.buffer(f"{name}.cat", h, h, cout, signed=False)
        left = self.b.view(out, 0, half, group_channels=1, group_stride=2)
        right = self.b.view(out, 1, half, group_channels=1, group_stride=2)
        if stride == 2:
            a = self.dw(f"{name}.b1.dw", x, stride=2)
            self.conv(f"{name}.b1.pw", a, half, out=left)
            src = x
        else:
            self.b.copy(f"{name}.pass", self.b.view(x, 0, x.channels // 2), out=left)
            src = self.b.view(x, x.channels // 2, x.channels // 2)
        t = self.conv(f"{name}.b2.pw1", src, half)
        t = self.dw(f"{name}.b2.dw", t, stride=stride)
        self.conv(f"{name}.b2.pw2", t, half, out=right)
        return out


def codenet_program(cfg: EngineConfig, shape: BackboneShape | str = "a", *, seed: int = 0,
                    reuse_memory: bool = True):
    """Build a CoDeNet-shaped program with random weights. Returns (program, macs)."""
    if isinstance(shape, str):
        shape = CODENET_SHAPES[shape]
    net = _Net(cfg, np.random.default_rng(seed), reuse_memory)
    b = net.b
    x = b.input("image", shape.input_size, shape.input_size, 3, signed=False, scale=1 / 255)
    if shape.stem_stride == 4:
        y = net.conv("stem", x, shape.widths[0], k=3, stride=4, bits=8)
    else:
        y = net.conv("stem", x, shape.widths[0], k=3, stride=2, bits=8)
        y = b.maxpool("stem.pool", y, kernel=3, stride=2, pad=1)
    for stage, (cout, reps) in enumerate(zip(shape.widths[1:], shape.repeats), start=2):
        y = net.shuffle_unit(f"stage{stage}.0", y, cout, stride=2)
        for r in range(1, reps + 1):
            y = net.shuffle_unit(f"stage{stage}.{r}", y, cout, stride=1)
    for i, cout in enumerate(shape.decoder):
        y = net.deform_block(f"decoder{i}", y, cout, cfg.max_dilation)
    for head, n in (("hm", shape.num_classes), ("wh", 2), ("reg", 2)):
        t = net.conv(f"head.{head}.conv", y, shape.head_conv, k=3)
        t = net.conv(f"head.{head}.out", t, n, relu=False)
        b.output(head, t)
    prog = b.build()
    image = np.random.default_rng(seed + 1).integers(0, 256, size=(shape.input_size, shape.input_size, 3))
    _calibrate(prog, {"image": image})
    return prog, net.macs


def _calibrate(prog: Program, inputs: dict[str, np.ndarray]) -> None:
    """Re-choose every requant multiplier from the accumulators a calibration input produces.

    Wide-range layers aim for an rms of _TARGET_RMS per channel; narrow clamps (the dilation
    predictor) get a bias and multiplier that spread values over the whole clamp range.
    """
    cfg = prog.config
    params = bytearray(prog.params)
    arena = np.zeros(prog.arena_bytes, dtype=np.uint8)
    for name, value in inputs.items():
        write_tensor(arena, prog.tensor(name).ref, value)
    for d in prog.layers:
        if d.opcode in REQUANT_OPS:
            acc = accumulate(d, cfg, arena, bytes(params)).reshape(-1, d.out.channels).astype(np.float64)
            lo, hi = d.clamp_lo, d.clamp_hi
            start = d.params_offset
            bias, _, _ = unpack_requant(params[start:start + d.out.channels * REQUANT_RECORD_BYTES], d.out.channels)
            if hi - lo < 64:
                real = (hi - lo) / 4 / np.maximum(acc.std(axis=0), 1.0)
                bias = np.round((lo + hi) / 2 / real - acc.mean(axis=0))
            else:
                real = _TARGET_RMS / np.maximum(np.sqrt(np.mean((acc + bias) ** 2, axis=0)), 1.0)
            ms = [quantize_multiplier(float(r)) for r in real]
            rec = pack_requant(bias, [m for m, _ in ms], [sh for _, sh in ms])
            params[start:start + len(rec)] = rec
        store_layer(d, arena, compute_layer(d, cfg, arena, bytes(params)))
    prog.params = bytes(params)
    prog.validate()
