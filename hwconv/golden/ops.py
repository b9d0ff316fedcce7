"""Integer-exact reference of every engine op (numpy), channels-last (H, W, C).

Inputs are integer arrays; accumulators come back as int64. Products of small integers are summed
with BLAS in floating point, which is exact as long as every partial sum stays below the mantissa
limit: float32 when the worst case is below 2**24, float64 (2**53) otherwise. The worst case used,
max|x| * max|w| * terms, bounds every partial sum in any summation order, so exactness is
guaranteed, not hoped for.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ..spec.isa import conv_out_size
from ..spec.params import act_range

_F32_EXACT = 1 << 24
_F64_EXACT = 1 << 53


def _exact_float_dtype(bound: int):
    if bound < _F32_EXACT:
        return np.float32
    if bound < _F64_EXACT:
        return np.float64
    raise OverflowError(f"worst-case partial sum {bound} exceeds float64's exact range")


def _max_abs(a: np.ndarray) -> int:
    # From min/max as Python ints: np.abs on int8 maps -128 to -128.
    return max(abs(int(a.min())), abs(int(a.max()))) if a.size else 0


def _worst_case(x: np.ndarray, w: np.ndarray, terms: int) -> int:
    return _max_abs(x) * _max_abs(w) * terms


def _pad_hw(x: np.ndarray, pad: int, value: int = 0) -> np.ndarray:
    if pad == 0:
        return x
    return np.pad(x, ((pad, pad), (pad, pad), (0, 0)), constant_values=value)


def _windows(xp: np.ndarray, k: int, stride: int, ho: int, wo: int, dilation: int = 1) -> np.ndarray:
    """(ho, wo, k, k, C) view of the k x k windows of a padded (H, W, C) array."""
    sh, sw, sc = xp.strides
    return as_strided(xp, shape=(ho, wo, k, k, xp.shape[2]),
                      strides=(sh * stride, sw * stride, sh * dilation, sw * dilation, sc), writeable=False)


def conv2d(x: np.ndarray, w: np.ndarray, stride: int = 1, pad: int = 0) -> np.ndarray:
    """Dense convolution. x: (H, W, Cin), w: (Cout, k, k, Cin) -> int64 (Ho, Wo, Cout)."""
    cout, k, _, cin = w.shape
    h, wd, _ = x.shape
    ho, wo = conv_out_size(h, k, stride, pad), conv_out_size(wd, k, stride, pad)
    ft = _exact_float_dtype(_worst_case(x, w, k * k * cin))
    xp = _pad_hw(x.astype(ft, copy=False), pad)
    if k == 1:
        cols = xp[: (ho - 1) * stride + 1: stride, : (wo - 1) * stride + 1: stride, :]
    else:
        cols = _windows(xp, k, stride, ho, wo)
    cols = np.ascontiguousarray(cols).reshape(ho * wo, k * k * cin)
    acc = cols @ w.reshape(cout, -1).astype(ft).T
    return acc.astype(np.int64).reshape(ho, wo, cout)


def depthwise(x: np.ndarray, w: np.ndarray, stride: int = 1, pad: int = 0) -> np.ndarray:
    """Depthwise convolution. x: (H, W, C), w: (C, k, k) -> int64 (Ho, Wo, C)."""
    c, k, _ = w.shape
    h, wd, _ = x.shape
    ho, wo = conv_out_size(h, k, stride, pad), conv_out_size(wd, k, stride, pad)
    ft = _exact_float_dtype(_worst_case(x, w, k * k))
    xp = _pad_hw(x.astype(ft, copy=False), pad)
    wf = w.astype(ft)
    acc = np.zeros((ho, wo, c), dtype=ft)
    for ky in range(k):
        for kx in range(k):
            tap = xp[ky: ky + (ho - 1) * stride + 1: stride, kx: kx + (wo - 1) * stride + 1: stride, :]
            acc += tap * wf[:, ky, kx]
    return acc.astype(np.int64)


def deform_depthwise(x: np.ndarray, w: np.ndarray, dilation: np.ndarray, max_dilation: int) -> np.ndarray:
    """Modified deformable depthwise 3x3: tap (ky, kx) of pixel (y, x) reads
    x[y + (ky-1)*d, x + (kx-1)*d] with d = min(dilation[y, x], max_dilation); zeros outside.

    x: (H, W, C), w: (C, 3, 3), dilation: (H, W) non-negative integers -> int64 (H, W, C).
    """
    c, k, _ = w.shape
    h, wd, _ = x.shape
    m = max_dilation
    d = np.minimum(np.asarray(dilation, dtype=np.int64), m)
    ft = _exact_float_dtype(_worst_case(x, w, k * k))
    xp = _pad_hw(x.astype(ft, copy=False), m)
    wf = w.astype(ft)
    ys = np.arange(h)[:, None] + m
    xs = np.arange(wd)[None, :] + m
    acc = np.zeros((h, wd, c), dtype=ft)
    for ky in range(k):
        for kx in range(k):
            tap = xp[ys + (ky - 1) * d, xs + (kx - 1) * d]  # (H, W, C) gather
            acc += tap * wf[:, ky, kx]
    return acc.astype(np.int64)


def maxpool(x: np.ndarray, k: int, stride: int, pad: int, signed: bool, bits: int = 8) -> np.ndarray:
    """Max pool; padding takes the type's minimum, which can never win over a real element."""
    h, wd, _ = x.shape
    ho, wo = conv_out_size(h, k, stride, pad), conv_out_size(wd, k, stride, pad)
    xp = _pad_hw(x, pad, act_range(bits, signed)[0])
    return _windows(xp, k, stride, ho, wo).max(axis=(2, 3))


def add(a: np.ndarray, b: np.ndarray, mult_a: int, mult_b: int) -> np.ndarray:
    """Element-wise a * mult_a + b * mult_b, exact in int64."""
    return a.astype(np.int64) * mult_a + b.astype(np.int64) * mult_b


def requantize(acc: np.ndarray, bias: np.ndarray, mult: np.ndarray, shift: np.ndarray,
               lo: int, hi: int) -> np.ndarray:
    """The contract's rounding rule, per output channel (last axis):
    clamp(((acc + bias) * mult + 2**(shift-1)) >> shift, lo, hi), arithmetic shift."""
    shift = np.asarray(shift, dtype=np.int64)
    prod = (acc + np.asarray(bias, dtype=np.int64)) * np.asarray(mult, dtype=np.int64)
    half = np.where(shift > 0, np.left_shift(1, np.maximum(shift - 1, 0)), 0)
    y = np.right_shift(prod + half, shift)
    return np.clip(y, lo, hi)


def upsample2x(x: np.ndarray) -> np.ndarray:
    """Nearest-neighbour 2x upsample of (H, W, C)."""
    return np.repeat(np.repeat(x, 2, axis=0), 2, axis=1)
