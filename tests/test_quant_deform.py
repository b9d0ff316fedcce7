"""QuantDeformConv and the project quantisers against the integer contract.

The key test: in the hardware mode (square_depthwise, integer sampling) the fake-quant depthwise
output, divided by s_in * s_w per channel, is exactly hwconv.golden.ops.deform_depthwise on the
integer input, integer weights and the DilationQuant dilation map: what is trained is what the
engine computes. The rest pins the dilation quantiser, the bilinear mode against plain convs and
torch's grid_sample, the straight-through estimator, and each variant's layout.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from brevitas.nn import QuantIdentity, QuantReLU

from hwconv.golden.ops import conv2d, deform_depthwise, requantize
from hwconv.quant.deform import (SAMPLINGS, VARIANTS, QuantDeformConv, bilinear_taps, gather_taps,
                                 integer_taps)
from hwconv.quant.quantizers import DilationQuant, act_quant, weight_quant
from hwconv.spec.params import quantize_multiplier

MODES = [(v, s) for v in VARIANTS for s in SAMPLINGS]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def spread_dilation(m: QuantDeformConv, x: torch.Tensor) -> None:
    """Set the offset predictor so its raw output spans about [-2, max+2]: maps hit 0 and max."""
    md, oc = m.max_dilation, m.offset_conv
    with torch.no_grad():
        oc.weight.normal_()
        oc.bias.zero_()
        raw = oc(x)
        k = (md + 2) / 2 / raw.std()
        oc.weight.mul_(k)
        oc.bias.fill_(float(md / 2 - raw.mean() * k))


def fixed_offsets(m: QuantDeformConv, off: torch.Tensor) -> None:
    """Make the offset predictor return `off` (the raw offsets), whatever the input."""
    m.offset_conv.forward = lambda x: off


# -- the key test: fake-quant == golden, bit for bit -----------------------------------------------
@pytest.mark.parametrize("max_dilation", [1, 4, 7, 15])
@pytest.mark.parametrize("signed", [False, True])
def test_hardware_mode_matches_golden_exactly(max_dilation, signed):
    n, c, h, w = 2, 6, 19, 17
    lo, hi = (-128, 127) if signed else (0, 255)
    x_int = torch.randint(lo, hi + 1, (n, c, h, w))
    x_int[0, :, 0, 0], x_int[1, :, -1, -1] = lo, hi  # both extremes present
    s_in = 0.0371
    x = x_int.float() * s_in
    m = QuantDeformConv(c, 5, variant="square_depthwise", sampling="integer", max_dilation=max_dilation)
    with torch.no_grad():
        m.dw_conv.weight.normal_()
    spread_dilation(m, x)

    out = m.deform(x).detach().double().numpy()
    qw = m.dw_conv.quant_weight()
    w_int = qw.int().numpy().astype(np.int64)[:, 0]                      # (C, 3, 3)
    s_w = qw.scale.detach().double().numpy().reshape(c)
    dil = m.integer_dilation(x)
    assert torch.equal(dil, m.dilation_quant(m.offset_conv(x)).squeeze(1).long())
    assert int(dil.min()) == 0 and int(dil.max()) == max_dilation  # both ends of the range are exercised
    assert len(dil.unique()) == max_dilation + 1 or max_dilation > 7

    for i in range(n):
        gold = deform_depthwise(x_int[i].permute(1, 2, 0).numpy(), w_int, dil[i].numpy(), max_dilation)
        ratio = out[i].transpose(1, 2, 0) / (s_in * s_w)
        assert np.abs(ratio - np.rint(ratio)).max() < 1e-2  # integer up to float32 error, not by luck
        assert np.array_equal(np.rint(ratio).astype(np.int64), gold)


def test_hardware_mode_on_a_quantiser_output():
    """Same, with x straight from an upstream uint8 quantiser (its QuantTensor's int() and scale)."""
    c = 4
    q = QuantReLU(act_quant=act_quant(signed=False), return_quant_tensor=True)
    qt = q(torch.randn(1, c, 12, 14) * 2)
    x, x_int, s_in = qt.value.detach(), qt.int().long(), float(qt.scale.detach())
    m = QuantDeformConv(c, c, variant="square_depthwise", max_dilation=3)
    spread_dilation(m, x)
    qw = m.dw_conv.quant_weight()
    gold = deform_depthwise(x_int[0].permute(1, 2, 0).numpy(), qw.int().numpy().astype(np.int64)[:, 0],
                            m.integer_dilation(x)[0].numpy(), 3)
    ratio = m.deform(x).detach()[0].permute(1, 2, 0).double().numpy() / (s_in * qw.scale.detach().double()
                                                                          .numpy().reshape(c))
    assert np.array_equal(np.rint(ratio).astype(np.int64), gold)


def test_offset_conv_requantised_by_the_contract_is_the_dilation_map():
    """The engine makes the dilation map with an ordinary CONV requantised at output scale 1 and
    clamp [0, max]: that reproduces integer_dilation (bias rounded to int32 at s_in * s_w, 24-bit
    multiplier; a value landing within float error of a .5 boundary may differ by 1, none does here)."""
    c, h, w, md = 16, 24, 24, 7
    x_int = torch.randint(0, 256, (1, c, h, w))
    s_in = 0.0213
    x = x_int.float() * s_in
    m = QuantDeformConv(c, c, variant="square_depthwise", max_dilation=md)
    spread_dilation(m, x)
    qw = m.offset_conv.quant_weight()
    w_int = qw.int().numpy().astype(np.int64).transpose(0, 2, 3, 1)           # OHWI (1, 1, 1, C)
    eff = s_in * float(qw.scale.detach())
    bias = np.array([round(float(m.offset_conv.bias.detach()) / eff)])
    mult, shift = quantize_multiplier(eff / 1.0)                               # output scale 1
    acc = conv2d(x_int[0].permute(1, 2, 0).numpy(), w_int)
    d = requantize(acc, bias, [mult], [shift], 0, md)[..., 0]
    assert np.array_equal(d, m.integer_dilation(x)[0].numpy())


# -- the dilation quantiser ----------------------------------------------------------------------
@pytest.mark.parametrize("max_dilation", [1, 5, 7])
def test_dilation_quant_is_integer_unit_scale_and_clamped(max_dilation):
    q = QuantIdentity(act_quant=DilationQuant(max_dilation))
    raw = torch.cat([torch.linspace(-3, max_dilation + 3, 97), torch.tensor([0.5, 1.5, 2.5, -0.5])])
    raw.requires_grad_(True)
    d = q(raw)
    assert q.act_quant.scale().item() == 1.0 and not q.act_quant.is_signed
    assert q.act_quant.zero_point().item() == 0.0 and q.act_quant.bit_width().item() == 8
    assert torch.equal(d, torch.clamp(torch.floor(raw + 0.5), 0, max_dilation))  # round half up, as the engine
    assert d.min() == 0 and d.max() == max_dilation
    d.sum().backward()  # straight-through where the rounded value is in range, zero where clamped
    r = torch.floor(raw.detach() + 0.5)
    inside = (r >= 0) & (r <= max_dilation)
    assert torch.equal(raw.grad, inside.float())


def test_integer_dilation_map_of_the_module():
    x = torch.rand(2, 5, 9, 11) * 4
    m = QuantDeformConv(5, 5, variant="square", sampling="integer", max_dilation=4)
    assert torch.equal(m.integer_dilation(x), torch.ones(2, 9, 11, dtype=torch.int64))  # init: a plain conv
    spread_dilation(m, x)
    d = m.integer_dilation(x)
    assert d.dtype == torch.int64 and d.shape == (2, 9, 11)
    assert int(d.min()) == 0 and int(d.max()) == 4
    for variant, sampling in [("square_depthwise", "bilinear"), ("full", "integer"), ("depthwise", "integer")]:
        with pytest.raises(RuntimeError, match="square variants with integer sampling"):
            QuantDeformConv(5, 5, variant=variant, sampling=sampling).integer_dilation(x)


# -- bilinear mode and sampling --------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_bilinear_zero_offsets_is_a_plain_conv(variant):
    x = torch.randn(2, 6, 10, 9)
    m = QuantDeformConv(6, 7, variant=variant, sampling="bilinear", bias=True)
    with torch.no_grad():
        m.offset_conv.weight.zero_()  # offsets 0, or s = 1 for the square variants (bias 1 by init)
    if m.depthwise:
        torch.testing.assert_close(m.deform(x), m.dw_conv(x), rtol=0, atol=1e-5)
    else:
        torch.testing.assert_close(m(x), m.conv(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_bilinear_at_integer_offsets_equals_integer_sampling(variant):
    n, c, h, w = 2, 5, 8, 11
    x = torch.randn(n, c, h, w)
    bil = QuantDeformConv(c, 3, variant=variant, sampling="bilinear", max_dilation=3)
    intg = QuantDeformConv(c, 3, variant=variant, sampling="integer", max_dilation=3)
    # One training forward first: Brevitas leaves an activation quantiser's scale out of the state
    # dict until it has collected statistics, and a strict load then reports it missing.
    bil(x)
    intg.load_state_dict(bil.state_dict())
    shape = (n, 1, h, w) if bil.square else (n, 18, h, w)
    off = torch.randint(-2 if bil.square else -5, 6, shape).float()  # beyond the bounds and the image too
    for m in (bil, intg):
        fixed_offsets(m, off)
    torch.testing.assert_close(bil.deform(x), intg.deform(x), rtol=0, atol=1e-5)


def test_bilinear_taps_match_grid_sample():
    n, c, h, w = 2, 3, 7, 9
    x = torch.randn(n, c, h, w)
    py = torch.rand(n, 9, h, w) * (h + 3) - 2  # inside, on the border and outside
    px = torch.rand(n, 9, h, w) * (w + 3) - 2
    grid = torch.stack([px * 2 / (w - 1) - 1, py * 2 / (h - 1) - 1], dim=-1).reshape(n, 9 * h, w, 2)
    ref = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    torch.testing.assert_close(bilinear_taps(x, py, px), ref.reshape(n, c, 9, h, w), rtol=0, atol=1e-5)


def test_integer_taps_straight_through_estimator():
    """Forward: exactly the integer gather. Backward: the input gets the gather's gradient, the
    positions get the bilinear sample's gradient at the unrounded positions."""
    n, c, h, w = 1, 4, 6, 7
    x = torch.randn(n, c, h, w, requires_grad=True)
    gy = (torch.rand(n, 9, h, w) * (h + 2) - 1).requires_grad_(True)
    gx = (torch.rand(n, 9, h, w) * (w + 2) - 1).requires_grad_(True)
    py, px = (gy + 0.5).floor(), (gx + 0.5).floor()
    g = torch.randn(n, c, 9, h, w)

    out = integer_taps(x, py, px, gy, gx)
    assert torch.equal(out, gather_taps(x, py, px))
    out.backward(g)
    xg = x.grad.clone()
    x.grad = None
    gather_taps(x, py, px).backward(g)
    assert torch.equal(xg, x.grad)
    gyg, gxg = gy.grad.clone(), gx.grad.clone()
    gy.grad = gx.grad = None
    bilinear_taps(x.detach(), gy, gx).backward(g)
    assert torch.equal(gyg, gy.grad) and torch.equal(gxg, gx.grad)
    assert gyg.abs().sum() > 0


# -- gradients -------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant,sampling", MODES)
def test_gradients_reach_offsets_and_weights(variant, sampling):
    m = QuantDeformConv(6, 4, variant=variant, sampling=sampling)
    x = torch.rand(2, 6, 9, 10) * 3
    (m(x) * torch.randn(2, 4, 9, 10)).sum().backward()
    main = [m.dw_conv, m.pw_conv] if m.depthwise else [m.conv]
    for conv in [m.offset_conv] + main:
        grad = conv.weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert torch.isfinite(m.offset_conv.bias.grad).all() and m.offset_conv.bias.grad.abs().sum() > 0


# -- layout and errors -----------------------------------------------------------------------------
@pytest.mark.parametrize("variant,sampling", MODES)
@pytest.mark.parametrize("weight_bits", [4, 8])
def test_variant_shapes_and_layout(variant, sampling, weight_bits):
    cin, cout = 6, 10
    m = QuantDeformConv(cin, cout, variant=variant, sampling=sampling, weight_bits=weight_bits, max_dilation=5)
    assert m(torch.rand(2, cin, 7, 8)).shape == (2, cout, 7, 8)
    square, depthwise = variant.startswith("square"), variant.endswith("depthwise")
    oc = m.offset_conv
    assert (oc.out_channels, oc.kernel_size) == ((1, (1, 1)) if square else (18, (3, 3)))
    assert oc.quant_weight().bit_width.item() == 8
    assert (m.dilation_quant is not None) == (square and sampling == "integer")
    if depthwise:
        assert m.conv is None
        assert m.dw_conv.weight.shape == (cin, 1, 3, 3) and m.dw_conv.groups == cin
        assert m.pw_conv.weight.shape == (cout, cin, 1, 1)
        assert m.dw_quant.act_quant.is_signed
        convs = [m.dw_conv, m.pw_conv]
    else:
        assert m.dw_conv is None and m.pw_conv is None and m.dw_quant is None
        assert m.conv.weight.shape == (cout, cin, 3, 3)
        convs = [m.conv]
    for conv in convs:
        qw = conv.quant_weight()
        assert qw.bit_width.item() == weight_bits and qw.scale.shape == (conv.out_channels, 1, 1, 1)
        lim = 2 ** (weight_bits - 1) - 1  # symmetric narrow range
        assert qw.int().abs().max() == lim


def test_bad_arguments():
    with pytest.raises(ValueError) as err:
        QuantDeformConv(4, 4, variant="sqaure")
    assert all(v in str(err.value) for v in VARIANTS)
    with pytest.raises(ValueError, match="integer, bilinear"):
        QuantDeformConv(4, 4, variant="square", sampling="nearest")
    with pytest.raises(ValueError, match="4 or 8"):
        QuantDeformConv(4, 4, variant="full", weight_bits=3)
    with pytest.raises(ValueError):
        weight_quant(2)
    with pytest.raises(ValueError):
        DilationQuant(0)
