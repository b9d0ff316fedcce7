"""CenterNet detectors on ShuffleNetV2 with a deformable decoder: CoDeNet's configurations a-e.

Quantisation follows the integer contract: weights 4-bit per output channel (the stem 8-bit),
activations 8-bit with zero-point 0. Where the engine concatenates by writing two producers into
one buffer (ShuffleNet units), both producers must share one activation scale, so every unit of a
stage ends in the *same* QuantReLU quantiser (`Stage.out_quant`); the pass-through half already
carries that scale from the previous unit.

Eval mode (and QAT after `fold_batchnorm`) computes every requantisation as the engine does: BN
folded into the weights before quantisation, exact integer accumulators, the integer bias, the
exported (mult, shift), round half up, clamp (`quantizers.requant_params`, the function the exporter
writes its integers with), so the eval model's outputs are the golden model's integers times the
output scales. In training the float fake-quant path stays underneath as the straight-through
gradient (forward: the exact integers; backward: the float path's gradient). `float_requant()`
evaluates the folded model the old way (Brevitas fake-quant in float), `unfolded()` unfolds BN too.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F
from brevitas.nn import QuantConv2d, QuantIdentity, QuantReLU

from .deform import QuantDeformConv
from .registry import CONFIGS, HEAD_STYLES, DetectorConfig, get_config  # noqa: F401 (re-exported)
from .quantizers import (act_quant, act_scale, exact_conv, fold_params, image_integers, layer_requant,
                         to_integers, weight_quant)


def _conv(cin, cout, k, stride=1, groups=1, bits=4, bias=False):
    return QuantConv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=bias,
                       weight_quant=weight_quant(bits))


_FOLDING = [True]
_EXACT = [True]


@contextlib.contextmanager
def unfolded():
    """Run conv -> BN unfolded even in eval mode (e.g. to hook every conv's forward)."""
    _FOLDING[0] = False
    try:
        yield
    finally:
        _FOLDING[0] = True


@contextlib.contextmanager
def float_requant():
    """Run the folded path's requantisation in float, as Brevitas fake-quant computes it (what eval
    mode computed before it became exact): for comparisons with float graphs and diagnostics."""
    _EXACT[0] = False
    try:
        yield
    finally:
        _EXACT[0] = True


def _src(m: nn.Module | None) -> nn.Module | None:
    """The module the exact path reads integer parameters from: m itself, or the module of the
    float32 original that `derive_integers_from` linked to it."""
    link = getattr(m, "_integer_params_from", None)
    return m if link is None else link[0]


def derive_integers_from(copy: nn.Module, original: nn.Module) -> nn.Module:
    """Make `copy` (e.g. a float64 copy of `original`) run its exact path with the integers
    derived from `original`'s parameters: integer weights and biases, (mult, shift), scales.

    The exact path's integers come from float arithmetic on the parameters (BN folding, weight
    scales, scale products); in another float type they may differ in a last bit and flip a
    near-tie weight, bias or multiplier. The integers that matter are those of the model as trained
    and exported, so a copy in another type must take them from the original. Returns `copy`."""
    originals = dict(original.named_modules())
    for name, m in copy.named_modules():
        o = originals.get(name)
        if o is None or type(o) is not type(m):
            raise ValueError(f"derive_integers_from: module {name or '(root)'!r} is "
                             f"{type(m).__name__} in the copy, {type(o).__name__ if o else 'missing'} in the original")
        m._integer_params_from = [o]  # a list: not registered as a submodule
    return copy


def _needs_float_path(m: nn.Module) -> bool:
    """The float fake-quant path runs beside the exact one for gradients, and in training, where
    the activation quantisers collect their calibration statistics on it."""
    return m.training or torch.is_grad_enabled()


class _Folding:
    """Mixin: a conv (+BN) that knows the quantiser feeding it, so it can run folded.

    Eval mode, or `folded = True` in training (QAT after `freeze_bn`), runs `fold_params`, with
    the requantisation computed exactly as the engine does (`exact_conv_act`) unless under
    `float_requant()`; float or early-QAT training runs the usual conv -> BN. The input quantiser
    is kept in a list so it is not registered twice as a submodule.
    """

    folded = False
    where = "layer"  # the module's name in the detector, for error messages (set by CenterNet)

    def set_input_quant(self, q: nn.Module) -> None:
        self._in_quant = [q]

    def input_scale(self) -> torch.Tensor:
        return self._in_quant[0].act_quant.scale()

    def _use_fold(self) -> bool:
        return ((not self.training or self.folded) and _FOLDING[0]
                and getattr(self, "_in_quant", None) is not None)

    def _exact(self) -> bool:
        return self._use_fold() and _EXACT[0]

    def folded_conv(self, x, conv, bn):
        qw, bias, _, _ = fold_params(conv, bn, self.input_scale())
        return F.conv2d(x, qw.value, bias, conv.stride, conv.padding, conv.dilation, conv.groups)

    def exact_conv_act(self, x, conv, bn, out_quant, where: str):
        """out_quant(conv (+ BN folded) of x) as the engine computes it: integer activations
        x / s_in, exact accumulators, + integer bias, * mult >> shift rounded half up, clamped
        (`layer_requant`, as exported); the values are those integers times out_quant's scale.
        With the float path's gradient when it is needed (`_needs_float_path`)."""
        f = None
        if _needs_float_path(self):  # first: in training it updates out_quant's statistics
            f = out_quant(self.folded_conv(x, conv, bn))
        s_in = _src(self._in_quant[0]).act_quant.scale()
        _, rq = layer_requant(_src(conv), _src(bn), s_in, *act_scale(_src(out_quant)), where=where)
        y = rq.values(rq.apply(exact_conv(to_integers(x, s_in), rq, conv)), x)
        # exact + (f - f) keeps the forward value bit-exact (not f + (exact - f).detach())
        return y if f is None else y + (f - f.detach())


class ConvBNAct(_Folding, nn.Sequential):
    """conv -> BN -> activation quantiser (QuantReLU, or signed QuantIdentity when relu=False)."""

    def __init__(self, cin, cout, k, stride=1, groups=1, bits=4, relu=True, out_quant: nn.Module | None = None):
        act = out_quant if out_quant is not None else (
            QuantReLU(act_quant=act_quant(signed=False)) if relu else QuantIdentity(act_quant=act_quant(signed=True)))
        super().__init__(_conv(cin, cout, k, stride, groups, bits), nn.BatchNorm2d(cout), act)

    @property
    def act(self) -> nn.Module:
        return self[2]

    def forward(self, x):
        if self._exact():
            return self.exact_conv_act(x, self[0], self[1], self[2], self.where)
        if self._use_fold():
            return self[2](self.folded_conv(x, self[0], self[1]))
        return self[2](self[1](self[0](x)))


def channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit. Both halves end in the stage's shared quantiser `out_quant`."""

    def __init__(self, cin: int, cout: int, stride: int, out_quant: nn.Module):
        super().__init__()
        self.stride = stride
        half = cout // 2
        if stride == 2:
            self.branch1 = nn.Sequential(ConvBNAct(cin, cin, 3, 2, groups=cin, relu=False),
                                         ConvBNAct(cin, half, 1, out_quant=out_quant))
            b2_in = cin
        else:
            self.branch1 = None
            b2_in = cin // 2
        self.branch2 = nn.Sequential(ConvBNAct(b2_in, half, 1),
                                     ConvBNAct(half, half, 3, stride, groups=half, relu=False),
                                     ConvBNAct(half, half, 1, out_quant=out_quant))

    def forward(self, x):
        if self.stride == 2:
            out = torch.cat([self.branch1(x), self.branch2(x)], dim=1)
        else:
            keep, work = x.chunk(2, dim=1)
            out = torch.cat([keep, self.branch2(work)], dim=1)
        return channel_shuffle(out, 2)


class Stage(nn.Sequential):
    def __init__(self, cin: int, cout: int, repeats: int):
        out_quant = QuantReLU(act_quant=act_quant(signed=False))  # shared by every unit's outputs
        units = [ShuffleUnit(cin, cout, 2, out_quant)] + [ShuffleUnit(cout, cout, 1, out_quant)
                                                           for _ in range(repeats)]
        super().__init__(*units)


class DeformUp(_Folding, nn.Module):
    """Decoder block: deformable conv -> BN -> ReLU -> nearest 2x upsample (fused on the engine).
    Folded, BN goes into the pointwise conv that follows the deformable depthwise conv."""

    def __init__(self, cin: int, cout: int, cfg: DetectorConfig):
        super().__init__()
        self.deform = QuantDeformConv(cin, cout, variant=cfg.variant, sampling=cfg.sampling,
                                      weight_bits=cfg.weight_bits, max_dilation=cfg.max_dilation)
        self.bn = nn.BatchNorm2d(cout)
        self.act = QuantReLU(act_quant=act_quant(signed=False))
        if self.deform.pw_conv is not None:
            self.set_input_quant(self.deform.dw_quant)

    def forward(self, x):
        d = self.deform
        if self._exact() and getattr(self, "deform_input", None) and d.variant == "square_depthwise" \
                and d.sampling == "integer":  # what the engine runs: offset CONV, DEFORM_DW, CONV
            t = d.exact_depthwise(x, _src(self.deform_input[0]).act_quant.scale(), self.where,
                                  requants=_src(d).engine_requants)
            y = self.exact_conv_act(t, d.pw_conv, self.bn, self.act, f"{self.where}.pw")
        elif self._use_fold():
            y = self.act(self.folded_conv(d.dw_quant(d.deform(x)), d.pw_conv, self.bn))
        else:
            y = self.act(self.bn(self.deform(x)))
        return F.interpolate(y, scale_factor=2, mode="nearest")


class _HeadConv(_Folding, nn.Module):
    """A head conv with a float bias during training, an integer bias (scale s_in*s_w) folded."""

    def __init__(self, conv: nn.Module):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        return self.folded_conv(x, self.conv, None) if self._use_fold() else self.conv(x)


class _HeadBase(nn.Sequential):
    """A head's four parts: [first conv, ..., last conv, output quantiser]."""

    @property
    def out_quant(self) -> nn.Module:
        return self[3]

    def wire_input(self, q: nn.Module) -> None:
        self[0].set_input_quant(q)


class Head(_HeadBase):
    """CenterNet's plain head (`head="centernet"`): 3x3 conv (bias) + ReLU, then 1x1 to the outputs
    (8-bit signed logits/regressions). Item 3 is the output quantiser in both head styles."""

    bias_convs = (0, 2)  # the _HeadConv items (their biases are integers at s_in * s_w when folded)

    def __init__(self, cin: int, mid: int, cout: int, bits: int, prior_bias: float = 0.0):
        last = _conv(mid, cout, 1, bits=bits, bias=True)
        nn.init.constant_(last.bias, prior_bias)
        super().__init__(_HeadConv(_conv(cin, mid, 3, bits=bits, bias=True)),
                         QuantReLU(act_quant=act_quant(signed=False)),
                         _HeadConv(last), QuantIdentity(act_quant=act_quant(signed=True)))
        self[2].set_input_quant(self[1])

    def forward(self, x):
        if self[0]._exact() and self[2]._exact():
            x = self[0].exact_conv_act(x, self[0].conv, None, self[1], self[0].where)
            return self[2].exact_conv_act(x, self[2].conv, None, self[3], self[2].where)
        return super().forward(x)


class CoDeNetHead(_HeadBase):
    """CoDeNet's head (`head="codenet"`, the default): 1x1 + BN + ReLU, depthwise 3x3 + BN + ReLU,
    then 1x1 to the outputs with a bias (8-bit signed logits/regressions, item 3)."""

    bias_convs = (2,)

    def __init__(self, cin: int, mid: int, cout: int, bits: int, prior_bias: float = 0.0):
        last = _conv(mid, cout, 1, bits=bits, bias=True)
        nn.init.constant_(last.bias, prior_bias)
        super().__init__(ConvBNAct(cin, mid, 1, bits=bits), ConvBNAct(mid, mid, 3, groups=mid, bits=bits),
                         _HeadConv(last), QuantIdentity(act_quant=act_quant(signed=True)))
        self[1].set_input_quant(self[0].act)
        self[2].set_input_quant(self[1].act)

    def forward(self, x):
        x = self[1](self[0](x))
        if self[2]._exact():
            return self[2].exact_conv_act(x, self[2].conv, None, self[3], self[2].where)
        return self[3](self[2](x))


HEADS = {"centernet": Head, "codenet": CoDeNetHead}


class CenterNet(nn.Module):
    """Outputs a dict {hm: logits (N, classes, H/4, W/4), wh: (N, 2, ...), reg: (N, 2, ...)}."""

    def __init__(self, cfg: DetectorConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.widths
        # The image enters as 8-bit pixels: an unsigned 8-bit quantiser on [0, 1] inputs.
        self.input_quant = QuantIdentity(act_quant=act_quant(signed=False))
        if cfg.stem == "s4":
            self.stem = ConvBNAct(3, w[0], 3, 4, bits=cfg.stem_weight_bits)
            self.pool = None
        elif cfg.stem == "s2pool":
            self.stem = ConvBNAct(3, w[0], 3, 2, bits=cfg.stem_weight_bits)
            self.pool = nn.MaxPool2d(3, 2, 1)
        else:
            raise ValueError(f"config {cfg.name}: stem {cfg.stem!r}, expected 's4' or 's2pool'")
        self.stages = nn.Sequential(*[Stage(cin, cout, r) for cin, cout, r in zip(w[:-1], w[1:], cfg.repeats)])
        # CoDeNet's layer4: 1x1 conv + BN + ReLU widening stage 4 before the decoder (None: absent).
        self.layer4 = ConvBNAct(w[-1], cfg.layer4, 1, bits=cfg.weight_bits) if cfg.layer4 else None
        chans = (cfg.layer4 or w[-1],) + cfg.decoder
        self.decoder = nn.Sequential(*[DeformUp(a, b, cfg) for a, b in zip(chans[:-1], chans[1:])])
        c = cfg.decoder[-1]
        head = HEADS[cfg.head]
        self.hm = head(c, cfg.head_conv, cfg.num_classes, cfg.weight_bits, prior_bias=-2.19)  # CenterNet prior
        self.wh = head(c, cfg.head_conv, 2, cfg.weight_bits)
        self.reg = head(c, cfg.head_conv, 2, cfg.weight_bits)
        self._wire_input_quantisers()

    def _wire_input_quantisers(self) -> None:
        """Tell every folding conv which quantiser produces its input (its s_in)."""
        self.stem.set_input_quant(self.input_quant)
        prev = self.stem.act  # maxpool keeps the scale
        for stage in self.stages:
            for unit in stage:
                if unit.branch1 is not None:
                    unit.branch1[0].set_input_quant(prev)
                    unit.branch1[1].set_input_quant(unit.branch1[0].act)
                b = unit.branch2
                b[0].set_input_quant(prev)
                b[1].set_input_quant(b[0].act)
                b[2].set_input_quant(b[1].act)
                prev = b[2].act  # the stage's shared output quantiser
        if self.layer4 is not None:
            self.layer4.set_input_quant(prev)
            prev = self.layer4.act
        for blk in self.decoder:
            blk.deform_input = [prev]
            prev = blk.act
        for head in (self.hm, self.wh, self.reg):
            head.wire_input(prev)
        for name, m in self.named_modules():
            if isinstance(m, _Folding):
                m.where = name

    def quantize_input(self, x):
        """The image's 8-bit quantiser: exactly the host's rounding (`image_integers`: float64,
        half up) where the model runs exact, else Brevitas' (float, half to even)."""
        if not self.stem._exact():
            return self.input_quant(x)
        f = self.input_quant(x) if _needs_float_path(self) else None
        s, signed = act_scale(_src(self.input_quant))
        y = image_integers(x, s, signed).to(x.dtype) * torch.tensor(s, dtype=x.dtype, device=x.device)
        return y if f is None else y + (f - f.detach())

    def forward(self, x):
        x = self.stem(self.quantize_input(x))
        if self.pool is not None:
            x = self.pool(x)
        x = self.stages(x)
        if self.layer4 is not None:
            x = self.layer4(x)
        x = self.decoder(x)
        return {"hm": self.hm(x), "wh": self.wh(x), "reg": self.reg(x)}


def build_detector(name: str | DetectorConfig, **overrides) -> CenterNet:
    """The detector of a registered config (`registry.MODEL_NAMES`) or a DetectorConfig, with any
    field overridden (e.g. num_classes=..., input_size=..., head="centernet", sampling=...)."""
    cfg = name if isinstance(name, DetectorConfig) else get_config(name)
    return CenterNet(cfg.with_(**overrides) if overrides else cfg)


def fold_batchnorm(model: nn.Module, folded: bool = True) -> nn.Module:
    """Train the rest of QAT exactly as deployed: BN frozen into the weights, integer biases."""
    for m in model.modules():
        if isinstance(m, _Folding):
            m.folded = folded
    return model
