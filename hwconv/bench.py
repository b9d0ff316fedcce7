"""Golden-model benchmark: how fast the integer reference runs one frame of a detector config
(the PyTorch detector lowered by the exporter, random weights: `compiler.synthetic`)."""

from __future__ import annotations

import statistics
import time
from collections import defaultdict

import numpy as np

from .compiler.synthetic import codenet_program, detector_config
from .golden.engine import execute
from .spec.memory import write_tensor
from .spec.config import EngineConfig


def bench_golden(config: EngineConfig, model: str = "a", repeat: int = 5, seed: int = 0) -> dict:
    """Time `repeat` golden runs of detector config `model` lowered with random weights; returns
    figures (seconds, GMAC/s). build_s is the lowering (model build, export, calibration)."""
    if not 1 <= repeat <= 1000:
        raise ValueError(f"repeat {repeat}: expected 1..1000 runs")
    t0 = time.perf_counter()
    prog, macs = codenet_program(config, model, seed=seed)
    build_s = time.perf_counter() - t0
    size = detector_config(model).input_size
    image = np.random.default_rng(seed + 7).integers(0, 256, size=(size, size, 3))
    image_bytes, per_op = prog.device_image(), defaultdict(float)
    runs = []
    for _ in range(repeat):
        arena = np.zeros(prog.arena_bytes, dtype=np.uint8)
        write_tensor(arena, prog.tensor("image").ref, image)
        t = time.perf_counter()
        res = execute(config, image_bytes, prog.params, arena)
        runs.append(time.perf_counter() - t)
        res.raise_for_error()
        for d, s in zip(prog.layers, res.layer_seconds):
            per_op[d.opcode.name] += s / repeat
    median = statistics.median(runs)
    return {
        "model": model, "input_size": size, "layers": len(prog.layers), "gmac": macs / 1e9,
        "weight_bytes": len(prog.params), "arena_bytes": prog.arena_bytes,
        "build_s": build_s, "frame_s_median": median, "frame_s_min": min(runs), "repeat": repeat,
        "gmac_per_s": macs / 1e9 / median, "seconds_by_op": dict(sorted(per_op.items(), key=lambda kv: -kv[1])),
    }
