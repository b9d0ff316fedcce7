"""`hwconv demo`: the main job on a built-in default, end to end as far as the project reaches.

Today: build a CoDeNet-shaped program (random integer weights, calibrated requantisation), write
it in the program format, read it back, run it on the golden model, and write a FINN-style output
folder with the program, the verification vectors and reports.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np

from .compiler.synthetic import CODENET_SHAPES, codenet_program
from .fileio import atomic_write_bytes, atomic_write_text
from .golden import run_program
from .inspect import format_program, program_table
from .spec import EngineConfig, Program


def _test_image(size: int, seed: int = 3) -> np.ndarray:
    """A deterministic test card: gradients, a few bright squares and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    img = np.stack([xx * 255 // size, yy * 255 // size, (xx + yy) * 127 // size], axis=-1)
    for _ in range(6):
        y0, x0, s = rng.integers(0, size - size // 6, 2).tolist() + [size // 8]
        img[y0:y0 + s, x0:x0 + s] = rng.integers(0, 256, 3)
    return np.clip(img + rng.integers(-10, 11, img.shape), 0, 255)


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def run_demo(out: Path, config: EngineConfig, model: str = "a") -> int:
    shape = CODENET_SHAPES[model]
    print(f"hwconv demo: CoDeNet config-{model}-shaped network, {shape.input_size}x{shape.input_size} input, "
          f"engine {config.stem}")
    t = time.perf_counter()
    prog, macs = codenet_program(config, model)
    print(f"  built program: {len(prog.layers)} layers, {macs / 1e9:.3f} GMAC, {len(prog.params)} B params, "
          f"{prog.arena_bytes} B arena ({time.perf_counter() - t:.2f} s; random weights, calibrated requant)")

    program_path = out / "program" / f"codenet_{model}_{config.name}.hwc"
    prog.save(program_path)
    config.save(out / "program" / "engine.toml")
    loaded = Program.load(program_path, expect=config)  # what every backend will do
    print(f"  wrote {program_path} ({program_path.stat().st_size} bytes) and read it back")

    image = _test_image(shape.input_size)
    t = time.perf_counter()
    outputs = run_program(loaded, {"image": image})
    golden_s = time.perf_counter() - t
    print(f"  golden model: {golden_s * 1e3:.1f} ms for the frame")
    for name, y in outputs.items():
        print(f"    output {name}: {y.shape} {y.dtype}, range [{y.min()}, {y.max()}]")

    _save_npz(out / "verification" / "input.npz", {"image": image.astype(np.uint8)})
    _save_npz(out / "verification" / "golden_outputs.npz", outputs)
    report = {"model": model, "engine": config.to_dict(), "engine_stem": config.stem,
              "config_hash": f"0x{config.config_hash:08x}", "layers": len(prog.layers), "gmac": macs / 1e9,
              "params_bytes": len(prog.params), "arena_bytes": prog.arena_bytes, "golden_frame_s": golden_s,
              "outputs": {k: list(v.shape) for k, v in outputs.items()}, "layer_table": program_table(prog)}
    atomic_write_text(out / "reports" / "demo.json", json.dumps(report, indent=2, default=str) + "\n")
    atomic_write_text(out / "reports" / "program.txt", format_program(loaded, str(program_path)) + "\n")
    print(f"  reports in {out / 'reports'}, verification vectors in {out / 'verification'}")
    print("  next (later issues): quantize a trained detector, generate RTL, simulate it against these vectors")
    return 0
