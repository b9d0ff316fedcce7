"""CenterNet detectors on ShuffleNetV2 with a deformable decoder: CoDeNet's configurations a-e.

Quantisation follows the integer contract: weights 4-bit per output channel (the stem 8-bit),
activations 8-bit with zero-point 0. Activations travel as Brevitas QuantTensors (the quantisers
are built with return_quant_tensor=True, `quantizers.QTReLU` / `QTIdentity`), so every layer reads
its input scale from its input. Where the engine concatenates by writing two producers into one
buffer (ShuffleNet units), both producers must share one activation scale: every unit of a stage
ends in the *same* output quantiser (`Stage`), the pass-through half already carries that scale
from the previous unit, and `ShuffleUnit` checks the rule at its concat (`quantizers.concat_scale`).

Eval mode (and QAT after `fold_batchnorm`) computes every requantisation as the engine does: BN
folded into the weights before quantisation, exact integer accumulators, the integer bias, the
exported (mult, shift), round half up, clamp (`quantizers.requant_params`, the function the exporter
writes its integers with), so the eval model's outputs are the golden model's integers times the
output scales. In training the float fake-quant path stays underneath as the straight-through
gradient (forward: the exact integers; backward: the float path's gradient). With activation
quantisation off (float mode) the inputs carry no scale and every layer runs conv -> BN unfolded.
`float_requant(model)` evaluates the folded model the old way (Brevitas fake-quant in float),
`unfolded(model)` unfolds BN too; both are context managers on one model.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from brevitas.nn import QuantConv2d
from brevitas.quant_tensor import QuantTensor
from torch import Tensor

from .deform import QuantDeformConv
from .registry import CONFIGS, HEAD_STYLES, DetectorConfig, get_config  # noqa: F401 (re-exported)
from .quantizers import (QTIdentity, QTReLU, act_scale, concat_scale, exact_conv, fold_params,  # noqa: F401
                         image_integers, layer_requant, map_values, quant_tensor, scale_of, to_integers,
                         value_of, weight_quant)

BLANK_SIDE = 32  # the smallest input every config takes (the backbone's stride): `input_scales` runs one


def _conv(cin, cout, k, stride=1, groups=1, bits=4, bias=False):
    return QuantConv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=bias,
                       weight_quant=weight_quant(bits))


def _unregistered(m: nn.Module, name: str, value: object) -> None:
    """Set an attribute nn.Module would register as a submodule as a plain one instead: a link that
    must not enter the state dict, `.to()`/`.double()` or named_modules (object.__setattr__)."""
    object.__setattr__(m, name, value)


@contextlib.contextmanager
def _layer_flag(model: nn.Module, flag: str) -> Iterator[None]:
    layers = [m for m in model.modules() if isinstance(m, _Folding)]
    before = [m.__dict__.get(flag) for m in layers]
    for m in layers:
        setattr(m, flag, False)
    try:
        yield
    finally:
        for m, b in zip(layers, before):
            if b is None:
                del m.__dict__[flag]  # back to the class default
            else:
                setattr(m, flag, b)


def unfolded(model: nn.Module):
    """Context manager: `model` runs conv -> BN unfolded even in eval mode (e.g. to hook every
    conv's forward)."""
    return _layer_flag(model, "fold_enabled")


def float_requant(model: nn.Module):
    """Context manager: `model`'s folded path requantises in float, as Brevitas fake-quant computes
    it (what eval mode computed before it became exact): for comparisons with float graphs and
    diagnostics."""
    return _layer_flag(model, "exact_enabled")


def _src(m: nn.Module | None) -> nn.Module | None:
    """The module the exact path reads integer parameters from: m itself, or the module of the
    float32 original that `derive_integers_from` linked to it."""
    link = getattr(m, "_integer_params_from", None)
    return m if link is None else link


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
        _unregistered(m, "_integer_params_from", o)
    return copy


def _needs_float_path(m: nn.Module) -> bool:
    """The float fake-quant path runs beside the exact one for gradients, and in training, where
    the activation quantisers collect their calibration statistics on it."""
    return m.training or torch.is_grad_enabled()


class _Folding:
    """Mixin: a conv (+BN) that can run folded, with the input scale its input carries.

    Eval mode, or `folded = True` in training (QAT after `fold_batchnorm`), runs `fold_params` on
    an input that carries a scale (a QuantTensor), with the requantisation computed exactly as the
    engine does (`exact_conv_act`) unless under `float_requant(model)`; float or early-QAT
    training, a plain input (quantisation off) or `unfolded(model)` run the usual conv -> BN.
    """

    folded = False         # QAT after fold_batchnorm
    fold_enabled = True    # False under unfolded(model)
    exact_enabled = True   # False under float_requant(model)
    where = "layer"  # the module's name in the detector, for error messages (set by CenterNet)

    def _fold_mode(self) -> bool:
        return (not self.training or self.folded) and self.fold_enabled

    def _exact_mode(self) -> bool:
        return self._fold_mode() and self.exact_enabled

    def folded_conv(self, x: Tensor, s_in: Tensor, conv, bn) -> Tensor:
        qw, bias, _, _ = fold_params(conv, bn, s_in)
        return F.conv2d(x, qw.value, bias, conv.stride, conv.padding, conv.dilation, conv.groups)

    def exact_conv_act(self, x: QuantTensor, conv, bn, out_quant, where: str) -> QuantTensor:
        """out_quant(conv (+ BN folded) of x) as the engine computes it: integer activations
        x / x.scale, exact accumulators, + integer bias, * mult >> shift rounded half up, clamped
        (`layer_requant`, as exported); the values are those integers times out_quant's scale,
        returned with it. With the float path's gradient when it is needed (`_needs_float_path`)."""
        v, s_in = x.value, x.scale
        f = None
        if _needs_float_path(self):  # first: in training it updates out_quant's statistics
            f = value_of(out_quant(self.folded_conv(v, s_in, conv, bn)))
        q = _src(out_quant)
        _, rq = layer_requant(_src(conv), _src(bn), s_in, *act_scale(q), where=where)
        y = rq.values(rq.apply(exact_conv(to_integers(v, s_in), rq, conv)), v)
        # exact + (f - f) keeps the forward value bit-exact (not f + (exact - f).detach())
        y = y if f is None else y + (f - f.detach())
        return quant_tensor(y, q.act_quant.scale(), rq.signed, self.training)


class ConvBNAct(_Folding, nn.Sequential):
    """conv -> BN -> activation quantiser (QTReLU, or signed QTIdentity when relu=False)."""

    def __init__(self, cin, cout, k, stride=1, groups=1, bits=4, relu=True, out_quant: nn.Module | None = None):
        act = out_quant if out_quant is not None else (QTReLU() if relu else QTIdentity(signed=True))
        super().__init__(_conv(cin, cout, k, stride, groups, bits), nn.BatchNorm2d(cout), act)

    @property
    def act(self) -> nn.Module:
        return self[2]

    def forward(self, x):
        s_in = scale_of(x)
        if s_in is not None and self._fold_mode():
            if self._exact_mode():
                return self.exact_conv_act(x, self[0], self[1], self[2], self.where)
            return self[2](self.folded_conv(x.value, s_in, self[0], self[1]))
        return self[2](self[1](self[0](value_of(x))))


def channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit. Both halves end in the stage's shared quantiser `out_quant`; the concat
    checks they carry one scale (`concat_scale`: the engine writes both into one buffer)."""

    where = "shuffle unit"  # the module's name in the detector, for error messages (set by CenterNet)

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

    def concat(self, left, right):
        """Channel concat [left, right]; where both carry scales, they must be one. Not checked in
        training: while the quantisers calibrate, the shared quantiser's scale moves from call to
        call, and the concat carries the latest (right's, the shared quantiser's last output)."""
        sl, sr = scale_of(left), scale_of(right)
        value = torch.cat([value_of(left), value_of(right)], dim=1)
        if sl is None or sr is None:
            return value
        if not self.training:
            concat_scale(self.where, sl, sr)
        return right.set(value=value)

    def forward(self, x):
        if self.stride == 2:
            out = self.concat(self.branch1(x), self.branch2(x))
        else:
            keep, work = value_of(x).chunk(2, dim=1)
            if scale_of(x) is not None:
                keep, work = x.set(value=keep), x.set(value=work)
            out = self.concat(keep, self.branch2(work))
        return map_values(out, channel_shuffle)


class Stage(nn.Sequential):
    def __init__(self, cin: int, cout: int, repeats: int):
        out_quant = QTReLU()  # shared by every unit's outputs
        units = [ShuffleUnit(cin, cout, 2, out_quant)] + [ShuffleUnit(cout, cout, 1, out_quant)
                                                           for _ in range(repeats)]
        super().__init__(*units)


class DeformUp(_Folding, nn.Module):
    """Decoder block: deformable conv -> BN -> ReLU -> nearest 2x upsample (fused on the engine).
    Folded (depthwise variants), BN goes into the pointwise conv that follows the deformable
    depthwise conv, whose input is the block's own quantiser `deform.dw_quant`."""

    def __init__(self, cin: int, cout: int, cfg: DetectorConfig):
        super().__init__()
        self.deform = QuantDeformConv(cin, cout, variant=cfg.variant, sampling=cfg.sampling,
                                      weight_bits=cfg.weight_bits, max_dilation=cfg.max_dilation)
        self.bn = nn.BatchNorm2d(cout)
        self.act = QTReLU()

    def input_scale(self) -> Tensor:
        """The scale of the pointwise conv's input: the block's depthwise quantiser's."""
        return self.deform.dw_quant.act_quant.scale()

    def forward(self, x):
        d = self.deform
        s_in = scale_of(x)
        if s_in is not None and d.pw_conv is not None and self._fold_mode():
            dw_quant = _src(d.dw_quant)
            if self._exact_mode() and d.variant == "square_depthwise" and d.sampling == "integer":
                # what the engine runs: offset CONV, DEFORM_DW, CONV
                t = d.exact_depthwise(x.value, s_in, self.where, requants=_src(d).engine_requants)
                t = quant_tensor(t, dw_quant.act_quant.scale(), True, self.training)
                y = self.exact_conv_act(t, d.pw_conv, self.bn, self.act, f"{self.where}.pw")
            else:
                t = d.dw_quant(d.deform(x.value))
                y = self.act(self.folded_conv(t, dw_quant.act_quant.scale(), d.pw_conv, self.bn))
        else:
            y = self.act(self.bn(d(value_of(x))))
        return map_values(y, lambda v: F.interpolate(v, scale_factor=2, mode="nearest"))


class _HeadConv(_Folding, nn.Module):
    """A head conv with a float bias during training, an integer bias (scale s_in*s_w) folded."""

    def __init__(self, conv: nn.Module):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        s_in = scale_of(x)
        if s_in is not None and self._fold_mode():
            return self.folded_conv(x.value, s_in, self.conv, None)
        return self.conv(value_of(x))


class Head(nn.Sequential):
    """CenterNet's plain head (`head="centernet"`): 3x3 conv (bias) + ReLU, then 1x1 to the outputs
    (8-bit signed logits/regressions). Item 3 is the output quantiser in both head styles."""

    bias_convs = (0, 2)  # the _HeadConv items (their biases are integers at s_in * s_w when folded)

    def __init__(self, cin: int, mid: int, cout: int, bits: int, prior_bias: float = 0.0):
        last = _conv(mid, cout, 1, bits=bits, bias=True)
        nn.init.constant_(last.bias, prior_bias)
        super().__init__(_HeadConv(_conv(cin, mid, 3, bits=bits, bias=True)), QTReLU(),
                         _HeadConv(last), QTIdentity(signed=True))

    def forward(self, x):
        if scale_of(x) is not None and self[0]._exact_mode() and self[2]._exact_mode():
            x = self[0].exact_conv_act(x, self[0].conv, None, self[1], self[0].where)
            return self[2].exact_conv_act(x, self[2].conv, None, self[3], self[2].where)
        return super().forward(x)


class CoDeNetHead(nn.Sequential):
    """CoDeNet's head (`head="codenet"`, the default): 1x1 + BN + ReLU, depthwise 3x3 + BN + ReLU,
    then 1x1 to the outputs with a bias (8-bit signed logits/regressions, item 3)."""

    bias_convs = (2,)

    def __init__(self, cin: int, mid: int, cout: int, bits: int, prior_bias: float = 0.0):
        last = _conv(mid, cout, 1, bits=bits, bias=True)
        nn.init.constant_(last.bias, prior_bias)
        super().__init__(ConvBNAct(cin, mid, 1, bits=bits), ConvBNAct(mid, mid, 3, groups=mid, bits=bits),
                         _HeadConv(last), QTIdentity(signed=True))

    def forward(self, x):
        x = self[1](self[0](x))
        if scale_of(x) is not None and self[2]._exact_mode():
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
        self.input_quant = QTIdentity(signed=False)
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
        for name, m in self.named_modules():
            if isinstance(m, (_Folding, ShuffleUnit)):
                m.where = name

    @torch.no_grad()
    def input_scales(self) -> dict[str, Tensor]:
        """{name: the scale of the input} of every conv layer that takes its input from another
        quantiser (ConvBNAct and head convs), read from the inputs of one eval pass on a blank
        BLANK_SIDE x BLANK_SIDE image (activation scales do not depend on the image); {} with
        activation quantisation off. The model's modes are as before afterwards."""
        seen: dict[str, Tensor] = {}

        def record(m: nn.Module, args: tuple) -> None:  # a pre-hook returning a value would replace the input
            seen.setdefault(m.where, scale_of(args[0]))

        hooks = [m.register_forward_pre_hook(record) for m in self.modules() if isinstance(m, (ConvBNAct, _HeadConv))]
        modes = [(m, m.training) for m in self.modules()]
        p = next(self.parameters())
        try:
            self.eval()
            with unfolded(self):  # every layer's forward runs (the exact heads would skip theirs)
                self(torch.zeros(1, 3, BLANK_SIDE, BLANK_SIDE, dtype=p.dtype, device=p.device))
        finally:
            for h in hooks:
                h.remove()
            for m, training in modes:
                m.training = training
        return {k: v for k, v in seen.items() if v is not None}

    def quantize_input(self, x):
        """The image's 8-bit quantiser: exactly the host's rounding (`image_integers`: float64,
        half up) where the model runs exact, else Brevitas' (float, half to even)."""
        q = self.input_quant
        if not (self.stem._exact_mode() and q.act_quant.is_quant_enabled):
            return q(x)
        f = value_of(q(x)) if _needs_float_path(self) else None
        src = _src(q)
        s, signed = act_scale(src)
        y = image_integers(x, s, signed).to(x.dtype) * torch.tensor(s, dtype=x.dtype, device=x.device)
        y = y if f is None else y + (f - f.detach())
        return quant_tensor(y, src.act_quant.scale(), signed, self.training)

    def forward(self, x):
        x = self.stem(self.quantize_input(x))
        if self.pool is not None:
            x = map_values(x, self.pool)
        x = self.stages(x)
        if self.layer4 is not None:
            x = self.layer4(x)
        x = self.decoder(x)
        return {"hm": value_of(self.hm(x)), "wh": value_of(self.wh(x)), "reg": value_of(self.reg(x))}


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
