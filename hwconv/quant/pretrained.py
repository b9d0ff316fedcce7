"""`hwconv quantize --init`: start training from a float hwconv checkpoint or from a ShuffleNetV2
ImageNet state dict in torchvision's key format (the backbone; CoDeNet starts from ImageNet too).

Keys are mapped by name (`torchvision_key`), each tensor is copied where the model has a tensor of
that name and shape, and the report lists what was loaded and, with the reason, what was not.
Files are read with torch.load(weights_only=True): tensors and plain containers only, no pickled
objects.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .checkpoint import FORMAT, read_checkpoint

# torchvision InvertedResidual -> hwconv ShuffleUnit (ConvBNAct = Sequential(conv, bn, act)).
_BRANCH = {"branch1.0": "branch1.0.0", "branch1.1": "branch1.0.1", "branch1.2": "branch1.1.0",
           "branch1.3": "branch1.1.1", "branch2.0": "branch2.0.0", "branch2.1": "branch2.0.1",
           "branch2.3": "branch2.1.0", "branch2.4": "branch2.1.1", "branch2.5": "branch2.2.0",
           "branch2.6": "branch2.2.1"}
_UNIT = re.compile(r"stage([234])\.(\d+)\.(branch[12]\.\d+)\.(\w+)$")
_SEQ = re.compile(r"(conv1|conv5)\.([01])\.(\w+)$")


class InitError(ValueError):
    """An --init file is not a usable state dict; the message names the file."""


def torchvision_key(key: str) -> str | None:
    """The hwconv name of a torchvision ShuffleNetV2 tensor, or None (the classifier, unknown)."""
    m = _UNIT.match(key)
    if m and m.group(3) in _BRANCH:
        return f"stages.{int(m.group(1)) - 2}.{m.group(2)}.{_BRANCH[m.group(3)]}.{m.group(4)}"
    m = _SEQ.match(key)
    if m:
        return f"{'stem' if m.group(1) == 'conv1' else 'layer4'}.{m.group(2)}.{m.group(3)}"
    return None


def read_state_dict(path: str | Path) -> tuple[str, dict[str, torch.Tensor]]:
    """(kind, tensors) of an --init file: "hwconv checkpoint" or "torchvision ShuffleNetV2"."""
    path = Path(path)
    if not path.is_file():
        raise InitError(f"--init {path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is one user error
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise InitError(f"--init {path}: not a state dict torch.load(weights_only=True) can read ({first})") from None
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        ckpt = read_checkpoint(path)
        if ckpt.get("quant_mode") != "float":
            raise InitError(f"--init {path}: a {ckpt.get('quant_mode')!r} checkpoint; --init takes a float one "
                            "(continue QAT with --resume)")
        return "hwconv checkpoint", dict(ckpt["model"])
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                       for k, v in obj.items()):
        raise InitError(f"--init {path}: not a state dict (a mapping of names to tensors)")
    return "torchvision ShuffleNetV2", obj


def load_init(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Copy what fits of the --init file into `model`; returns {"kind", "loaded": [model names],
    "not_loaded": {file name: reason}, "model_tensors": count}."""
    kind, tensors = read_state_dict(path)
    target = model.state_dict()
    loaded, not_loaded = [], {}
    with torch.no_grad():
        for key, value in tensors.items():
            name = key if kind == "hwconv checkpoint" else torchvision_key(key)
            if name is None:
                not_loaded[key] = "no counterpart in the detector (classifier or unknown name)"
            elif name not in target:
                not_loaded[key] = f"the detector has no tensor {name}"
            elif tuple(value.shape) != tuple(target[name].shape):
                not_loaded[key] = f"shape {tuple(value.shape)}, the detector's {name} is {tuple(target[name].shape)}"
            elif value.is_floating_point() and not torch.isfinite(value).all():
                not_loaded[key] = "holds NaN or infinite values"
            else:
                target[name].copy_(value.to(target[name].dtype))
                loaded.append(name)
    if not loaded:
        raise InitError(f"--init {path}: none of its {len(tensors)} tensors fits the detector "
                        f"(first: {next(iter(not_loaded.items()))[0]}: {next(iter(not_loaded.values()))})")
    return {"kind": kind, "path": str(path), "loaded": loaded, "not_loaded": not_loaded,
            "model_tensors": len(target)}
