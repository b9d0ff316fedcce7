"""Golden integer ops (hwconv.golden.ops) and parameter encoding (hwconv.spec.params) against
independent references.

Every reference here is written from scratch: float64 torch.nn.functional in NCHW for the
convolutions and pooling (integer-valued and far below 2**53, so bit-exact), explicit index
gathers for the deformable depthwise op, Python ints / fractions for requantisation. Nothing in
this file calls hwconv to compute an expected value, and every comparison is exact
(torch.equal / np.array_equal), never allclose.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hwconv.golden import ops
from hwconv.spec import SpecError
from hwconv.spec.params import (MULT_MAX, SHIFT_MAX, pack_weights, packed_weight_bytes, quantize_multiplier,
                                unpack_weights)

F64 = torch.float64
PROP = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
seeds = st.integers(0, 2**32 - 1)


# -- data ------------------------------------------------------------------------------------
def act_lohi(signed: bool) -> tuple[int, int]:
    return (-128, 127) if signed else (0, 255)


def rand_act(rng: np.random.Generator, shape, signed: bool) -> np.ndarray:
    """int8 / uint8 activations, as read_tensor hands them to the ops, with both extremes present."""
    lo, hi = act_lohi(signed)
    x = rng.integers(lo, hi + 1, size=shape)
    flat = x.reshape(-1)
    flat[rng.integers(flat.size)] = lo
    flat[rng.integers(flat.size)] = hi
    return x.astype(np.int8 if signed else np.uint8)


def rand_weights(rng: np.random.Generator, shape, bits: int) -> np.ndarray:
    """Weights in the bits-wide range, as an int64 array (see the int8 tests for unpack_weights' dtype)."""
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    w = rng.integers(lo, hi + 1, size=shape)
    flat = w.reshape(-1)
    flat[rng.integers(flat.size)] = lo
    flat[rng.integers(flat.size)] = hi
    return w.astype(np.int64)


def out_len(n: int, k: int, s: int, p: int) -> int:
    return (n + 2 * p - k) // s + 1


# -- torch helpers -----------------------------------------------------------------------------
def nchw(x: np.ndarray) -> torch.Tensor:
    """(H, W, C) integer numpy -> (1, C, H, W) float64 torch."""
    return torch.from_numpy(np.asarray(x).astype(np.float64)).permute(2, 0, 1).unsqueeze(0)


def hwc(t: torch.Tensor) -> torch.Tensor:
    """(1, C, H, W) -> (H, W, C)."""
    return t[0].permute(1, 2, 0)


def assert_same(golden: np.ndarray, ref: torch.Tensor, *, acc: bool = True) -> None:
    """Exact equality of a golden int result and an integer-valued float64/int64 torch reference."""
    if acc:
        assert golden.dtype == np.int64, golden.dtype
    assert torch.equal(ref, torch.round(ref)), "reference is not integer-valued"
    g = torch.from_numpy(np.ascontiguousarray(golden).astype(np.float64))
    assert g.shape == ref.shape, (g.shape, ref.shape)
    assert torch.equal(g, ref.to(F64)), f"max |diff| = {(g - ref.to(F64)).abs().max().item()}"


# -- references -----------------------------------------------------------------------------------
def ref_conv(x, w, stride, pad):
    """w: (Cout, k, k, Cin) OHWI."""
    wt = torch.from_numpy(np.asarray(w).astype(np.float64)).permute(0, 3, 1, 2)
    return hwc(F.conv2d(nchw(x), wt, stride=stride, padding=pad))


def ref_depthwise(x, w, stride, pad):
    """w: (C, k, k)."""
    wt = torch.from_numpy(np.asarray(w).astype(np.float64)).unsqueeze(1)
    return hwc(F.conv2d(nchw(x), wt, stride=stride, padding=pad, groups=w.shape[0]))


def ref_maxpool(x, k, stride, pad):
    t = nchw(x)
    if pad <= k // 2:  # torch's own padding is -inf padding
        return hwc(F.max_pool2d(t, k, stride=stride, padding=pad))
    # torch refuses pad > k/2; the engine allows up to k-1: pad with -inf explicitly.
    t = F.pad(t, (pad, pad, pad, pad), value=-math.inf)
    return hwc(F.max_pool2d(t, k, stride=stride, padding=0))


def ref_upsample(x):
    return hwc(F.interpolate(nchw(x), scale_factor=2, mode="nearest"))


def ref_deform(x, w, dilation, max_dilation):
    """Explicit gathers: tap (ky, kx) of (y, x) reads x[y+(ky-1)d, x+(kx-1)d], zero outside the image."""
    xt = torch.from_numpy(np.asarray(x).astype(np.float64))  # (H, W, C)
    wt = torch.from_numpy(np.asarray(w).astype(np.float64))  # (C, 3, 3)
    h, wd, c = xt.shape
    d = torch.clamp(torch.from_numpy(np.asarray(dilation).astype(np.int64)), max=max_dilation)
    ys = torch.arange(h, dtype=torch.int64)[:, None].expand(h, wd)
    xs = torch.arange(wd, dtype=torch.int64)[None, :].expand(h, wd)
    flat = xt.reshape(h * wd, c)
    out = torch.zeros((h, wd, c), dtype=F64)
    for ky in range(3):
        for kx in range(3):
            yy = ys + (ky - 1) * d
            xx = xs + (kx - 1) * d
            inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < wd)
            idx = torch.where(inside, yy * wd + xx, torch.zeros_like(yy))
            tap = flat[idx.reshape(-1)].reshape(h, wd, c)
            tap = torch.where(inside[..., None], tap, torch.zeros((), dtype=F64))
            out += tap * wt[:, ky, kx]
    return out


def ref_requant_scalar(acc: int, bias: int, mult: int, shift: int, lo: int, hi: int) -> int:
    """Round half toward +inf of (acc + bias) * mult / 2**shift, then clamp (Python ints)."""
    q = Fraction((acc + bias) * mult, 2**shift)
    y = math.floor(q + Fraction(1, 2))
    return min(max(y, lo), hi)


def ref_requant(acc, bias, mult, shift, lo, hi) -> np.ndarray:
    acc = np.asarray(acc)
    out = np.empty(acc.shape, dtype=object)
    for idx in np.ndindex(*acc.shape):
        c = idx[-1]
        out[idx] = ref_requant_scalar(int(acc[idx]), int(bias[c]), int(mult[c]), int(shift[c]), lo, hi)
    return out


def assert_requant_equal(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    assert [int(v) for v in got.reshape(-1)] == [int(v) for v in want.reshape(-1)]


# =================================================================================================
# 1. dense / depthwise / maxpool / upsample / add vs torch
# =================================================================================================
CONV_CASES = [(k, s, p) for k in (1, 3) for s in (1, 2, 4) for p in range(k // 2 + 1)]


@pytest.mark.parametrize("signed", [False, True], ids=["u8", "s8"])
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("k,stride,pad", CONV_CASES)
def test_conv2d_matches_torch(k, stride, pad, bits, signed):
    rng = np.random.default_rng(1000 * k + 100 * stride + 10 * pad + bits + signed)
    h, w, cin, cout = 9, 11, 5, 4
    x = rand_act(rng, (h, w, cin), signed)
    wt = rand_weights(rng, (cout, k, k, cin), bits)
    got = ops.conv2d(x, wt, stride, pad)
    assert got.shape == (out_len(h, k, stride, pad), out_len(w, k, stride, pad), cout)
    assert_same(got, ref_conv(x, wt, stride, pad))


@pytest.mark.parametrize("k,stride,pad", [(3, 1, 1), (3, 4, 1), (3, 2, 0), (1, 4, 0)])
def test_conv2d_tiny_and_noncontiguous_inputs(k, stride, pad):
    rng = np.random.default_rng(7)
    # 1-pixel images, and a strided (non-contiguous) view of a bigger tensor.
    side = max(1, k - 2 * pad)  # smallest image with a non-empty output
    for x in (rand_act(rng, (side, side, 1), True), rand_act(rng, (side, side + 1, 2), False),
              rand_act(rng, (20, 23, 6), False)[1::2, ::3, 1:5]):
        wt = rand_weights(rng, (3, k, k, x.shape[2]), 8)
        assert_same(ops.conv2d(x, wt, stride, pad), ref_conv(x, wt, stride, pad))


def test_conv2d_known_values():
    # Hand-computed: 2x2 single-channel image, 3x3 all-ones kernel, pad 1 -> every output is the sum
    # of the whole image (all four pixels are within one step of every pixel).
    x = np.array([[1, 2], [3, 4]], dtype=np.uint8)[:, :, None]
    w = np.ones((1, 3, 3, 1), dtype=np.int64)
    assert np.array_equal(ops.conv2d(x, w, 1, 1)[:, :, 0], [[10, 10], [10, 10]])
    w = np.zeros((1, 3, 3, 1), dtype=np.int64)
    w[0, 0, 0, 0] = -2  # top-left tap: reads the pixel up-left
    assert np.array_equal(ops.conv2d(x, w, 1, 1)[:, :, 0], [[0, 0], [0, -2]])


@pytest.mark.parametrize("signed", [False, True], ids=["u8", "s8"])
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("k,stride,pad", [(3, 1, 1), (3, 2, 1), (3, 1, 0), (3, 2, 0), (1, 1, 0), (1, 2, 0)])
def test_depthwise_matches_torch(k, stride, pad, bits, signed):
    rng = np.random.default_rng(2000 + 100 * k + 10 * stride + pad + bits * 3 + signed)
    x = rand_act(rng, (10, 7, 6), signed)
    wt = rand_weights(rng, (6, k, k), bits)
    assert_same(ops.depthwise(x, wt, stride, pad), ref_depthwise(x, wt, stride, pad))


@pytest.mark.parametrize("signed", [False, True], ids=["u8", "s8"])
@pytest.mark.parametrize("k,stride,pad", [(k, s, p) for k in (2, 3) for s in (1, 2) for p in range(k)])
def test_maxpool_matches_torch(k, stride, pad, signed):
    rng = np.random.default_rng(3000 + 100 * k + 10 * stride + pad + signed)
    x = rand_act(rng, (9, 8, 5), signed)
    got = ops.maxpool(x, k, stride, pad, signed)
    assert got.shape == (out_len(9, k, stride, pad), out_len(8, k, stride, pad), 5)
    assert_same(got, ref_maxpool(x, k, stride, pad), acc=False)


@pytest.mark.parametrize("signed", [False, True], ids=["u8", "s8"])
def test_maxpool_all_minimum_input_is_not_beaten_by_padding(signed):
    # Every element is the type's minimum: padding must not produce anything else.
    lo = act_lohi(signed)[0]
    x = np.full((4, 5, 2), lo, dtype=np.int8 if signed else np.uint8)
    for k, s, p in [(3, 1, 1), (3, 2, 2), (2, 1, 1), (2, 2, 1)]:
        got = ops.maxpool(x, k, s, p, signed)
        assert_same(got, ref_maxpool(x, k, s, p), acc=False)
        assert np.all(got == lo)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int64])
def test_upsample2x_matches_torch(dtype):
    rng = np.random.default_rng(4)
    x = rng.integers(-128 if dtype != np.uint8 else 0, 128, size=(3, 5, 4)).astype(dtype)
    got = ops.upsample2x(x)
    assert got.dtype == dtype
    assert_same(got, ref_upsample(x), acc=False)


@pytest.mark.parametrize("sa,sb", [(False, False), (True, False), (False, True), (True, True)])
def test_add_matches_torch(sa, sb):
    rng = np.random.default_rng(5 + 2 * sa + sb)
    a = rand_act(rng, (6, 7, 3), sa)
    b = rand_act(rng, (6, 7, 3), sb)
    for ma, mb in [(1, 1), (32767, -32768), (-32768, 32767), (0, 5), (-7, 0), (12345, 23456)]:
        got = ops.add(a, b, ma, mb)
        want = torch.from_numpy(a.astype(np.int64)) * ma + torch.from_numpy(b.astype(np.int64)) * mb
        assert got.dtype == np.int64
        assert torch.equal(torch.from_numpy(got), want)


# =================================================================================================
# 2. deformable depthwise vs explicit gathers
# =================================================================================================
@pytest.mark.parametrize("h,w,c,maxd", [(7, 9, 4, 7), (2, 3, 1, 7), (1, 1, 3, 15), (5, 5, 1, 0),
                                        (12, 4, 5, 15), (3, 12, 2, 1)])
def test_deform_matches_gather_reference(h, w, c, maxd):
    rng = np.random.default_rng(h * 1000 + w * 100 + c * 10 + maxd)
    x = rand_act(rng, (h, w, c), bool(c % 2))
    wt = rand_weights(rng, (c, 3, 3), 8)
    # dilation map as the engine reads it: uint8, a non-contiguous [:, :, 0] view of an (H, W, 1) tensor
    dmap = rng.integers(0, maxd + 6, size=(h, w, 1)).astype(np.uint8)
    dmap.reshape(-1)[: min(3, h * w)] = [0, maxd, 255][: min(3, h * w)]  # 0, max and far above max
    dil = dmap[:, :, 0]
    assert_same(ops.deform_depthwise(x, wt, dil, maxd), ref_deform(x, wt, dil, maxd))


def test_deform_dilation_above_max_saturates():
    rng = np.random.default_rng(11)
    x = rand_act(rng, (9, 9, 3), False)
    wt = rand_weights(rng, (3, 3, 3), 4)
    d_at_max = np.full((9, 9), 3)
    ref = ref_deform(x, wt, d_at_max, 3)
    for above in (4, 9, 200):
        assert_same(ops.deform_depthwise(x, wt, np.full((9, 9), above), 3), ref)


def test_deform_zero_dilation_is_centre_times_weight_sum():
    rng = np.random.default_rng(12)
    x = rand_act(rng, (4, 6, 3), True)
    wt = rand_weights(rng, (3, 3, 3), 8)
    got = ops.deform_depthwise(x, wt, np.zeros((4, 6), dtype=np.uint8), 7)
    assert np.array_equal(got, x.astype(np.int64) * wt.sum(axis=(1, 2)))
    assert_same(got, ref_deform(x, wt, np.zeros((4, 6)), 7))


def test_deform_dilation_larger_than_image_keeps_only_centre():
    # Every neighbour of every pixel is outside a 3x2 image when d >= 3: only the centre tap counts.
    rng = np.random.default_rng(13)
    x = rand_act(rng, (3, 2, 2), False)
    wt = rand_weights(rng, (2, 3, 3), 8)
    got = ops.deform_depthwise(x, wt, np.full((3, 2), 5), 15)
    assert np.array_equal(got, x.astype(np.int64) * wt[:, 1, 1])
    assert_same(got, ref_deform(x, wt, np.full((3, 2), 5), 15))


def test_deform_with_uniform_dilation_equals_dilated_depthwise():
    # A constant map d behaves as an ordinary dilated 3x3 depthwise conv with padding d.
    rng = np.random.default_rng(14)
    x = rand_act(rng, (11, 10, 4), True)
    wt = rand_weights(rng, (4, 3, 3), 8)
    for d in (1, 2, 5):
        want = hwc(F.conv2d(nchw(x), torch.from_numpy(wt.astype(np.float64)).unsqueeze(1), padding=d,
                            dilation=d, groups=4))
        assert_same(ops.deform_depthwise(x, wt, np.full((11, 10), d), 7), want)


# =================================================================================================
# 3. requantize vs Python ints
# =================================================================================================
WIDE = (-(2**62), 2**62)  # clamp that never bites: see the raw rounding


@pytest.mark.parametrize("shift", [1, 2, 3, 7, 16, 24, 31, 40, 55])
def test_requantize_ties_round_toward_plus_infinity(shift):
    half = 1 << (shift - 1)
    accs, want = [], []
    for k in (-7, -5, -3, -1, 1, 3, 5, 7):  # odd k: prod = k * 2**(shift-1) is exactly x.5
        accs += [k * half, k * half - 1, k * half + 1]
        want += [(k + 1) // 2, ref_requant_scalar(k * half - 1, 0, 1, shift, *WIDE),
                 ref_requant_scalar(k * half + 1, 0, 1, shift, *WIDE)]
    acc = np.array(accs, dtype=np.int64)[:, None]
    got = ops.requantize(acc, np.array([0]), np.array([1]), np.array([shift]), *WIDE)
    assert [int(v) for v in got[:, 0]] == want
    # spot values of the rule itself: -1.5 -> -1, -0.5 -> 0, 1.5 -> 2
    assert want[6] == -1 and want[9] == 0 and want[15] == 2


def test_requantize_tie_through_multiplier_and_bias():
    # acc * mult = -3 * 2**(shift-1) with mult > 1 and the value split between acc and bias.
    for shift in (2, 5, 20, 30):
        mult = 3
        total = -(1 << (shift - 1))  # (acc + bias) * 3 = -3 * 2**(shift-1)  ->  -1.5  ->  -1
        acc = np.array([[total - 17, total + 5]], dtype=np.int64)
        bias = np.array([17, -5])
        got = ops.requantize(acc, bias, np.array([mult, mult]), np.array([shift, shift]), *WIDE)
        assert got.tolist() == [[-1, -1]]
        assert ref_requant_scalar(total, 0, mult, shift, *WIDE) == -1


def test_requantize_shift_zero_is_plain_product():
    acc = np.array([[-5, 0, 7], [2**31 - 1, -(2**31), 1]], dtype=np.int64)
    bias, mult, shift = np.array([3, -1, 0]), np.array([MULT_MAX, 1, 2]), np.array([0, 0, 0])
    got = ops.requantize(acc, bias, mult, shift, *WIDE)
    assert_requant_equal(got, ref_requant(acc, bias, mult, shift, *WIDE))
    assert int(got[0, 0]) == -2 * MULT_MAX and int(got[1, 0]) == (2**31 + 2) * MULT_MAX


@pytest.mark.parametrize("shift", [0, 1, 23, 24, 31, 40, 47, 55, 63])
def test_requantize_extremes(shift):
    big = [2**31 - 1, 2**31 - 2, -(2**31), -(2**31) + 1, 0, 1, -1]
    acc = np.array(big, dtype=np.int64)[:, None].repeat(4, axis=1)
    bias = np.array([2**31 - 1, -(2**31), 0, 12345])
    mult = np.array([MULT_MAX, MULT_MAX, MULT_MAX - 1, 1 << 23])
    sh = np.full(4, shift)
    for lo, hi in [WIDE, (-128, 127), (0, 255), (3, 3)]:
        got = ops.requantize(acc, bias, mult, sh, lo, hi)
        assert_requant_equal(got, ref_requant(acc, bias, mult, sh, lo, hi))


def test_requantize_per_channel_broadcast_over_hw():
    rng = np.random.default_rng(21)
    acc = rng.integers(-(2**20), 2**20, size=(3, 4, 5))
    bias = rng.integers(-1000, 1000, size=5)
    mult = rng.integers(0, MULT_MAX + 1, size=5)
    shift = np.array([0, 1, 12, 30, 44])
    got = ops.requantize(acc, bias, mult, shift, -128, 127)
    assert_requant_equal(got, ref_requant(acc, bias, mult, shift, -128, 127))


@PROP
@given(seed=seeds, n=st.integers(1, 20), c=st.integers(1, 6), lo=st.integers(-300, 300), span=st.integers(0, 600))
def test_requantize_property(seed, n, c, lo, span):
    rng = np.random.default_rng(seed)
    acc = rng.integers(-(2**31), 2**31, size=(n, c))
    acc[rng.random((n, c)) < 0.5] //= 1 << int(rng.integers(0, 31))  # mix of magnitudes
    bias = rng.integers(-(2**31), 2**31, size=c)
    mult = rng.integers(0, MULT_MAX + 1, size=c)
    shift = rng.integers(0, SHIFT_MAX + 1, size=c)
    for lo_, hi_ in [(lo, lo + span), WIDE]:
        got = ops.requantize(acc, bias, mult, shift, lo_, hi_)
        assert_requant_equal(got, ref_requant(acc, bias, mult, shift, lo_, hi_))


# =================================================================================================
# 4. property-based: random shapes, strides, paddings, dilations, widths, signedness
# =================================================================================================
@PROP
@given(seed=seeds, h=st.integers(1, 12), w=st.integers(1, 12), cin=st.integers(1, 12), cout=st.integers(1, 12),
       k=st.sampled_from([1, 3]), stride=st.sampled_from([1, 2, 4]), pad_frac=st.integers(0, 1),
       bits=st.sampled_from([4, 8]), signed=st.booleans())
def test_conv2d_property(seed, h, w, cin, cout, k, stride, pad_frac, bits, signed):
    pad = pad_frac * (k // 2)
    assume(h + 2 * pad >= k and w + 2 * pad >= k)
    rng = np.random.default_rng(seed)
    x = rand_act(rng, (h, w, cin), signed)
    wt = rand_weights(rng, (cout, k, k, cin), bits)
    if rng.random() < 0.5:
        wt = wt.astype(np.int8)  # the dtype unpack_weights returns
    assert_same(ops.conv2d(x, wt, stride, pad), ref_conv(x, wt, stride, pad))


@PROP
@given(seed=seeds, h=st.integers(1, 12), w=st.integers(1, 12), c=st.integers(1, 12), k=st.sampled_from([1, 3]),
       stride=st.sampled_from([1, 2]), pad_frac=st.integers(0, 1), bits=st.sampled_from([4, 8]),
       signed=st.booleans())
def test_depthwise_property(seed, h, w, c, k, stride, pad_frac, bits, signed):
    pad = pad_frac * (k // 2)
    assume(h + 2 * pad >= k and w + 2 * pad >= k)
    rng = np.random.default_rng(seed)
    x = rand_act(rng, (h, w, c), signed)
    wt = rand_weights(rng, (c, k, k), bits).astype(np.int8)
    assert_same(ops.depthwise(x, wt, stride, pad), ref_depthwise(x, wt, stride, pad))


@PROP
@given(seed=seeds, h=st.integers(1, 12), w=st.integers(1, 12), c=st.integers(1, 12),
       dmax=st.integers(0, 15), maxd=st.integers(0, 15), bits=st.sampled_from([4, 8]), signed=st.booleans())
def test_deform_property(seed, h, w, c, dmax, maxd, bits, signed):
    rng = np.random.default_rng(seed)
    x = rand_act(rng, (h, w, c), signed)
    wt = rand_weights(rng, (c, 3, 3), bits).astype(np.int8)
    dil = rng.integers(0, dmax + 1, size=(h, w)).astype(np.uint8)
    assert_same(ops.deform_depthwise(x, wt, dil, maxd), ref_deform(x, wt, dil, maxd))


@PROP
@given(seed=seeds, h=st.integers(1, 12), w=st.integers(1, 12), c=st.integers(1, 12), k=st.sampled_from([2, 3]),
       stride=st.sampled_from([1, 2]), pad=st.integers(0, 2), signed=st.booleans())
def test_maxpool_property(seed, h, w, c, k, stride, pad, signed):
    assume(pad <= k - 1 and h + 2 * pad >= k and w + 2 * pad >= k)
    rng = np.random.default_rng(seed)
    x = rand_act(rng, (h, w, c), signed)
    assert_same(ops.maxpool(x, k, stride, pad, signed), ref_maxpool(x, k, stride, pad), acc=False)


@PROP
@given(seed=seeds, h=st.integers(1, 12), w=st.integers(1, 12), c=st.integers(1, 12), sa=st.booleans(),
       sb=st.booleans(), ma=st.integers(-(2**15), 2**15 - 1), mb=st.integers(-(2**15), 2**15 - 1))
def test_add_and_upsample_property(seed, h, w, c, sa, sb, ma, mb):
    rng = np.random.default_rng(seed)
    a, b = rand_act(rng, (h, w, c), sa), rand_act(rng, (h, w, c), sb)
    got = ops.add(a, b, ma, mb)
    want = torch.from_numpy(a.astype(np.int64)) * ma + torch.from_numpy(b.astype(np.int64)) * mb
    assert torch.equal(torch.from_numpy(got), want)
    assert_same(ops.upsample2x(a), ref_upsample(a), acc=False)


# =================================================================================================
# 5. exactness when the worst case leaves float32's exact range
# =================================================================================================
def conv_int64(x: np.ndarray, w: np.ndarray, stride: int, pad: int) -> torch.Tensor:
    """Pure int64 torch conv (no floating point): (H, W, Cin) x (Cout, k, k, Cin) -> (Ho, Wo, Cout)."""
    xt = torch.from_numpy(np.asarray(x).astype(np.int64))
    wt = torch.from_numpy(np.asarray(w).astype(np.int64))
    cout, k, _, cin = wt.shape
    xt = F.pad(xt.permute(2, 0, 1), (pad, pad, pad, pad)).permute(1, 2, 0)
    ho, wo = out_len(x.shape[0], k, stride, pad), out_len(x.shape[1], k, stride, pad)
    out = torch.zeros((ho, wo, cout), dtype=torch.int64)
    for ky in range(k):
        for kx in range(k):
            tap = xt[ky: ky + (ho - 1) * stride + 1: stride, kx: kx + (wo - 1) * stride + 1: stride, :]
            out += (tap[:, :, None, :] * wt[None, None, :, ky, kx, :]).sum(-1)
    return out


def assert_not_float32_exact(want: torch.Tensor) -> None:
    """The data is discriminating: some result is odd and above 2**24, so no float32 sum can hit it."""
    assert bool(((want.abs() > 2**24) & (want % 2 != 0)).any())


@pytest.mark.parametrize("wdtype", [np.int64, np.int8])
def test_conv_all_extreme_values_cin1024(wdtype):
    # 3x3, Cin=1024, every weight -128, every input 255 (|sum| ~ 2**28.2). (With int8 weights this
    # would pass even with a wrong float32 choice: every partial sum is a multiple of 128 * 255.)
    x = np.full((4, 4, 1024), 255, dtype=np.uint8)
    w = np.full((2, 3, 3, 1024), -128, dtype=wdtype)
    want = conv_int64(x, w, 1, 1)
    assert int(want[1, 1, 0]) == -128 * 255 * 9 * 1024  # interior pixel, by hand
    assert int(want[0, 0, 0]) == -128 * 255 * 4 * 1024  # corner: 4 taps inside
    assert_same(ops.conv2d(x, w, 1, 1), want.to(F64))


def test_conv_random_data_beyond_float32_range():
    rng = np.random.default_rng(31)
    x = rng.integers(0, 256, size=(5, 5, 1024)).astype(np.uint8)
    w = rng.integers(-128, 128, size=(3, 3, 3, 1024))
    w[:, :, :, :512] = -127  # push the sums well past 2**24 (int64 weights: see the int8 tests below)
    want = conv_int64(x, w, 2, 1)
    assert_not_float32_exact(want)
    assert_same(ops.conv2d(x, w, 2, 1), want.to(F64))
    # F.conv2d in float64 agrees too (independent second reference)
    assert torch.equal(ref_conv(x, w, 2, 1), want.to(F64))


def _boundary_case(cin: int, tail: int) -> tuple[np.ndarray, np.ndarray]:
    """1x1 conv, Cin=cin: all -128 x -128 products except one tail product; |x|,|w| max = 128."""
    x = np.full((1, 1, cin), -128, dtype=np.int64)
    w = np.full((1, 1, 1, cin), -128, dtype=np.int64)
    x[0, 0, -1], w[0, 0, 0, -1] = tail, 1
    return x, w


@pytest.mark.parametrize("cin,tail,expected", [
    (1023, -128, 1022 * 16384 - 128),  # worst case 128*128*1023 < 2**24: float32 path, still exact
    (1024, 1, 1023 * 16384 + 1),       # worst case == 2**24 exactly
    (1025, 1, 2**24 + 1),              # worst case > 2**24: 2**24 + 1 is not a float32
    (1025, 3, 2**24 + 3),
])
def test_conv_at_float32_boundary(cin, tail, expected):
    x, w = _boundary_case(cin, tail)
    got = ops.conv2d(x, w, 1, 0)
    assert int(got[0, 0, 0]) == expected == int(conv_int64(x, w, 1, 0)[0, 0, 0])


def test_conv_worst_case_exactly_one_past_float32():
    # 2**24 + 1 = 97 * 257 * 673: a 1x1 conv whose worst case is reached and is exactly 2**24 + 1
    # (generic integer operands), the first sum float32 cannot represent.
    x = np.full((2, 1, 673), 257, dtype=np.int16)
    w = np.full((1, 1, 1, 673), 97, dtype=np.int16)
    x[1, 0, 0] = 0
    got = ops.conv2d(x, w, 1, 0)
    assert got[:, 0, 0].tolist() == [2**24 + 1, 2**24 + 1 - 257 * 97]


def test_depthwise_and_deform_extremes_exact():
    x = np.full((5, 5, 3), -128, dtype=np.int16)
    w = np.full((3, 3, 3), -128, dtype=np.int16)
    assert int(ops.depthwise(x, w, 1, 1)[2, 2, 0]) == 9 * 16384
    assert_same(ops.depthwise(x, w, 1, 1), ref_depthwise(x, w, 1, 1))
    dil = np.array([[0, 1, 2, 3, 4]] * 5)
    assert_same(ops.deform_depthwise(x, w, dil, 2), ref_deform(x, w, dil, 2))


# int8 operands (what the engine passes: read_tensor for signed inputs, unpack_weights always):
# np.abs maps int8 -128 to -128, so a worst-case bound built from np.abs(int8).max() ignores every
# -128 and can wrongly pick float32 beyond 2**24. These cases are wrong under that bound.
def test_conv_int8_operands_at_float32_boundary():
    x, w = _boundary_case(1040, 1)
    x, w = x.astype(np.int8), w.astype(np.int8)
    assert int(ops.conv2d(x, w, 1, 0)[0, 0, 0]) == 1039 * 16384 + 1


def test_conv_int8_weights_from_unpack_beyond_float32_range():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(3, 3, 1024)).astype(np.uint8)
    w = np.full((1, 3, 3, 1024), -128, dtype=np.int64)
    w[0, 0, 0, :5] = 3
    w8 = unpack_weights(pack_weights(w, 8), w.size, 8).reshape(w.shape)  # int8, as the engine sees it
    want = conv_int64(x, w, 1, 0)
    assert int(want[0, 0, 0]) == -150179021
    assert_same(ops.conv2d(x, w8, 1, 0), want.to(F64))


def test_conv_int8_signed_inputs_and_weights_beyond_float32_range():
    rng = np.random.default_rng(32)
    x = rng.integers(-128, 128, size=(4, 4, 1024))
    x[..., ::2] = -128
    w = rng.integers(-128, 128, size=(2, 3, 3, 1024))
    w[..., ::2] = -128
    want = conv_int64(x, w, 1, 1)
    assert_not_float32_exact(want)
    assert_same(ops.conv2d(x.astype(np.int8), w.astype(np.int8), 1, 1), want.to(F64))


def test_engine_8bit_conv_beyond_float32_range_end_to_end():
    # Same data through builder + golden engine: the bias puts the exact accumulator at 0, so any
    # float32 rounding error of the sum shows up after requantisation (shift 4: error >= 8 -> +-1).
    from hwconv.compiler import ProgramBuilder
    from hwconv.golden import run_program
    from hwconv.spec import EngineConfig

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(3, 3, 1024))
    w = np.full((1, 3, 3, 1024), -128, dtype=np.int64)
    w[0, 0, 0, :5] = 3
    acc = int((x[None].astype(np.int64) * w).sum())  # -150179021, odd and far beyond 2**24
    b = ProgramBuilder(EngineConfig(weight_buffer_bytes=256 * 1024))
    y = b.conv("c", b.input("x", 3, 3, 1024), w, bias=-acc, mult=1, shift=4, pad=0, weight_bits=8,
               out_signed=True)
    b.output("y", y)
    assert run_program(b.build(), {"x": x})["y"].reshape(-1).tolist() == [0]


# =================================================================================================
# 6. quantize_multiplier
# =================================================================================================
def _check_multiplier(real: float) -> tuple[int, int]:
    mult, shift = quantize_multiplier(real)
    assert isinstance(mult, int) and isinstance(shift, int)
    assert 0 < mult <= MULT_MAX and 0 <= shift <= SHIFT_MAX
    err = abs(Fraction(mult, 2**shift) - Fraction(real))
    # "closest with 24 bits": within half an ulp of a 24-bit mantissa, i.e. relative 2**-24 (which
    # is tighter than 2**-23, so truncating instead of rounding fails here)
    assert err <= Fraction(real) / 2**24, (real, mult, shift, float(err / Fraction(real)))
    return mult, shift


@PROP
@given(e=st.floats(min_value=-40.0, max_value=23.99, allow_nan=False))
def test_quantize_multiplier_log_uniform(e):
    _check_multiplier(min(2.0**e, float(MULT_MAX)))


@pytest.mark.parametrize("real", [1.0, 0.5, 0.75, 1 / 3, 2 / 3, 0.999999999, 1.0000001, 3.14159, 1e-3, 1e-9,
                                  2.0**-40, 2.0**-39 * 1.9999999, 1234.5678, 2.0**23 + 0.25, 16777214.4,
                                  float(MULT_MAX), 16777215.4])
def test_quantize_multiplier_values(real):
    mult, shift = _check_multiplier(real)
    if real == float(MULT_MAX):
        assert (mult, shift) == (MULT_MAX, 0)


@pytest.mark.parametrize("real,expected", [(1 - 2.0**-30, (1, 0)), (2.0**-20 * (1 - 2.0**-30), (1, 20)),
                                           (3 * (1 - 2.0**-30), (3, 0)), (2.0**23 * (1 - 2.0**-40), (2**23, 0))])
def test_quantize_multiplier_mantissa_rounding_up(real, expected):
    # the 24-bit mantissa rounds up to 2**24: must renormalise, not overflow the mult field
    assert quantize_multiplier(real) == expected


@pytest.mark.parametrize("real", [16777215.5, 16777215.75, 2.0**24 - 2.0**-29])
def test_quantize_multiplier_just_below_2_24(real):
    # closer to 2**24 than to MULT_MAX: either rejected as too large or the mult field still fits
    try:
        mult, shift = quantize_multiplier(real)
    except SpecError as exc:
        assert "too large" in str(exc)
    else:
        assert 0 < mult <= MULT_MAX and 0 <= shift <= SHIFT_MAX
        assert abs(Fraction(mult, 2**shift) - Fraction(real)) <= 1


@pytest.mark.parametrize("k", range(-63, 24))
def test_quantize_multiplier_exact_for_powers_of_two(k):
    mult, shift = quantize_multiplier(2.0**k)
    assert Fraction(mult, 2**shift) == Fraction(2) ** k
    assert (mult, shift) == (2 ** max(k, 0), max(-k, 0))  # trailing zeros trimmed


@pytest.mark.parametrize("real,msg", [(0.0, "positive finite"), (-0.0, "positive finite"),
                                      (-1.0, "positive finite"), (-1e-30, "positive finite"),
                                      (math.nan, "positive finite"), (math.inf, "positive finite"),
                                      (-math.inf, "positive finite"), (2.0**24, "too large"),
                                      (2.0**24 + 2, "too large"), (1e30, "too large"),
                                      (1.7976931348623157e308, "too large")])
def test_quantize_multiplier_rejects(real, msg):
    with pytest.raises(SpecError, match=msg):
        quantize_multiplier(real, where="layer 3")
    with pytest.raises(SpecError, match="layer 3"):
        quantize_multiplier(real, where="layer 3")


@pytest.mark.parametrize("real", [2.0**-66, 2.0**-70, 1e-30, 1e-300, 5e-324])
def test_quantize_multiplier_too_small_raises(real):
    # the closest multiple of 2**-SHIFT_MAX is 0: not representable
    with pytest.raises(SpecError, match="too small"):
        quantize_multiplier(real, where="layer 9")


@PROP
@given(e=st.floats(min_value=-70.0, max_value=-40.0, allow_nan=False))
def test_quantize_multiplier_tiny_saturates_shift(e):
    # Below 2**-40 the shift saturates at SHIFT_MAX: the result is the closest multiple of
    # 2**-SHIFT_MAX (absolute error <= 2**-(SHIFT_MAX+1)), or SpecError when that is 0.
    real = 2.0**e
    assume(real != 2.0 ** -(SHIFT_MAX + 1))  # the exact tie may go either way
    ulp = Fraction(1, 2**SHIFT_MAX)
    if real < ulp / 2:
        with pytest.raises(SpecError, match="too small"):
            quantize_multiplier(real)
        return
    mult, shift = quantize_multiplier(real)
    assert 0 < mult <= MULT_MAX and 0 <= shift <= SHIFT_MAX
    assert abs(Fraction(mult, 2**shift) - Fraction(real)) <= ulp / 2


# =================================================================================================
# 7. pack_weights / unpack_weights
# =================================================================================================
def ref_pack(values: list[int], bits: int) -> bytes:
    """Blob layout from the spec text: 8-bit one int8 per byte; 4-bit two per byte, element 2i low."""
    if bits == 8:
        return bytes(v & 0xFF for v in values)
    nib = [v & 0xF for v in values] + [0] * (len(values) % 2)
    return bytes(nib[i] | (nib[i + 1] << 4) for i in range(0, len(nib), 2))


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 8, 33, 1001])
def test_pack_unpack_round_trip(bits, n):
    rng = np.random.default_rng(n * 10 + bits)
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    w = rng.integers(lo, hi + 1, size=n)
    if n >= 2:
        w[0], w[-1] = lo, hi
    raw = pack_weights(w, bits)
    assert isinstance(raw, bytes)
    assert len(raw) == packed_weight_bytes(n, bits) == (n if bits == 8 else (n + 1) // 2)
    assert raw == ref_pack([int(v) for v in w], bits)
    back = unpack_weights(raw, n, bits)
    assert back.dtype == np.int8 and back.shape == (n,)
    assert np.array_equal(back, w)
    # as the engine reads it: a uint8 view of the blob with other layers' bytes after it
    blob = np.frombuffer(raw + bytes([0xAB] * 9), dtype=np.uint8)
    assert np.array_equal(unpack_weights(blob, n, bits), w)


@pytest.mark.parametrize("bits", [4, 8])
def test_pack_multidimensional_in_given_order(bits):
    rng = np.random.default_rng(40 + bits)
    w = rng.integers(-(1 << (bits - 1)), 1 << (bits - 1), size=(3, 3, 3, 5)).astype(np.int16)
    raw = pack_weights(w, bits)
    assert raw == ref_pack([int(v) for v in w.reshape(-1)], bits)
    assert np.array_equal(unpack_weights(raw, w.size, bits).reshape(w.shape), w)


def test_pack_4bit_known_bytes():
    assert pack_weights(np.array([1, 2, -1, -8, 7]), 4) == bytes([0x21, 0x8F, 0x07])
    assert pack_weights(np.array([-128, 127, -1]), 8) == bytes([0x80, 0x7F, 0xFF])
    assert unpack_weights(bytes([0x21, 0x8F, 0x07]), 5, 4).tolist() == [1, 2, -1, -8, 7]


@pytest.mark.parametrize("bits,values,bad,val,rng_text", [
    (4, [0, 1, 2, 3, 4, 8, 9], 5, 8, "[-8, 7]"),
    (4, [-9, 0], 0, -9, "[-8, 7]"),
    (4, [0, 0, 0, 7, -8, 0, 0, 0, 0, 0, -100], 10, -100, "[-8, 7]"),
    (8, [0, 1, -129, 300], 2, -129, "[-128, 127]"),
    (8, [127] * 12 + [128], 12, 128, "[-128, 127]"),
])
def test_pack_out_of_range_names_first_bad_index(bits, values, bad, val, rng_text):
    with pytest.raises(SpecError) as ei:
        pack_weights(np.array(values), bits, where="layer 2 (conv1) weights")
    msg = str(ei.value)
    assert f"weight #{bad} = {val}" in msg
    assert rng_text in msg and f"{bits}-bit" in msg and msg.startswith("layer 2 (conv1) weights")


def test_pack_out_of_range_index_is_flat_index():
    w = np.zeros((2, 3, 3, 4), dtype=np.int64)
    w[1, 2, 0, 3] = 8
    with pytest.raises(SpecError, match=f"weight #{np.ravel_multi_index((1, 2, 0, 3), w.shape)} = 8"):
        pack_weights(w, 4)


@pytest.mark.parametrize("bits", [0, 2, 3, 16])
def test_pack_rejects_other_widths(bits):
    with pytest.raises(SpecError, match=f"weight_bits={bits}"):
        pack_weights(np.zeros(4, dtype=np.int64), bits)


def test_pack_rejects_non_integer_weights():
    with pytest.raises(SpecError, match="must be integers"):
        pack_weights(np.array([0.0, 1.0]), 8)
