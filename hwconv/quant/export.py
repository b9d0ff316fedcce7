"""Export a trained CenterNet (Brevitas fake-quant) to an engine program.

Per layer, `quantizers.layer_requant` gives the integers the model itself computes with in
eval/folded mode: BN folded into the weights before they are quantised (`fold_params`), the folded
bias rounded to an integer at scale s_in * s_w, and the requant multiplier s_in * s_w / s_out as
the contract's 24-bit (mult, shift). Export writes exactly those integers; the model's exact eval
path calls the same function, so the two cannot drift apart.
Scales come from the inputs, as in the model: every builder tensor carries the scale of the
quantiser that produced it (a float32 value, held exactly as a Python float), and each layer folds
with the scale of the tensor it reads; a concat's parts must carry one scale (`concat_scale`).
Channel shuffle needs no weight reordering: the builder stores each ShuffleNet unit's halves
interleaved, so every buffer holds the shuffled tensor in logical order (docs/architecture.md).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ..compiler.builder import ProgramBuilder, Tensor
from ..spec import EngineConfig, Program, SpecError
from .models import CenterNet, CoDeNetHead, ConvBNAct, DeformUp, Head, ShuffleUnit
from .quantizers import Requant, act_scale, concat_scale, layer_requant


class Exporter:
    def __init__(self, model: CenterNet, config: EngineConfig, *, reuse_memory: bool = True,
                 extra: dict | None = None):
        self.model = model.eval()
        self.config = config
        self.b = ProgramBuilder(config, extra={"model": model.cfg.name, "variant": model.cfg.variant,
                                               "head": model.cfg.head, **(extra or {})}, reuse_memory=reuse_memory)

    # -- one requantising conv ---------------------------------------------------------------
    @staticmethod
    def scale_tensor(x: Tensor, conv: nn.Module) -> torch.Tensor:
        """x's scale as the tensor the model folds with: the producing quantiser's float32 value
        (in the weights' type), so the integer bias is rounded from the same numbers as in training."""
        return torch.tensor(x.scale, dtype=conv.weight.dtype)

    def conv(self, name: str, x: Tensor, conv: nn.Module, bn: nn.BatchNorm2d | None, out_scale: float,
             out_signed: bool, *, clamp: tuple[int, int] | None = None, upsample: bool = False,
             out: Tensor | None = None, dilation: Tensor | None = None) -> Tensor:
        """One requantising conv of x, folded with x's scale."""
        _, rq = layer_requant(conv, bn, self.scale_tensor(x, conv), out_scale, out_signed, clamp=clamp, where=name)
        return self.emit(name, x, conv, rq, upsample=upsample, out=out, dilation=dilation)

    def emit(self, name: str, x: Tensor, conv: nn.Module, rq: Requant, *, upsample: bool = False,
             out: Tensor | None = None, dilation: Tensor | None = None) -> Tensor:
        """Write one requantising layer with the integers `rq` (`quantizers.requant_params`)."""
        w = rq.weight.cpu().numpy()            # (O, I/groups, k, k)
        common = dict(bias=rq.bias.cpu().numpy(), mult=rq.mult.tolist(), shift=rq.shift.tolist(),
                      weight_bits=rq.weight_bits, out_signed=rq.signed, clamp=rq.clamp, scale=rq.scale,
                      upsample=upsample, out=out)
        k, groups, stride = conv.kernel_size[0], conv.groups, conv.stride[0]
        cout = w.shape[0]
        if groups == 1:
            return self.b.conv(name, x, w.transpose(0, 2, 3, 1), stride=stride, pad=conv.padding[0], **common)
        if groups != conv.in_channels or groups != cout or k != 3:
            raise SpecError(f"{name}: grouped conv (groups={groups}, k={k}) is not an engine op; "
                            "only dense and depthwise 3x3")
        if dilation is not None:
            return self.b.deform(name, x, dilation, w[:, 0], **common)
        return self.b.dwconv(name, x, w[:, 0], stride=stride, **common)

    def conv_bn_act(self, name: str, x: Tensor, m: ConvBNAct, **kw) -> Tensor:
        s, signed = act_scale(m.act)
        return self.conv(name, x, m[0], m[1], s, signed, **kw)

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
            concat_scale(name, act_scale(u.branch1[1].act)[0], s_out)
            t = self.conv_bn_act(f"{name}.b1.dw", x, u.branch1[0])
            self.conv_bn_act(f"{name}.b1.pw", t, u.branch1[1], out=left)
            work = x
        else:
            keep = self.b.view(x, 0, x.channels // 2)
            concat_scale(name, keep.scale, s_out)
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
        # The model's own function for these two layers, fed the scale the model folds with.
        off, dw = d.engine_requants(self.scale_tensor(x, d.dw_conv), name)
        dil = self.emit(f"{name}.offset", x, d.offset_conv, off)
        t = self.emit(f"{name}.deform", x, d.dw_conv, dw, dilation=dil)
        s_out, signed = act_scale(blk.act)
        return self.conv(f"{name}.pw", t, d.pw_conv, blk.bn, s_out, signed, upsample=True)

    def head(self, name: str, x: Tensor, h: Head | CoDeNetHead) -> Tensor:
        if isinstance(h, CoDeNetHead):  # 1x1 + BN + ReLU, depthwise 3x3 + BN + ReLU, 1x1 with bias
            t = self.conv_bn_act(f"{name}.pw", x, h[0])
            t = self.conv_bn_act(f"{name}.dw", t, h[1])
        else:  # CenterNet's plain head: 3x3 conv (bias) + ReLU
            s1, sg1 = act_scale(h[1])
            t = self.conv(f"{name}.conv", x, h[0].conv, None, s1, sg1)
        s2, sg2 = act_scale(h[3])
        return self.conv(f"{name}.out", t, h[2].conv, None, s2, sg2)

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
        if m.layer4 is not None:
            x = self.conv_bn_act("layer4", x, m.layer4)
        for i, blk in enumerate(m.decoder):
            x = self.deform_up(f"decoder{i}", x, blk)
        for head in ("hm", "wh", "reg"):
            self.b.output(head, self.head(f"head.{head}", x, getattr(m, head)))
        return self.b.build()


@torch.no_grad()
def export_program(model: CenterNet, config: EngineConfig | None = None, *, reuse_memory: bool = True,
                   extra: dict | None = None) -> Program:
    """The engine program of `model` (eval mode). reuse_memory=False gives every tensor its own
    arena bytes (every layer's output survives, for layer-by-layer comparisons); `extra` goes
    into the program's metadata."""
    return Exporter(model, config or EngineConfig(), reuse_memory=reuse_memory, extra=extra).run()
