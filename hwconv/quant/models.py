"""CenterNet detectors on ShuffleNetV2 with a deformable decoder: CoDeNet's configurations a-e.

Quantisation follows the integer contract: weights 4-bit per output channel (the stem 8-bit),
activations 8-bit with zero-point 0. Where the engine concatenates by writing two producers into
one buffer (ShuffleNet units), both producers must share one activation scale, so every unit of a
stage ends in the *same* QuantReLU quantiser (`Stage.out_quant`); the pass-through half already
carries that scale from the previous unit.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from brevitas.nn import QuantConv2d, QuantIdentity, QuantReLU

from .deform import QuantDeformConv
from .quantizers import act_quant, weight_quant


@dataclass(frozen=True)
class DetectorConfig:
    name: str
    input_size: int
    widths: tuple[int, ...]            # stem, stage2, stage3, stage4
    stem: str = "s4"                   # "s4": 3x3 stride 4; "s2pool": 3x3 stride 2 + 3x3/2 maxpool
    repeats: tuple[int, ...] = (3, 7, 3)  # basic units after each stage's stride-2 unit
    decoder: tuple[int, ...] = (256, 128, 64)
    head_conv: int = 64
    num_classes: int = 20
    variant: str = "square_depthwise"
    sampling: str = "integer"
    max_dilation: int = 7
    weight_bits: int = 4
    stem_weight_bits: int = 8
    published: dict = field(default_factory=dict, compare=False)  # CoDeNet's figures, VOC W4A8

    def with_(self, **kw) -> "DetectorConfig":
        from dataclasses import replace

        return replace(self, **kw)


_W1X = (24, 116, 232, 464)
_W2X = (24, 244, 488, 976)
CONFIGS: dict[str, DetectorConfig] = {
    "a": DetectorConfig("a", 256, _W1X, "s4", published=dict(gmac=0.29, mbytes=0.76, fps=32.2, ap50=51.1)),
    "b": DetectorConfig("b", 256, _W1X, "s2pool", published=dict(fps=26.9, ap50=55.1)),
    "c": DetectorConfig("c", 512, _W1X, "s4", published=dict(gmac=1.14, fps=9.3, ap50=61.7)),
    "d": DetectorConfig("d", 512, _W2X, "s4", published=dict(gmac=3.54, mbytes=2.90, fps=5.2, ap50=67.1)),
    "e": DetectorConfig("e", 512, _W2X, "s2pool", published=dict(gmac=3.58, fps=4.6, ap50=69.7)),
    # Small enough to train on a 2-core CPU in minutes; same structure.
    "tiny": DetectorConfig("tiny", 128, (16, 32, 64, 128), "s4", (1, 1, 1), (64, 32, 32), 32, 10),
}


def _conv(cin, cout, k, stride=1, groups=1, bits=4, bias=False):
    return QuantConv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=bias,
                       weight_quant=weight_quant(bits))


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def fold_params(conv: nn.Module, bn: nn.BatchNorm2d | None, s_in: torch.Tensor):
    """The conv (+ BN, running statistics) exactly as the engine runs it.

    BN is folded into the weights *before* they are quantised (so the 4-bit integers are the
    deployed ones) and the folded bias is rounded to an integer at scale s_in * s_w, the contract's
    int32 bias. Returns (quantised weight tensor, float bias, integer bias, per-channel s_w).
    Training in this mode and exporting with it make the fake-quant model the integer program.
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
    bias_int = _round_ste(b / step)
    return qw, bias_int * step, bias_int, s_w


_FOLDING = [True]


@contextlib.contextmanager
def unfolded():
    """Run conv -> BN unfolded even in eval mode (e.g. to hook every conv's forward)."""
    _FOLDING[0] = False
    try:
        yield
    finally:
        _FOLDING[0] = True


class _Folding:
    """Mixin: a conv (+BN) that knows the quantiser feeding it, so it can run folded.

    Eval mode, or `folded = True` in training (QAT after `freeze_bn`), runs `fold_params`; float
    or early-QAT training runs the usual conv -> BN. The input quantiser is kept in a list so it is
    not registered twice as a submodule.
    """

    folded = False

    def set_input_quant(self, q: nn.Module) -> None:
        self._in_quant = [q]

    def input_scale(self) -> torch.Tensor:
        return self._in_quant[0].act_quant.scale()

    def _use_fold(self) -> bool:
        return ((not self.training or self.folded) and _FOLDING[0]
                and getattr(self, "_in_quant", None) is not None)

    def folded_conv(self, x, conv, bn):
        qw, bias, _, _ = fold_params(conv, bn, self.input_scale())
        return F.conv2d(x, qw.value, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


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
        if self._use_fold():
            d = self.deform
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


class Head(nn.Sequential):
    """CenterNet head: 3x3 conv + ReLU, then 1x1 to the outputs (8-bit signed logits/regressions)."""

    def __init__(self, cin: int, mid: int, cout: int, bits: int, prior_bias: float = 0.0):
        last = _conv(mid, cout, 1, bits=bits, bias=True)
        nn.init.constant_(last.bias, prior_bias)
        super().__init__(_HeadConv(_conv(cin, mid, 3, bits=bits, bias=True)),
                         QuantReLU(act_quant=act_quant(signed=False)),
                         _HeadConv(last), QuantIdentity(act_quant=act_quant(signed=True)))
        self[2].set_input_quant(self[1])


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
        chans = (w[-1],) + cfg.decoder
        self.decoder = nn.Sequential(*[DeformUp(a, b, cfg) for a, b in zip(chans[:-1], chans[1:])])
        c = cfg.decoder[-1]
        self.hm = Head(c, cfg.head_conv, cfg.num_classes, cfg.weight_bits, prior_bias=-2.19)  # CenterNet prior
        self.wh = Head(c, cfg.head_conv, 2, cfg.weight_bits)
        self.reg = Head(c, cfg.head_conv, 2, cfg.weight_bits)
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
        for blk in self.decoder:
            blk.deform_input = [prev]
            prev = blk.act
        for head in (self.hm, self.wh, self.reg):
            head[0].set_input_quant(prev)

    def forward(self, x):
        x = self.stem(self.input_quant(x))
        if self.pool is not None:
            x = self.pool(x)
        x = self.decoder(self.stages(x))
        return {"hm": self.hm(x), "wh": self.wh(x), "reg": self.reg(x)}


def build_detector(name: str | DetectorConfig, **overrides) -> CenterNet:
    if isinstance(name, DetectorConfig):
        cfg = name
    else:
        try:
            cfg = CONFIGS[name]
        except KeyError:
            raise ValueError(f"unknown detector config {name!r}; known: {', '.join(CONFIGS)}") from None
    return CenterNet(cfg.with_(**overrides) if overrides else cfg)


def fold_batchnorm(model: nn.Module, folded: bool = True) -> nn.Module:
    """Train the rest of QAT exactly as deployed: BN frozen into the weights, integer biases."""
    for m in model.modules():
        if isinstance(m, _Folding):
            m.folded = folded
    return model
