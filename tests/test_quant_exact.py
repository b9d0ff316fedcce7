"""The model's exact eval path requantises as the engine does (issue 3: integer path == fake-quant).

Eval mode and BN-folded QAT compute every requantisation with exact integer accumulators, the
exported integer bias and (mult, shift), round half up, clamp. These tests fail if that drifts from
`hwconv.golden.ops.requantize` / the exported program: at exact rounding ties (Brevitas' float path
rounds them half to even) and where the 24-bit multiplier rounds against the exact scale ratio.
"""

from fractions import Fraction

import numpy as np
import pytest
import torch
from brevitas.core.scaling import ParameterFromRuntimeStatsScaling
from brevitas.nn import QuantConv2d, QuantIdentity, QuantReLU

from hwconv.golden import ops, run_program
from hwconv.quant import verify
from hwconv.quant.export import export_program
from hwconv.quant.models import ConvBNAct, build_detector, fold_batchnorm, fold_params, float_requant
from hwconv.quant.quantizers import QTIdentity, Requant, exact_conv, image_integers
from hwconv.spec import quantize_multiplier


def _set_act_scale(q: torch.nn.Module, scale: float) -> None:
    """Give an activation quantiser a fixed, learned-looking scale (calibration finished)."""
    (impl,) = [m for m in q.modules() if isinstance(m, ParameterFromRuntimeStatsScaling)]
    threshold = 128.0 if q.act_quant.is_signed else 255.0  # Brevitas: scale = value / threshold
    impl.counter = impl.collect_stats_steps + 1
    with torch.no_grad():
        impl.value.fill_(scale * threshold)
    assert float(q.act_quant.scale().detach()) == np.float32(scale), "scale not representable as set"


def _bn_identity_scale(bn: torch.nn.BatchNorm2d) -> None:
    """BN whose folded multiplier gamma / sqrt(var + eps) is exactly 1 (same float ops both sides)."""
    with torch.no_grad():
        bn.weight.copy_(torch.sqrt(bn.running_var + bn.eps))


def _pow2(v: float) -> float:
    return float(2.0 ** np.round(np.log2(v)))


# ------------------------------------------------------------------ the arithmetic itself

def test_requant_apply_is_golden_requantize():
    g = torch.Generator().manual_seed(0)
    c = 6
    acc = torch.randint(-(1 << 20), 1 << 20, (3, c, 5, 7), generator=g)
    acc[0, :, 0, :4] = torch.tensor([-3, -1, 1, 3])  # exact ties at shift 1 / mult 1: -1.5, -0.5, 0.5, 1.5
    bias = torch.randint(-(1 << 16), 1 << 16, (c,), generator=g)
    bias[0] = 0
    mult = torch.tensor([1, (1 << 24) - 1, 12345, 1, 8388609, 3])
    shift = torch.tensor([1, 40, 20, 0, 63, 2])
    for lo, hi in ((-128, 127), (0, 255), (0, 7)):
        rq = Requant(torch.zeros(c, 1, 1, 1, dtype=torch.int64), 4, bias, mult, shift, (lo, hi), 1.0, lo < 0)
        got = rq.apply(acc).permute(0, 2, 3, 1).numpy()
        want = ops.requantize(acc.permute(0, 2, 3, 1).numpy(), bias.numpy(), mult.numpy(), shift.numpy(), lo, hi)
        assert np.array_equal(got, want), (lo, hi)
    # half up, not half to even: -1.5 -> -1, -0.5 -> 0, 0.5 -> 1, 1.5 -> 2
    rq = Requant(torch.zeros(1, 1, 1, 1, dtype=torch.int64), 4, torch.zeros(1, dtype=torch.int64),
                 torch.tensor([1]), torch.tensor([1]), (-128, 127), 1.0, True)
    assert rq.apply(torch.tensor([-3, -1, 1, 3]).view(1, 1, 1, 4)).flatten().tolist() == [-1, 0, 1, 2]


@pytest.mark.parametrize("k,stride,groups", [(3, 1, 1), (3, 2, 1), (1, 1, 1), (3, 2, 8), (3, 1, 8)])
def test_exact_conv_is_golden_conv(k, stride, groups):
    g = torch.Generator().manual_seed(k * 10 + stride + groups)
    x = torch.randint(0, 256, (2, 8, 9, 11), generator=g)
    w = torch.randint(-127, 128, (8, 8 // groups, k, k), generator=g)
    conv = torch.nn.Conv2d(8, 8, k, stride=stride, padding=k // 2, groups=groups, bias=False)
    rq = Requant(w, 8, torch.zeros(8, dtype=torch.int64), torch.ones(8, dtype=torch.int64),
                 torch.zeros(8, dtype=torch.int64), (-(1 << 40), 1 << 40), 1.0, True)
    got = exact_conv(x.double(), rq, conv).permute(0, 2, 3, 1).numpy()
    for n in range(2):
        xi = x[n].permute(1, 2, 0).numpy()
        if groups == 1:
            want = ops.conv2d(xi, w.permute(0, 2, 3, 1).numpy(), stride, k // 2)
        else:
            want = ops.depthwise(xi, w[:, 0].numpy(), stride, k // 2)
        assert np.array_equal(got[n], want)


def test_image_integers_round_half_up_like_the_host():
    scale = 2.0 ** -8
    x = torch.tensor([0.5, 1.5, 2.5, 254.5, 300.0, -1.0]) * scale  # exact ties, then the clamp
    assert image_integers(x, scale, False).tolist() == [1, 2, 3, 255, 255, 0]
    assert image_integers(x, scale, True).tolist() == [1, 2, 3, 127, 127, -1]


# ------------------------------------------------------------------ one layer at constructed scales

def _layer(s_in: float, w_int: list[int], s_out: float):
    """A 1x1 ConvBNAct (1 -> len(w_int) channels, signed output) with integer weights w_int (max
    |w| per channel 7: weight scale = |w| value / 7) and output scale s_out, and the quantiser of
    its input (scale s_in): the layer reads the scale from its input, `m(inq(x))`."""
    m = ConvBNAct(1, len(w_int), 1, relu=False)
    inq = QTIdentity(signed=True).eval()
    _set_act_scale(inq, s_in)
    _set_act_scale(m.act, s_out)
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor(w_int, dtype=torch.float32).view(-1, 1, 1, 1) * 0.1)
        m[1].running_mean.zero_()
        m[1].bias.zero_()
    _bn_identity_scale(m[1])
    return m.eval(), inq


def _golden_layer(m, inq, x_int: np.ndarray) -> np.ndarray:
    """The layer by golden.ops with (mult, shift) from spec.quantize_multiplier of the scales."""
    s_in = inq.act_quant.scale()
    s_out = float(m.act.act_quant.scale())
    qw, _, bias, s_w = fold_params(m[0], m[1], s_in)
    w = qw.int().to(torch.int64).permute(0, 2, 3, 1).numpy()
    ms = [quantize_multiplier(float(s_in) * float(sw) / s_out) for sw in s_w.double()]
    acc = ops.conv2d(x_int, w)
    return ops.requantize(acc, bias.to(torch.int64).numpy(), [a for a, _ in ms], [b for _, b in ms], -128, 127)


def test_layer_rounds_exact_ties_half_up():
    """Scale ratio exactly 1/2 (powers of two): every odd accumulator is a tie."""
    s_in = 2.0 ** -4
    m, inq = _layer(s_in, [7], 1.0)
    s_w = float(fold_params(m[0], m[1], inq.act_quant.scale())[3])
    _set_act_scale(m.act, s_in * s_w * 2)  # ratio s_in * s_w / s_out = 0.5
    x_int = np.arange(-128, 128).reshape(16, 16, 1)
    with torch.no_grad():
        y = m(inq(torch.from_numpy(x_int).permute(2, 0, 1)[None].float() * s_in))
    assert float(y.scale) == float(m.act.act_quant.scale())  # the output carries its scale on
    y = y.value
    got = np.round(y[0].permute(1, 2, 0).double().numpy() / float(m.act.act_quant.scale())).astype(np.int64)
    want = _golden_layer(m, inq, x_int)
    assert np.array_equal(got, want)
    assert np.array_equal(want, np.clip(np.floor(x_int * 7 / 2 + 0.5), -128, 127))  # ties half up
    with float_requant(m), torch.no_grad():  # the old float path rounds ties to even: must differ
        old = m(inq(torch.from_numpy(x_int).permute(2, 0, 1)[None].float() * s_in)).value
    assert not torch.equal(old, y)


def _multiplier_disagreement(eff: Fraction, w: int):
    """(x, float32 s_out, engine, exact) where, for the accumulator x * w, round half up of
    acc * eff / s_out (exact rational) differs from the engine's (acc * mult + 2**(shift-1)) >> shift:
    the 24-bit multiplier decides a near-tie against the exact ratio."""
    up, down = np.float32(np.inf), np.float32(0)
    for x in range(20, 128):
        acc = x * w
        for n in range(5, 100):
            centre = np.float32(float(eff * acc / Fraction(2 * n + 1, 2)))  # acc * eff / s_out ~ n + 1/2
            for direction in (up, down):
                s_out = centre
                for _ in range(8):
                    ratio = eff / Fraction(float(s_out))
                    mult, shift = quantize_multiplier(float(ratio))
                    engine = (acc * mult + (1 << (shift - 1))) >> shift
                    exact = int(np.floor(acc * ratio + Fraction(1, 2)))
                    if engine != exact and abs(engine) < 127:
                        return x, float(s_out), engine, exact
                    s_out = np.nextafter(s_out, direction, dtype=np.float32)
    raise AssertionError("no multiplier disagreement found")


def test_layer_uses_the_24_bit_multiplier_not_the_exact_ratio():
    """A near-tie that float arithmetic (even float64) rounds one way and the engine's 24-bit
    (mult, shift) the other: the eval path must give the engine's integer."""
    s_in = 2.0 ** -4
    m, inq = _layer(s_in, [7], 1.0)
    s_w = fold_params(m[0], m[1], inq.act_quant.scale())[3]
    eff = Fraction(float(inq.act_quant.scale())) * Fraction(float(s_w))
    x, s_out, engine, exact = _multiplier_disagreement(eff, 7)
    assert abs(engine - exact) == 1
    _set_act_scale(m.act, s_out)
    x_int = np.array([[[x], [-x], [1], [0]]], dtype=np.int64)  # (1, 4, 1)
    image = torch.from_numpy(x_int).permute(2, 0, 1)[None] * s_in
    want = _golden_layer(m, inq, x_int)
    assert want[0, 0, 0] == engine
    with torch.no_grad():
        y = m(inq(image.float())).value
    got = np.round(y[0].permute(1, 2, 0).double().numpy() / s_out).astype(np.int64)
    assert np.array_equal(got, want)
    copy = verify.float64_copy(torch.nn.Sequential(inq, m))
    with float_requant(copy), torch.no_grad():  # the old float path follows the exact ratio: it must differ
        old = copy(image.double()).value
    assert round(float(old[0, 0, 0, 0]) / s_out) == exact


# ------------------------------------------------------------------ the whole detector

def _pow2_weights(conv: QuantConv2d) -> None:
    """Scale each output channel so that max |w| = qmax * 2**k: a weight scale of exactly 2**k."""
    qmax = 2 ** (int(conv.quant_weight().bit_width) - 1) - 1
    with torch.no_grad():
        flat = conv.weight.view(conv.out_channels, -1)
        for c in range(flat.shape[0]):
            top = float(flat[c].abs().max())
            target = _pow2(top / qmax) * qmax
            flat[c].mul_(target / top).clamp_(-target, target)
            i = int(flat[c].abs().argmax())
            flat[c, i] = target if flat[c, i] >= 0 else -target
    s_w = conv.quant_weight().scale.detach().flatten().double()
    assert torch.equal(s_w, 2.0 ** torch.round(torch.log2(s_w))), "weight scales should be powers of two"


def _pow2_detector(seed: int):
    """A calibrated tiny detector with every scale a power of two (activations, weights, BN folded
    multiplier 1): every scale ratio is exact, so requantisation ties are everywhere; the dilation
    predictors are made to spread over 0..7."""
    torch.manual_seed(seed)
    m = build_detector("tiny")
    m.train()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _ in range(3):
            m(torch.rand(4, 3, 128, 128, generator=g))
    m.eval()
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            _bn_identity_scale(mod)
        if isinstance(mod, QuantConv2d):
            _pow2_weights(mod)
        if isinstance(mod, (QuantIdentity, QuantReLU)) and any(
                isinstance(s, ParameterFromRuntimeStatsScaling) for s in mod.modules()):
            _set_act_scale(mod, _pow2(float(mod.act_quant.scale())))
    inputs = []
    hooks = [blk.register_forward_hook(lambda mod, args, out: inputs.append(args[0])) for blk in m.decoder]
    with torch.no_grad():
        m(torch.rand(2, 3, 128, 128, generator=g))
    for h in hooks:
        h.remove()
    for blk, x in zip(m.decoder, inputs):  # offsets of a few units: dilations 0..7, not 1 everywhere
        conv = blk.deform.offset_conv
        with torch.no_grad():
            # per-pixel spread ~2 around 3.5, from the captured inputs (a random draw alone may put
            # every pixel of a small map at the same end of 0..7)
            conv.weight.normal_(generator=g)
            r = torch.nn.functional.conv2d(x, conv.weight)
            conv.weight.mul_(2.0 / float(r.std()))
            conv.bias.fill_(3.5 - 2.0 * float(r.mean()) / float(r.std()))
        _pow2_weights(conv)
    return m


@pytest.fixture(scope="module")
def pow2_model_and_program():
    m = _pow2_detector(1)
    return m, export_program(m)


def test_detector_eval_path_is_the_program_at_exact_ties(pow2_model_and_program):
    m, prog = pow2_model_and_program
    images = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(7))
    s_img = float(m.input_quant.act_quant.scale())
    images[:, :, :8] = ((torch.arange(8 * 128).view(8, 128) % 200 + 0.5) * s_img).clamp(max=1.0)  # pixel ties
    dilations = []

    def keep_dilation(i, d, y):
        if prog.layer_names[i].endswith(".offset"):
            dilations.append(np.unique(y))

    run_program(prog, {"image": verify.quantize_image(images[0], prog)}, on_layer=keep_dilation)
    assert len(np.unique(np.concatenate(dilations))) >= 4, "the deformable layers should sample at several dilations"
    for float64 in (False, True):
        r = verify.compare_outputs(m, prog, images, float64=float64)
        assert r["identical"] == 1.0, (float64, r)
    with float_requant(m):  # the float fake-quant path rounds the ties half to even: it must show
        old = verify.compare_outputs(m, prog, images, float64=True)
    assert old["identical"] < 0.999, old


@pytest.mark.parametrize("seed", [0, 3])
def test_calibrated_detector_equals_program_exactly(seed):
    torch.manual_seed(seed)
    m = build_detector("tiny")
    m.train()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _ in range(3):
            m(torch.rand(4, 3, 128, 128, generator=g))
    m.eval()
    prog = export_program(m)
    images = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(9))
    r = verify.compare_outputs(m, prog, images, float64=False)
    assert r["identical"] == 1.0, r


# ------------------------------------------------------------------ training: forward exact, backward float

def test_folded_training_forward_is_exact_and_gradients_are_the_float_paths():
    """BN-folded QAT: the forward value is the engine's; the backward pass is today's float
    fake-quant gradient (same input, same upstream gradient: identical parameter gradients)."""
    m, inq = _layer(2.0 ** -4, [7, -5, 3], 2.0 ** -5)
    g = torch.Generator().manual_seed(1)
    x = torch.randint(-128, 128, (2, 1, 6, 6), generator=g).float() * 2.0 ** -4
    upstream = torch.randn(2, 3, 6, 6, generator=g)
    with torch.no_grad():
        x = inq(x)  # the input quantiser is not trained here
        want = m(x).value  # eval: exact
    fold_batchnorm(m)
    m.train()
    m[1].momentum = 0.0  # folded training reads the running statistics; keep them as they are
    y = m(x).value
    assert torch.equal(y, want)
    (y * upstream).sum().backward()
    grads = {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None}
    assert grads and all(torch.isfinite(v).all() and v.abs().sum() > 0 for v in grads.values())
    m.zero_grad(set_to_none=True)
    with float_requant(m):
        (m(x).value * upstream).sum().backward()
    assert set(grads) == {k for k, p in m.named_parameters() if p.grad is not None}
    for k, p in m.named_parameters():
        if p.grad is not None:
            assert torch.equal(grads[k], p.grad), k
