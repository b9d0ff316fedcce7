"""Model statistics, each beside CoDeNet's published figure: true MACs, thop-rule MACs and size.

- True MACs: every multiply-accumulate the network does, per layer: dense and depthwise convs,
  the offset predictors and the deformable depthwise convs (9 per output element).
- CoDeNet's table counted with the thop profiler in eval mode. Its rules, reproduced here (no
  thop dependency): a conv counts out_elements x (in_channels / groups x k x k), plus 1 per
  output element when it has a bias; BatchNorm 2 per element; the deformable conv (a custom
  module thop has no rule for), ReLU, pooling and upsampling 0. The offset predictor is an
  ordinary nn.Conv2d, so it counts. With CoDeNet's layer list this gives 0.2855 / 0.294 / 1.142 /
  3.546 / 3.580 G for a-e (published 0.29, 0.29, 1.14, 3.54, 3.58).
- Size: CoDeNet's "MB" is every parameter (conv weights and biases, BN's weight and bias) x 4 bits
  / 2^20 (`mbytes_4bit`); `mbytes` counts the weights at their deployed widths (the stem and the
  offset predictors 8-bit) and the rest at 4 bits.

Layers come from forward hooks on one eval-mode pass (unfolded, so every conv's forward runs),
so the list is the PyTorch model's, independent of the exporter (tests compare the two).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from .deform import QuantDeformConv
from .models import CenterNet, ConvBNAct, DeformUp, unfolded

SECTIONS = ("stem", "stages", "layer4", "decoder", "heads")
CODENET_BITS = 4  # the bit width CoDeNet's "MB" assumes for every parameter


@dataclass(frozen=True)
class LayerStat:
    name: str          # module path in the detector
    section: str       # one of SECTIONS
    kind: str          # conv, dwconv, offset, deform, maxpool
    in_shape: tuple[int, int, int]   # (C, H, W)
    out_shape: tuple[int, int, int]  # (C, H, W), before any upsampling
    kernel: int
    stride: int
    macs: int          # true multiply-accumulates
    thop_macs: int     # as thop counts in eval mode (module docstring)


def section_of(name: str) -> str:
    top = name.split(".", 1)[0]
    if top in ("stem", "pool", "input_quant"):
        return "stem"
    if top in ("hm", "wh", "reg"):
        return "heads"
    if top in SECTIONS:
        return top
    raise ValueError(f"module {name!r} belongs to no section of {', '.join(SECTIONS)}")


def _weight_bits(m: nn.Module, default: int = CODENET_BITS) -> int:
    try:
        return int(m.quant_weight().bit_width)
    except (AttributeError, RuntimeError, TypeError):
        return default


def _bn_after(model: nn.Module) -> dict[int, nn.BatchNorm2d]:
    """id(conv) -> the BatchNorm that follows it."""
    out = {}
    for m in model.modules():
        if isinstance(m, ConvBNAct):
            out[id(m[0])] = m[1]
        elif isinstance(m, DeformUp):
            last = m.deform.pw_conv if m.deform.pw_conv is not None else m.deform.conv
            out[id(last)] = m.bn
    return out


@torch.no_grad()
def layer_stats(model: CenterNet, input_size: int | None = None) -> list[LayerStat]:
    """Every MAC-carrying layer (and the maxpool) in forward order, from hooks on one pass."""
    size = input_size or model.cfg.input_size
    names = {id(m): n for n, m in model.named_modules()}
    bn_after = _bn_after(model)
    deform_internal = set()  # convs whose forward never runs: the deformable conv's own weights
    for m in model.modules():
        if isinstance(m, QuantDeformConv):
            deform_internal.update(id(c) for c in (m.dw_conv, m.conv) if c is not None)
    rows: list[LayerStat] = []

    def shape(t):
        return tuple(int(v) for v in t.shape[1:])

    def conv_hook(mod, args, out):
        name = names[id(mod)]
        cin = mod.in_channels
        k = mod.kernel_size[0] * mod.kernel_size[1]
        n_out = math.prod(out.shape[1:])
        macs = n_out * (cin // mod.groups) * k
        thop = macs + (n_out if mod.bias is not None else 0) + (2 * n_out if id(mod) in bn_after else 0)
        kind = "offset" if name.endswith("offset_conv") else "dwconv" if mod.groups > 1 else "conv"
        rows.append(LayerStat(name, section_of(name), kind, shape(args[0]), shape(out), mod.kernel_size[0],
                              mod.stride[0], macs, thop))

    def deform_hook(deform: QuantDeformConv):
        def hook(mod, args, out):  # dw_quant's input: the depthwise output; else the layer's output
            name = names[id(deform)]
            c, h, w = shape(args[0]) if deform.depthwise else shape(out)
            cin = deform.in_channels
            macs = c * h * w * 9 * (1 if deform.depthwise else cin)
            rows.append(LayerStat(name, section_of(name), "deform", (cin, h, w), (c, h, w), 3, 1, macs, 0))
        return hook

    def pool_hook(mod, args, out):
        name = names[id(mod)]
        rows.append(LayerStat(name, section_of(name), "maxpool", shape(args[0]), shape(out), mod.kernel_size,
                              mod.stride, 0, 0))

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and id(m) not in deform_internal:
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, QuantDeformConv):
            handles.append((m.dw_quant if m.depthwise else m).register_forward_hook(deform_hook(m)))
        elif isinstance(m, nn.MaxPool2d):
            handles.append(m.register_forward_hook(pool_hook))
    was_training = model.training
    model.eval()
    try:
        with unfolded(model):  # the folded path bypasses the convs' forward hooks
            model(torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return rows


def parameter_bits(model: CenterNet) -> tuple[int, int, dict[str, int]]:
    """(parameter count, bits at the deployed widths, parameters per section): conv weights at
    their quantiser's width, conv biases and BN's weight and bias at 4 bits (CoDeNet's count).
    Activation quantisers' learned scales are not network parameters and are not counted."""
    count, bits, per_section = 0, 0, dict.fromkeys(SECTIONS, 0)
    for name, m in model.named_modules():
        n = 0
        if isinstance(m, nn.Conv2d):
            n_w = m.weight.numel()
            n_b = m.bias.numel() if m.bias is not None else 0
            bits += n_w * _weight_bits(m) + n_b * CODENET_BITS
            n = n_w + n_b
        elif isinstance(m, nn.BatchNorm2d):
            n = 2 * m.num_features if m.affine else 0
            bits += n * CODENET_BITS
        if n:
            count += n
            per_section[section_of(name)] += n
    return count, bits, per_section


def model_stats(model: CenterNet, input_size: int | None = None) -> dict:
    """The figures `hwconv info` prints (and its --json writes)."""
    cfg = model.cfg
    size = input_size or cfg.input_size
    rows = layer_stats(model, size)
    count, bits, per_section_params = parameter_bits(model)
    sections = {s: {"layers": 0, "macs": 0, "thop_macs": 0, "params": per_section_params[s]} for s in SECTIONS}
    for r in rows:
        sec = sections[r.section]
        sec["layers"] += r.kind != "maxpool"
        sec["macs"] += r.macs
        sec["thop_macs"] += r.thop_macs
    macs = sum(r.macs for r in rows)
    thop = sum(r.thop_macs for r in rows)
    conv_weight_bits = sum(m.weight.numel() * _weight_bits(m) for m in model.modules() if isinstance(m, nn.Conv2d))
    return {
        "config": cfg.name, "input_size": size, "head": cfg.head, "layer4": cfg.layer4,
        "widths": list(cfg.widths), "decoder": [cfg.layer4 or cfg.widths[-1], *cfg.decoder],
        "true_gmac": macs / 1e9, "thop_gmac": thop / 1e9,
        # Kept for the quant benchmarks: MACs of the nn.Conv2d layers only (no deformable taps),
        # conv weights at their widths in 10^6 bytes (bench_ablation adds the taps itself).
        "gmac": sum(r.macs for r in rows if r.kind != "deform") / 1e9, "weight_mbytes": conv_weight_bits / 8 / 1e6,
        "params": count, "mbytes": bits / 8 / 2 ** 20, "mbytes_4bit": count * CODENET_BITS / 8 / 2 ** 20,
        "sections": sections,
        "layers": [asdict(r) for r in rows],
        "published": dict(cfg.published) if size == cfg.input_size else {},
    }


def _vs(ours: float, published: float | None) -> str:
    if published is None:
        return ""
    return f"   CoDeNet published {published:g} ({100 * (ours - published) / published:+.1f} %)"


def format_stats(st: dict, layers: bool = False) -> str:
    pub = st["published"]
    size = st["input_size"]
    out = [f"detector config {st['config']} at {size}x{size}: stages {st['widths'][1:]}, layer4 "
           f"{st['layer4'] or 'none'}, decoder {' -> '.join(map(str, st['decoder']))}, {st['head']} heads; "
           "W4A8 (stem and offset predictors 8-bit weights)",
           f"  MACs, thop rule:  {st['thop_gmac']:.4f} G{_vs(st['thop_gmac'], pub.get('gmac'))}",
           f"  size:             {st['mbytes']:.3f} MB at the deployed widths, {st['mbytes_4bit']:.3f} MB as "
           f"CoDeNet counts (all {st['params']:,} params x 4 bits){_vs(st['mbytes_4bit'], pub.get('mbytes'))}",
           f"  MACs, true:       {st['true_gmac']:.4f} G (deformable depthwise included; CoDeNet publishes none)"]
    if "fps" in pub:
        out.append(f"  CoDeNet on Ultra96: {pub['fps']} fps, VOC AP50 {pub['ap50']}")
    out.append(f"  {'section':<8} {'layers':>6} {'true MMAC':>10} {'thop MMAC':>10} {'params':>10}")
    for name, s in st["sections"].items():
        if s["layers"] or s["params"]:
            out.append(f"  {name:<8} {s['layers']:>6} {s['macs'] / 1e6:>10.2f} {s['thop_macs'] / 1e6:>10.2f} "
                       f"{s['params']:>10,}")
    if layers:
        out.append(f"  {'layer':<34} {'kind':<7} {'in CxHxW':>14} {'out CxHxW':>14} {'k/s':>4} "
                   f"{'true MMAC':>10} {'thop MMAC':>10}")
        for r in st["layers"]:
            dims = lambda s: "x".join(map(str, s))  # noqa: E731
            out.append(f"  {r['name']:<34} {r['kind']:<7} {dims(r['in_shape']):>14} {dims(r['out_shape']):>14} "
                       f"{r['kernel']}/{r['stride']:<2} {r['macs'] / 1e6:>10.3f} {r['thop_macs'] / 1e6:>10.3f}")
    return "\n".join(out)
