"""Integer path vs fake-quant path: run the exported program on the golden model and the Brevitas
model on the same images, and compare the output integers element by element."""

from __future__ import annotations

import numpy as np
import torch

from ..golden import run_program
from ..spec import Program


def quantize_image(image: torch.Tensor, program: Program) -> np.ndarray:
    """(3, H, W) float image in [0, 1] -> the program's integer input (H, W, 3), as the host does it."""
    t = program.tensor("image")
    lo, hi = (-128, 127) if t.signed else (0, 255)
    x = image.detach().permute(1, 2, 0).double().numpy() / t.scale
    return np.clip(np.floor(x + 0.5), lo, hi).astype(np.int64)  # the contract's half-up rounding


@torch.no_grad()
def compare_outputs(model: torch.nn.Module, program: Program, images: torch.Tensor) -> dict:
    """Fraction of identical output integers and the largest difference (in LSBs) per output."""
    model.eval()
    fq = model(images)
    stats = {name: {"equal": 0, "total": 0, "max_diff": 0} for name in fq}
    for i in range(images.shape[0]):
        golden = run_program(program, {"image": quantize_image(images[i], program)})
        for name, y in fq.items():
            ref = np.round(y[i].permute(1, 2, 0).double().numpy() / program.tensor(name).scale).astype(np.int64)
            got = golden[name].astype(np.int64)
            s = stats[name]
            s["equal"] += int((ref == got).sum())
            s["total"] += ref.size
            s["max_diff"] = max(s["max_diff"], int(np.abs(ref - got).max()))
    for s in stats.values():
        s["identical"] = s["equal"] / s["total"]
    equal = sum(s["equal"] for s in stats.values())
    total = sum(s["total"] for s in stats.values())
    return {"identical": equal / total, "outputs": stats}
