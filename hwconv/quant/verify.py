"""Integer path vs fake-quant path: run the exported program on the golden model and the Brevitas
model on the same images, and compare the output integers element by element.

In eval mode the model requantises exactly as the engine does (models.py: exact integer
accumulators, the exported integer bias and (mult, shift), round half up), so the two agree on every
element; a difference means the model and the exporter or the golden model have drifted apart.
The fake-quant model can also be evaluated in float64 (`float64_copy`, which keeps the original's
integers), and under `models.float_requant(model)` as Brevitas computes it in float: there, elements
differ at requantisation near-ties (float32 noise, and the engine's 24-bit multiplier deciding a
value within ~1e-7 of a .5 boundary against the exact scale ratio), and one flipped element
spreads to much of that image's outputs. Figures: docs/results/integer_vs_fakequant.md.

The pieces are separate so a caller that needs the golden outputs for something else (decoding
detections, bench_integer) runs the golden model once per image: `golden_integers`,
`fake_quant_integers`, `dequantise`, and `ElementStats` to accumulate the comparison.
"""

from __future__ import annotations

import copy
from typing import Mapping

import numpy as np
import torch

from ..golden import run_program
from ..spec import Program
from .models import derive_integers_from


def float64_copy(model: torch.nn.Module) -> torch.nn.Module:
    """An eval-mode float64 copy of a Brevitas model (the original is untouched). Feed it
    `images.double()`. Where it runs exact (eval), it takes its integer weights, biases, (mult,
    shift) and scales from `model` (`models.derive_integers_from`): derived again in float64 they
    could differ in a last bit from what `model` exports. Under `models.float_requant(model)` it is the
    float fake-quant network without float32 rounding noise."""
    return derive_integers_from(copy.deepcopy(model).double().eval(), model)


def quantize_image(image: torch.Tensor, program: Program) -> np.ndarray:
    """(3, H, W) float image in [0, 1] -> the program's integer input (H, W, 3), as the host does it."""
    t = program.tensor("image")
    lo, hi = (-128, 127) if t.signed else (0, 255)
    x = image.detach().permute(1, 2, 0).double().numpy() / t.scale
    return np.clip(np.floor(x + 0.5), lo, hi).astype(np.int64)  # the contract's half-up rounding


def golden_integers(program: Program, image: torch.Tensor) -> dict[str, np.ndarray]:
    """The program's output integers (H, W, C) int64 for one (3, H, W) float image, by the golden model."""
    return {k: v.astype(np.int64) for k, v in run_program(program, {"image": quantize_image(image, program)}).items()}


def fake_quant_integers(outputs: Mapping[str, torch.Tensor], program: Program) -> dict[str, np.ndarray]:
    """One image's fake-quant outputs {name: (C, H, W) float} as integers (H, W, C) at the program's scales."""
    return {name: np.round(y.detach().permute(1, 2, 0).double().numpy() / program.tensor(name).scale).astype(np.int64)
            for name, y in outputs.items()}


def dequantise(integers: Mapping[str, np.ndarray], program: Program) -> dict[str, torch.Tensor]:
    """Output integers (H, W, C) -> float32 tensors (C, H, W) at the scales the program metadata carries.

    In float32, as Brevitas dequantises: where the integers agree, the values equal the fake-quant ones."""
    return {name: torch.from_numpy(np.ascontiguousarray(v.transpose(2, 0, 1))).float()
            * torch.tensor(program.tensor(name).scale, dtype=torch.float32)
            for name, v in integers.items()}


class ElementStats:
    """Identical-element counts and |difference| in LSBs per output, accumulated image by image."""

    def __init__(self) -> None:
        self.per_output: dict[str, dict[str, int]] = {}

    def add(self, reference: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray]) -> None:
        for name, ref in reference.items():
            if got[name].shape != ref.shape:
                raise ValueError(f"output {name!r}: shapes {ref.shape} and {got[name].shape} differ")
            diff = np.abs(ref - got[name])
            s = self.per_output.setdefault(name, {"equal": 0, "total": 0, "max_diff": 0, "diff_1": 0, "diff_gt1": 0})
            s["equal"] += int((diff == 0).sum())
            s["total"] += int(diff.size)
            s["max_diff"] = max(s["max_diff"], int(diff.max()) if diff.size else 0)
            s["diff_1"] += int((diff == 1).sum())
            s["diff_gt1"] += int((diff > 1).sum())

    def summary(self) -> dict:
        """{"identical": fraction over all outputs, "outputs": {name: counts + "identical"}}."""
        outputs = {name: {**s, "identical": s["equal"] / s["total"] if s["total"] else 1.0}
                   for name, s in self.per_output.items()}
        equal = sum(s["equal"] for s in outputs.values())
        total = sum(s["total"] for s in outputs.values())
        return {"identical": equal / total if total else 1.0, "outputs": outputs}


@torch.no_grad()
def compare_outputs(model: torch.nn.Module, program: Program, images: torch.Tensor, *,
                    float64: bool = True) -> dict:
    """Fraction of identical output integers and the largest difference (in LSBs) per output, with
    the fake-quant model evaluated in float64 (default; see the module docstring) or as it is."""
    model.eval()
    fq = float64_copy(model)(images.double()) if float64 else model(images)
    stats = ElementStats()
    for i in range(images.shape[0]):
        stats.add(fake_quant_integers({k: v[i] for k, v in fq.items()}, program), golden_integers(program, images[i]))
    return stats.summary()
