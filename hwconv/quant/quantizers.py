"""Brevitas quantisers that implement the integer contract (docs/architecture.md, "The integer contract").

- Weights: signed, symmetric, narrow range ([-7, 7] at 4 bits, [-127, 127] at 8), one scale per output
  channel. Symmetric so no zero-point enters the accumulator; narrow range so negating a channel (BN
  folding with a negative gamma) stays representable; per channel because the engine requantises per
  output channel anyway, so finer scales cost nothing.
- Activations: 8-bit with zero-point 0, unsigned after a ReLU (uint8), signed otherwise (int8).
  Zero-point 0 makes the real value 0 the integer 0, so zero padding (convolution borders, deformable
  taps outside the image) is exact on the engine, and products need no zero-point correction.
- Dilation: `DilationQuant(max_dilation)` is the output quantiser of the square deformable offset
  predictor: unsigned, scale exactly 1 (constant, never learned), clamped to [0, max_dilation].
  With scale 1 the requantised offset *is* the integer dilation map, so the engine produces it with
  an ordinary CONV (requant clamp = [0, max_dilation]) and needs no offset unit.

The engine's arithmetic, for the model's exact eval path and the exporter alike (one definition, so
they cannot drift apart): `requant_params` turns a layer's quantised weights, integer bias and
scales into the integers the program carries (weights, bias, `spec.quantize_multiplier`'s (mult,
shift), clamp); `Requant.apply` is `golden.ops.requantize` in torch; `exact_conv` sums integer
products exactly (float64); `image_integers` is the host's input quantisation.

Scales travel with the activations: `QTReLU` / `QTIdentity` are Brevitas' QuantReLU / QuantIdentity
with `return_quant_tensor=True`, so a layer reads its input scale from its input (a Brevitas
`QuantTensor`: value, scale, zero-point, bit width, signedness) instead of being told which
quantiser feeds it. `concat_scale` is the engine's concat rule, checked where a concat happens.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

import brevitas
from brevitas.function.ops import tensor_clamp
from brevitas.function.ops_ste import floor_ste
from brevitas.inject.enum import ScalingImplType
from brevitas.nn import QuantIdentity, QuantReLU
from brevitas.quant.base import PerTensorFloatScaling8bit, UintQuant
from brevitas.quant.scaled_int import Int8ActPerTensorFloat, Int8WeightPerChannelFloat, Uint8ActPerTensorFloat
from brevitas.quant.solver import ActQuantSolver
from brevitas.quant_tensor import IntQuantTensor, QuantTensor

from ..spec import SpecError, quantize_multiplier
from ..spec.config import ACT_BITS_CHOICES
from ..spec.params import act_range

WEIGHT_BITS = (4, 8)
DILATION_BITS = 8  # the offset predictor's output is an ordinary uint8 activation on the engine


@lru_cache(maxsize=None)
def weight_quant(bits: int) -> type:
    """Signed symmetric narrow-range per-output-channel weight quantiser, 4 or 8 bits.

    Scale = max|w| per output channel / (2**(bits-1) - 1), recomputed from the weights every forward.
    """
    if bits not in WEIGHT_BITS:
        raise ValueError(f"weight bit width {bits}; the engine runs {' or '.join(map(str, WEIGHT_BITS))}-bit weights")
    return Int8WeightPerChannelFloat.let(bit_width=bits)


def act_quant(signed: bool) -> type:
    """8-bit per-tensor activation quantiser with zero-point 0: int8 if signed, uint8 (after ReLU) if not.

    The scale is learned (initialised from runtime percentile statistics over the first training steps).
    """
    return Int8ActPerTensorFloat if signed else Uint8ActPerTensorFloat


class _ReturnsQuantTensor:
    """Mixin for a Brevitas activation layer built with return_quant_tensor=True: its output is a
    QuantTensor (the values and their scale) wherever it quantises. With its quantiser disabled
    (float mode, `checkpoint.set_quant_mode`) there is no scale to carry, and it returns the plain
    tensor where Brevitas would refuse ("QuantLayer is not correctly configured")."""

    @property
    def return_quant_tensor(self) -> bool:
        return self._return_quant_tensor and self.act_quant.is_quant_enabled

    @return_quant_tensor.setter
    def return_quant_tensor(self, value: bool) -> None:
        self._return_quant_tensor = bool(value)


class QTReLU(_ReturnsQuantTensor, QuantReLU):
    """ReLU + unsigned 8-bit activation quantiser (`act_quant(signed=False)`), returning a QuantTensor."""

    def __init__(self) -> None:
        super().__init__(act_quant=act_quant(signed=False), return_quant_tensor=True)


class QTIdentity(_ReturnsQuantTensor, QuantIdentity):
    """8-bit activation quantiser without an activation (`act_quant(signed)`), returning a QuantTensor."""

    def __init__(self, signed: bool) -> None:
        super().__init__(act_quant=act_quant(signed=signed), return_quant_tensor=True)


def quant_tensor(value: Tensor, scale: Tensor, signed: bool, training: bool = False) -> IntQuantTensor:
    """The QuantTensor of 8-bit activations `value` (integers times `scale`, zero-point 0)."""
    return IntQuantTensor(value, scale, torch.zeros_like(scale), torch.full_like(scale, float(ACT_BITS)),
                          bool(signed), bool(training))


def scale_of(x: Tensor | QuantTensor) -> Tensor | None:
    """The scale an activation carries; None for a plain tensor (quantisation off)."""
    return x.scale if isinstance(x, QuantTensor) else None


def value_of(x: Tensor | QuantTensor) -> Tensor:
    """The values of an activation, QuantTensor or plain."""
    return x.value if isinstance(x, QuantTensor) else x


def map_values(x: Tensor | QuantTensor, fn) -> Tensor | QuantTensor:
    """fn applied to the values; a QuantTensor keeps its scale (fn must move or pick values only:
    channel shuffle, chunk, max-pool, nearest upsampling)."""
    return x.set(value=fn(x.value)) if isinstance(x, QuantTensor) else fn(x)


def concat_scale(where: str, *scales: Tensor | float) -> Tensor | float:
    """The one scale of a channel concat, or SpecError naming `where` if the parts' scales differ.

    The engine concatenates by writing the producers into one buffer, which has one scale (and the
    requantisation of each producer targets it), so every part must carry the same scale exactly:
    in the detector, both halves of a ShuffleNet unit end in the stage's one output quantiser."""
    first = float(scales[0])
    for s in scales[1:]:
        if float(s) != first:
            raise SpecError(f"{where}: concat of activations at scales {first!r} and {float(s)!r}; the engine "
                            "writes both into one buffer with one scale, so both must end in one quantiser")
    return scales[0]


class RoundHalfUpSte(brevitas.jit.ScriptModule):
    """floor(x + 0.5) with a straight-through gradient: the contract's rounding rule (half towards
    +infinity), so a fake-quant dilation exactly on a .5 boundary rounds as the engine does."""

    def __init__(self) -> None:  # explicit: the injector refuses *args/**kwargs constructors
        super().__init__()

    @brevitas.jit.script_method
    def forward(self, x: Tensor) -> Tensor:
        return floor_ste(x + 0.5)


class DilationClamp(brevitas.jit.ScriptModule):
    """Clamp to [0, max_dilation] instead of the full uint8 range (the requant record's clamp_hi)."""

    def __init__(self, max_dilation: int) -> None:
        super().__init__()
        self.max_dilation = float(max_dilation)

    @brevitas.jit.script_method
    def forward(self, x: Tensor, min_val: Tensor, max_val: Tensor) -> Tensor:
        return tensor_clamp(x, min_val=min_val, max_val=torch.clamp(max_val, max=self.max_dilation))


class _DilationQuant(UintQuant, PerTensorFloatScaling8bit, ActQuantSolver):
    """uint8, zero-point 0, constant scale 1, round half up with STE, clamp to [0, max_dilation]."""

    scaling_impl_type = ScalingImplType.CONST
    # Brevitas derives a constant scale as threshold / int_threshold, with threshold = max(|min_val|,
    # |max_val|) and int_threshold = 255 for uint8: max_val = 255 gives a scale of exactly 1.0.
    min_val = 0.0
    max_val = float((1 << DILATION_BITS) - 1)
    bit_width = DILATION_BITS
    float_to_int_impl = RoundHalfUpSte
    tensor_clamp_impl = DilationClamp


@lru_cache(maxsize=None)
def DilationQuant(max_dilation: int) -> type:  # noqa: N802 (a quantiser class factory, named like one)
    """Quantiser class for the dilation map: use as `QuantIdentity(act_quant=DilationQuant(7))`."""
    if not 1 <= max_dilation < (1 << DILATION_BITS):
        raise ValueError(f"max_dilation={max_dilation}, must be in [1, {(1 << DILATION_BITS) - 1}]")
    return _DilationQuant.let(max_dilation=int(max_dilation))


# ------------------------------------------------------------------ the engine's arithmetic, in torch

_F64_EXACT = 1 << 53  # float64 sums integers exactly below this (golden.ops uses the same bound)
(ACT_BITS,) = ACT_BITS_CHOICES  # activations are 8-bit (the unpacking fails if the spec ever allows more)


def act_scale(q: nn.Module) -> tuple[float, bool]:
    """(scale, signed) of a QuantReLU / QuantIdentity activation quantiser."""
    proxy = q.act_quant
    return float(proxy.scale()), bool(proxy.is_signed)


def image_integers(x: Tensor, scale: float, signed: bool) -> Tensor:
    """Float pixels in [0, 1] -> the program's integer input (int64, same shape): x / scale in
    float64, rounded half up, clamped to the 8-bit range. The host's rule (verify.quantize_image)."""
    lo, hi = act_range(ACT_BITS, signed)
    return torch.floor(x.detach().double() / float(scale) + 0.5).clamp_(lo, hi).to(torch.int64)


def to_integers(x: Tensor, scale: Tensor | float) -> Tensor:
    """The integers (float64, integer-valued) behind a fake-quant activation x = q * scale.

    x is a quantiser's output (or exact integers times its scale), so x / scale is within a few
    float32 ulps of an 8-bit integer and rounding recovers it exactly."""
    return torch.round(x.detach().double() / float(scale))


@dataclass(frozen=True)
class Requant:
    """One requantising layer exactly as the engine runs it (`spec.params`, "Rounding rule").

    weight: integer weights (O, I/groups, k, k), int64; bias: int32 bias at scale s_in * s_w;
    mult, shift: the per-channel (mult, shift) of `quantize_multiplier(s_in * s_w / s_out)`;
    clamp: (lo, hi); scale, signed: the output quantiser's. Tensors are int64 on the weights' device.
    """

    weight: Tensor
    weight_bits: int
    bias: Tensor
    mult: Tensor
    shift: Tensor
    clamp: tuple[int, int]
    scale: float
    signed: bool

    def apply(self, acc: Tensor) -> Tensor:
        """clamp(((acc + bias) * mult + 2**(shift-1)) >> shift), per output channel (dim 1), in
        int64: `golden.ops.requantize` for NCHW accumulators. |acc + bias| < 2**31 and mult < 2**24
        keep the product inside int64, as on the engine."""
        view = (1, -1) + (1,) * (acc.dim() - 2)
        shift = self.shift.view(view)
        prod = (acc.to(torch.int64) + self.bias.view(view)) * self.mult.view(view)
        half = torch.where(shift > 0, torch.bitwise_left_shift(torch.ones_like(shift), (shift - 1).clamp(min=0)),
                           torch.zeros_like(shift))
        return torch.bitwise_right_shift(prod + half, shift).clamp_(*self.clamp)

    def values(self, y: Tensor, like: Tensor) -> Tensor:
        """Requantised integers -> the activation values q * scale, in `like`'s dtype and device."""
        return y.to(like.dtype) * torch.tensor(self.scale, dtype=like.dtype, device=like.device)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward, identity backward."""
    return x + (torch.round(x) - x).detach()


def fold_params(conv: nn.Module, bn: nn.BatchNorm2d | None, s_in: torch.Tensor):
    """The conv (+ BN, running statistics) exactly as the engine runs it.

    BN is folded into the weights *before* they are quantised (so the 4-bit integers are the
    deployed ones) and the folded bias is rounded to an integer at scale s_in * s_w, the contract's
    int32 bias. Returns (quantised weight tensor, float bias, integer bias, per-channel s_w).
    Training in this mode and exporting with it make the fake-quant model the integer program.
    (`requant_params` turns the result into the integers the engine runs with.)
    """
    cout = conv.out_channels
    a = torch.ones(cout, dtype=conv.weight.dtype, device=conv.weight.device)
    b = torch.zeros_like(a)
    if bn is not None:
        a = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        b = bn.bias - bn.running_mean * a
    if conv.bias is not None:
        b = b + a * conv.bias
    qw = conv.weight_quant(conv.weight * a.view(-1, 1, 1, 1))
    s_w = qw.scale.reshape(-1)
    step = s_in.detach() * s_w
    bias_int = round_ste(b / step)
    return qw, bias_int * step, bias_int, s_w


def requant_params(qw, bias_int: Tensor, s_w: Tensor, s_in: Tensor | float, s_out: float, out_signed: bool, *,
                   clamp: tuple[int, int] | None = None, where: str = "layer") -> Requant:
    """The integers a requantising layer runs with, from its quantised weights `qw` (a Brevitas
    QuantTensor), integer bias and per-channel weight scales (`models.fold_params`), the input
    scale and the output quantiser's (scale, signed).

    mult/shift: `quantize_multiplier(s_in * s_w / s_out)` per channel, the product in float64
    (exact: both are float32 values) and the ratio rounded once. Clamp: the output type's range,
    [0, 255] unsigned (ReLU), unless given (the dilation predictor's [0, max_dilation]).
    The exporter writes these integers and the model's eval path computes with them.
    """
    bits = int(qw.bit_width)
    if bits not in WEIGHT_BITS:
        raise SpecError(f"{where}: {bits}-bit weights; the engine runs {' or '.join(map(str, WEIGHT_BITS))}-bit weights")
    device = qw.value.device
    weight = qw.int().detach().to(torch.int64)
    bias = bias_int.detach().to(torch.int64).to(device)
    eff = float(s_in) * s_w.detach().double().cpu().numpy()  # value of one accumulator LSB, per channel
    if np.any(eff <= 0):
        raise SpecError(f"{where}: output channel {int(np.argmin(eff))} has a zero weight scale")
    ms = [quantize_multiplier(float(e / s_out), where=f"{where} channel {c}") for c, e in enumerate(eff)]
    mult = torch.tensor([m for m, _ in ms], dtype=torch.int64, device=device)
    shift = torch.tensor([sh for _, sh in ms], dtype=torch.int64, device=device)
    lo, hi = clamp if clamp is not None else act_range(ACT_BITS, out_signed)
    return Requant(weight, bits, bias, mult, shift, (int(lo), int(hi)), float(s_out), bool(out_signed))


def layer_requant(conv: nn.Module, bn: nn.BatchNorm2d | None, s_in: Tensor, s_out: float, out_signed: bool, *,
                  clamp: tuple[int, int] | None = None, where: str = "layer"):
    """`fold_params` then `requant_params`: ((qw, float bias, integer bias, s_w), Requant) of one
    conv (+ BN) requantised to (s_out, out_signed). The one function both the exporter and the
    model's exact eval path call."""
    folded = fold_params(conv, bn, s_in)
    qw, _, bias_int, s_w = folded
    return folded, requant_params(qw, bias_int, s_w, s_in, s_out, out_signed, clamp=clamp, where=where)


def _check_exact(x_int: Tensor, rq: Requant, terms: int, where: str) -> None:
    bound = (1 << ACT_BITS) * (1 << (rq.weight_bits - 1)) * terms  # |x| <= 256, |w| <= 2**(bits-1)
    if bound >= _F64_EXACT:
        raise OverflowError(f"{where}: {terms} products per output could exceed float64's exact integer range")


def exact_conv(x_int: Tensor, rq: Requant, conv) -> Tensor:
    """The integer accumulators sum(w * x) (int64, NCHW) of `conv`'s geometry: float64 sums of
    integer products, exact (every partial sum stays below 2**53)."""
    w = rq.weight.to(torch.float64)
    _check_exact(x_int, rq, w[0].numel(), "exact_conv")
    acc = F.conv2d(x_int.to(torch.float64), w, None, conv.stride, conv.padding, conv.dilation, conv.groups)
    return acc.to(torch.int64)
