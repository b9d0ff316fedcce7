"""Benchmark programs: the PyTorch detector itself, lowered by `hwconv export`'s lowering.

`codenet_program` builds the detector of a registered config (`hwconv.quant.registry`) or of a
`BackboneShape`, with seeded random parameters, lowers it with `quant.export.Exporter` (the same
code `hwconv export` runs: interleaved concat for the ShuffleNet units, layers split where the
engine's buffers need it), then re-chooses every requantisation from the accumulators a random
calibration image produces (`_calibrate`), so activations keep a lively range through the whole
network (an untrained model's activation scales would leave most of it at zero). The layer list,
shapes and weights are the model's; only the requant (bias, mult, shift) records are calibrated.
"config a" is therefore one network in info, check, export, bench, demo and simulate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..golden.engine import accumulate, compute_layer, store_layer
from ..spec.memory import write_tensor
from ..spec.config import EngineConfig
from ..spec.isa import REQUANT_OPS
from ..spec.params import REQUANT_RECORD_BYTES, pack_requant, quantize_multiplier, unpack_requant
from ..spec.program import Program
from .cost import layer_macs

_TARGET_RMS = 40.0  # rms of every requantised pre-activation the calibration aims for


@dataclass(frozen=True)
class BackboneShape:
    """A CoDeNet-structured detector of any size (small ones for simulation tests); the fields are
    `DetectorConfig`'s. layer4=0 means twice the last stage width (CoDeNet: 464 -> 1024)."""

    input_size: int = 256
    stem_stride: int = 4            # 4: one stride-4 conv (config a); 2: stride-2 conv + maxpool
    widths: tuple[int, ...] = (24, 116, 232, 464)
    repeats: tuple[int, ...] = (3, 7, 3)   # basic units after each stage's stride-2 unit
    decoder: tuple[int, ...] = (256, 128, 64)
    head_conv: int = 64
    num_classes: int = 20
    layer4: int = 0
    head: str = "codenet"

    def to_config(self, name: str = "shape"):
        from ..quant.registry import DetectorConfig

        if self.stem_stride not in (2, 4):
            raise ValueError(f"BackboneShape: stem_stride {self.stem_stride}; expected 4 or 2 (+ maxpool)")
        return DetectorConfig(name, self.input_size, tuple(self.widths), "s4" if self.stem_stride == 4 else "s2pool",
                              tuple(self.repeats), tuple(self.decoder), self.head_conv, self.num_classes,
                              layer4=self.layer4 or 2 * self.widths[-1], head=self.head)


def detector_config(shape):
    """A registered config name, a BackboneShape or a DetectorConfig -> the DetectorConfig."""
    from ..quant.registry import get_config

    if isinstance(shape, str):
        return get_config(shape)
    if isinstance(shape, BackboneShape):
        return shape.to_config()
    return shape


def codenet_program(cfg: EngineConfig, shape="a", *, seed: int = 0, reuse_memory: bool = True,
                    calibrate: bool = True):
    """The detector `shape` (a registered name such as "a" or "tiny", a BackboneShape or a
    DetectorConfig) with seeded random parameters, lowered for engine `cfg` by the exporter and
    calibrated (module docstring); its dilations bounded by the engine's max_dilation where that
    is smaller than the config's. Returns (program, true MACs)."""
    import torch

    from ..quant.export import export_program
    from ..quant.models import build_detector

    det = detector_config(shape)
    if det.max_dilation > cfg.max_dilation:  # an engine with a shorter line buffer: dilations it can run
        det = det.with_(max_dilation=cfg.max_dilation)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_detector(det).eval()
    prog = export_program(model, cfg, reuse_memory=reuse_memory, extra={"source": "synthetic", "seed": seed})
    if calibrate:
        size = det.input_size
        image = np.random.default_rng(seed + 1).integers(0, 256, size=(size, size, 3))
        _calibrate(prog, {"image": image})
    return prog, sum(layer_macs(d) for d in prog.layers)


def _calibrate(prog: Program, inputs: dict[str, np.ndarray]) -> None:
    """Re-choose every requant multiplier from the accumulators a calibration input produces.

    Wide-range layers aim for an rms of _TARGET_RMS per channel, their bias (the model's: BN
    shifts, the heatmap's prior) bounded by the accumulators' spread so it cannot swamp them;
    narrow clamps (the dilation predictor) get a bias and multiplier that spread values over the
    whole clamp range.
    """
    cfg = prog.config
    params = bytearray(prog.params)
    arena = np.zeros(prog.arena_bytes, dtype=np.uint8)
    for name, value in inputs.items():
        write_tensor(arena, prog.tensor(name).ref, value)
    for d in prog.layers:
        if d.opcode in REQUANT_OPS:
            acc = accumulate(d, cfg, arena, bytes(params)).reshape(-1, d.out.channels).astype(np.float64)
            lo, hi = d.clamp_lo, d.clamp_hi
            start = d.params_offset
            bias, _, _ = unpack_requant(params[start:start + d.out.channels * REQUANT_RECORD_BYTES], d.out.channels)
            if hi - lo < 64:
                real = (hi - lo) / 4 / np.maximum(acc.std(axis=0), 1.0)
                bias = np.round((lo + hi) / 2 / real - acc.mean(axis=0))
            else:
                spread = np.maximum(acc.std(axis=0), 1.0)
                bias = np.clip(bias, -spread, spread).round()
                real = _TARGET_RMS / np.maximum(np.sqrt(np.mean((acc + bias) ** 2, axis=0)), 1.0)
            ms = [quantize_multiplier(float(r)) for r in real]
            rec = pack_requant(bias, [m for m, _ in ms], [sh for _, sh in ms])
            params[start:start + len(rec)] = rec
        store_layer(d, arena, compute_layer(d, cfg, arena, bytes(params)))
    prog.params = bytes(params)
    prog.validate()
