"""Export a trained CenterNet (Brevitas fake-quant) to an engine program.

Per layer: integer weights from the weight quantiser; BatchNorm folded into the requantisation
(scale) and the int32 bias (shift); a channel whose folded scale is negative gets its weights
negated (symmetric narrow-range weights make that exact); the requant multiplier
s_in * s_w * gamma / sigma / s_out is rounded to the contract's 24-bit (mult, shift).
Channel shuffle needs no weight reordering: the builder stores each ShuffleNet unit's halves
interleaved, so every buffer holds the shuffled tensor in logical order (docs/architecture.md).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from ..compiler.builder import ProgramBuilder, Tensor
from ..spec import EngineConfig, Program, SpecError, quantize_multiplier
from ..spec.params import act_range
from .models import CenterNet, ConvBNAct, DeformUp, Head, ShuffleUnit


def act_scale(q: nn.Module) -> tuple[float, bool]:
    """(scale, signed) of a QuantReLU / QuantIdentity activation quantiser."""
    proxy = q.act_quant
    return float(proxy.scale()), bool(proxy.is_signed)


def _int_weights(conv: nn.Module, where: str) -> tuple[np.ndarray, np.ndarray, int]:
    qw = conv.quant_weight()
    w = qw.int().detach().cpu().numpy().astype(np.int64)          # (O, I/groups, k, k)
    s = qw.scale.detach().cpu().numpy().astype(np.float64).reshape(-1)
    if s.size == 1:
        s = np.full(w.shape[0], float(s[0]))
    bits = int(qw.bit_width)
    if bits not in (4, 8):
        raise SpecError(f"{where}: {bits}-bit weights; the engine runs 4- or 8-bit weights")
    return w, s, bits


def _bn_affine(bn: nn.BatchNorm2d | None, n: int) -> tuple[np.ndarray, np.ndarray]:
    """BatchNorm in eval mode as y = a * x + b per channel."""
    if bn is None:
        return np.ones(n), np.zeros(n)
    g = bn.weight.detach().double().cpu().numpy() if bn.affine else np.ones(n)
    beta = bn.bias.detach().double().cpu().numpy() if bn.affine else np.zeros(n)
    sigma = np.sqrt(bn.running_var.detach().double().cpu().numpy() + bn.eps)
    a = g / sigma
    return a, beta - bn.running_mean.detach().double().cpu().numpy() * a


class Exporter:
    def __init__(self, model: CenterNet, config: EngineConfig):
        self.model = model.eval()
        self.config = config
        self.b = ProgramBuilder(config, extra={"model": model.cfg.name, "variant": model.cfg.variant})

    # -- one requantising conv ---------------------------------------------------------------
    def conv(self, name: str, x: Tensor, conv: nn.Module, bn: nn.BatchNorm2d | None, out_scale: float,
             out_signed: bool, *, clamp: tuple[int, int] | None = None, upsample: bool = False,
             out: Tensor | None = None, dilation: Tensor | None = None) -> Tensor:
        w, s_w, bits = _int_weights(conv, name)
        cout = w.shape[0]
        a, b = _bn_affine(bn, cout)
        if getattr(conv, "bias", None) is not None:
            b = b + a * conv.bias.detach().double().cpu().numpy()
        eff = x.scale * s_w * a                      # float value of one accumulator LSB, per channel
        flip = eff < 0
        w[flip] = -w[flip]
        eff = np.abs(eff)
        if np.any(eff == 0):
            raise SpecError(f"{name}: output channel {int(np.argmin(eff))} has a zero scale (dead BN channel)")
        bias = np.round(b / eff).astype(np.int64)
        ms = [quantize_multiplier(float(e / out_scale), where=f"{name} channel {c}") for c, e in enumerate(eff)]
        mult, shift = [m for m, _ in ms], [s for _, s in ms]
        lo, hi = clamp if clamp is not None else (0 if not out_signed else act_range(8, True)[0], act_range(8, out_signed)[1])
        common = dict(bias=bias, mult=mult, shift=shift, weight_bits=bits, out_signed=out_signed,
                      clamp=(lo, hi), scale=out_scale, upsample=upsample, out=out)
        k, groups, stride = conv.kernel_size[0], conv.groups, conv.stride[0]
        if groups == 1:
            return self.b.conv(name, x, w.transpose(0, 2, 3, 1), stride=stride, pad=conv.padding[0], **common)
        if groups != conv.in_channels or groups != cout or k != 3:
            raise SpecError(f"{name}: grouped conv (groups={groups}, k={k}) is not an engine op; "
                            "only dense and depthwise 3x3")
        if dilation is not None:
            return self.b.deform(name, x, dilation, w[:, 0], **common)
        return self.b.dwconv(name, x, w[:, 0], stride=stride, **common)

    def conv_bn_act(self, name: str, x: Tensor, m: ConvBNAct, **kw) -> Tensor:
        conv, bn, act = m[0], m[1], m[2]
        s, signed = act_scale(act)
        return self.conv(name, x, conv, bn, s, signed, **kw)

    # -- network parts -------------------------------------------------------------------------
    def shuffle_unit(self, name: str, x: Tensor, u: ShuffleUnit) -> Tensor:
        pw2 = u.branch2[2]
        s_out, _ = act_scale(pw2[2])
        cout = pw2[0].out_channels * 2
        ho = (x.height - 1) // u.stride + 1
        wo = (x.width - 1) // u.stride + 1
        buf = self.b.buffer(f"{name}.cat", ho, wo, cout, signed=False, scale=s_out)
        left = self.b.view(buf, 0, cout // 2, group_channels=1, group_stride=2)
        right = self.b.view(buf, 1, cout // 2, group_channels=1, group_stride=2)
        if u.stride == 2:
            t = self.conv_bn_act(f"{name}.b1.dw", x, u.branch1[0])
            self.conv_bn_act(f"{name}.b1.pw", t, u.branch1[1], out=left)
            work = x
        else:
            keep = self.b.view(x, 0, x.channels // 2)
            if abs(keep.scale - s_out) > 1e-12 * s_out:
                raise SpecError(f"{name}: pass-through scale {keep.scale} differs from the unit's output "
                                f"scale {s_out}; both halves of a concat must share one quantiser")
            self.b.copy(f"{name}.pass", keep, out=left)
            work = self.b.view(x, x.channels // 2, x.channels // 2)
        t = self.conv_bn_act(f"{name}.b2.pw1", work, u.branch2[0])
        t = self.conv_bn_act(f"{name}.b2.dw", t, u.branch2[1])
        self.conv_bn_act(f"{name}.b2.pw2", t, u.branch2[2], out=right)
        return buf

    def deform_up(self, name: str, x: Tensor, blk: DeformUp) -> Tensor:
        d = blk.deform
        if d.variant != "square_depthwise" or d.sampling != "integer":
            raise SpecError(f"{name}: deformable variant {d.variant!r} with {d.sampling!r} sampling is not "
                            "an engine op; the engine runs square_depthwise with integer sampling")
        dil_scale, _ = act_scale(d.dilation_quant)
        if abs(dil_scale - 1.0) > 1e-12:
            raise SpecError(f"{name}: the dilation quantiser's scale is {dil_scale}, the engine needs exactly 1")
        if d.max_dilation > self.config.max_dilation:
            raise SpecError(f"{name}: trained with max dilation {d.max_dilation}, the engine supports "
                            f"{self.config.max_dilation}; retrain or generate an engine with max_dilation >= "
                            f"{d.max_dilation}")
        dil = self.conv(f"{name}.offset", x, d.offset_conv, None, 1.0, False, clamp=(0, d.max_dilation))
        s_mid, signed_mid = act_scale(d.dw_quant)
        t = self.conv(f"{name}.deform", x, d.dw_conv, None, s_mid, signed_mid, dilation=dil)
        s_out, signed = act_scale(blk.act)
        return self.conv(f"{name}.pw", t, d.pw_conv, blk.bn, s_out, signed, upsample=True)

    def head(self, name: str, x: Tensor, h: Head) -> Tensor:
        s1, sg1 = act_scale(h[1])
        t = self.conv(f"{name}.conv", x, h[0], None, s1, sg1)
        s2, sg2 = act_scale(h[3])
        return self.conv(f"{name}.out", t, h[2], None, s2, sg2)

    def run(self) -> Program:
        m = self.model
        s_in, signed = act_scale(m.input_quant)
        size = m.cfg.input_size
        x = self.b.input("image", size, size, 3, signed=signed, scale=s_in)
        x = self.conv_bn_act("stem", x, m.stem)
        if m.pool is not None:
            x = self.b.maxpool("stem.pool", x, kernel=3, stride=2, pad=1)
        for si, stage in enumerate(m.stages, start=2):
            for ui, unit in enumerate(stage):
                x = self.shuffle_unit(f"stage{si}.{ui}", x, unit)
        for i, blk in enumerate(m.decoder):
            x = self.deform_up(f"decoder{i}", x, blk)
        for head in ("hm", "wh", "reg"):
            self.b.output(head, self.head(f"head.{head}", x, getattr(m, head)))
        return self.b.build()


@torch.no_grad()
def export_program(model: CenterNet, config: EngineConfig | None = None) -> Program:
    return Exporter(model, config or EngineConfig()).run()
