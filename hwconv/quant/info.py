"""Model statistics: MACs and weight bytes at the deployed bit widths, beside CoDeNet's figures."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .models import CenterNet, unfolded


def _weight_bits(m: nn.Module, default: int) -> int:
    try:
        return int(m.quant_weight().bit_width)
    except (AttributeError, RuntimeError, TypeError):
        return default


@torch.no_grad()
def model_stats(model: CenterNet, input_size: int | None = None) -> dict:
    """MACs of every conv (hooks on one forward pass) and weight storage at each conv's bit width."""
    size = input_size or model.cfg.input_size
    macs, weight_bits_total, per_layer = 0, 0, []

    def hook(mod: nn.Conv2d, _inp, out):
        nonlocal macs
        k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
        n = math.prod(out.shape[1:]) * k  # batch of one
        macs += n
        per_layer.append((mod._stats_name, n))

    handles = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            mod._stats_name = name
            handles.append(mod.register_forward_hook(hook))
            weight_bits_total += mod.weight.numel() * _weight_bits(mod, 4)
    was_training = model.training
    model.eval()
    try:
        with unfolded():  # the folded path bypasses the convs' forward hooks
            model(torch.rand(1, 3, size, size))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return {"config": model.cfg.name, "input_size": size, "gmac": macs / 1e9,
            "weight_mbytes": weight_bits_total / 8 / 1e6, "per_layer_macs": per_layer,
            "published": dict(model.cfg.published)}
