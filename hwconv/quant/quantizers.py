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
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

import brevitas
from brevitas.function.ops import tensor_clamp
from brevitas.function.ops_ste import floor_ste
from brevitas.inject.enum import ScalingImplType
from brevitas.quant.base import PerTensorFloatScaling8bit, UintQuant
from brevitas.quant.scaled_int import Int8ActPerTensorFloat, Int8WeightPerChannelFloat, Uint8ActPerTensorFloat
from brevitas.quant.solver import ActQuantSolver

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
