"""`hwconv demo`: the main job on a built-in default, end to end as far as the project reaches.

Build the program of a detector config (the PyTorch detector with random weights, lowered by the
exporter, requantisation calibrated: `compiler.synthetic`), write it in
the program format, read it back, run it on the golden model, generate the engine's Verilog for
Ultra96-V2 (with Verilator lint), run the program on that RTL in simulation and check it bit for
bit against the golden model, and write a FINN-style output folder: program/, rtl/, reports/
(lint, demo.json, program.txt, simulation.json, cycles_per_layer.png), verification/.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np

from .compiler.synthetic import codenet_program, detector_config
from .fileio import atomic_write_bytes, atomic_write_text
from .golden import run_program
from .describe import format_program, program_table
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
    shape = detector_config(model)
    print(f"hwconv demo: detector config {model} (random weights), {shape.input_size}x{shape.input_size} input, "
          f"engine {config.stem}")
    t = time.perf_counter()
    prog, macs = codenet_program(config, model)
    print(f"  built program: {len(prog.layers)} layers, {macs / 1e9:.3f} GMAC, {len(prog.params)} B params, "
          f"{prog.arena_bytes} B arena ({time.perf_counter() - t:.2f} s; random weights lowered by the exporter, calibrated requant)")

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

    rtl = _generate(out, config)   # replaces rtl/ and reports/: before anything else goes there
    sim, sim_ok = _simulate(out, loaded, image, model) if rtl else (None, True)
    trained = _trained_vs_deployed(config)

    _save_npz(out / "verification" / "input.npz", {"image": image.astype(np.uint8)})
    _save_npz(out / "verification" / "golden_outputs.npz", outputs)
    report = {"model": model, "engine": config.to_dict(), "engine_stem": config.stem,
              "config_hash": f"0x{config.config_hash:08x}", "layers": len(prog.layers), "gmac": macs / 1e9,
              "params_bytes": len(prog.params), "arena_bytes": prog.arena_bytes, "golden_frame_s": golden_s,
              "outputs": {k: list(v.shape) for k, v in outputs.items()}, "layer_table": program_table(prog)}
    atomic_write_text(out / "reports" / "demo.json", json.dumps(report, indent=2, default=str) + "\n")
    atomic_write_text(out / "reports" / "program.txt", format_program(loaded, str(program_path)) + "\n")
    atomic_write_text(out / "reports" / "trained_vs_deployed.json", json.dumps(trained, indent=2) + "\n")
    if sim is not None:
        atomic_write_text(out / "reports" / "simulation.json", json.dumps(sim.data, indent=2) + "\n")
        from .sim.simulate import _plot
        atomic_write_bytes(out / "reports" / "cycles_per_layer.png", _plot(sim.data))
    print(f"  reports in {out / 'reports'}, verification vectors in {out / 'verification'}")
    print("  next: train and export a real detector (README, 'Quantize a detector'), then build and deploy")
    return 0 if sim_ok and trained["equal_within_0.005"] else 1


def _trained_vs_deployed(config: EngineConfig) -> dict:
    """What is trained is what the board measures (issue 16), on the built-in default: a tiny
    detector trained for seconds through the quantize pipeline on a VOC folder of 500x375 images
    (not the model's input size), exported, then scored by validate's code on the golden backend.
    The two W4A8 AP50 figures must agree within 0.005 (they are computed by one preprocessing,
    one decoder and one scorer). Works in a temporary folder; only the report stays."""
    import tempfile

    from .quant.data import load_dataset
    from .quant.data.voc_writer import write_voc
    from .quant.pipeline import export, quantize, trained_vs_deployed

    t = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hwconv-demo-") as tmp:
        root = Path(tmp) / "voc"
        for split, n in (("train", 16), ("val", 8)):
            digits = load_dataset("synthetic", split, image_size=256, num_images=n, num_classes=1)
            write_voc(digits, root, split, size=(500, 375), class_names=["digit"])
        q = quantize("tiny", Path(tmp) / "quantize", data="voc", data_root=str(root), epochs=1,
                     qat_epochs=1, batch_size=8, progress=False)
        e = export(q["checkpoint"], Path(tmp) / "export", config, progress=False)
        r = trained_vs_deployed(Path(tmp) / "quantize" / "quantize.json", e["program"])
    verdict = "equal" if r["equal_within_0.005"] else "DIFFERENT"
    print(f"  trained vs deployed (tiny, seconds of training on {r['images']} VOC val images at 500x375, "
          f"input {r['input_size']}): quantize AP50 {r['quantize_AP50']:.4f}, validate (golden) AP50 "
          f"{r['validate_AP50']:.4f}: {verdict} ({time.perf_counter() - t:.0f} s)")
    if not r["quantize_AP50"]:
        print("    (seconds of training detect little, so this equality is weak; tests/test_quantize_cli.py "
              "also checks every detection, and docs/results/quantize_voc.md a longer run)")
    return r


def _generate(out: Path, config: EngineConfig):
    """Verilog + lint for the board whose default engine this is (Ultra96-V2 for the default)."""
    from .boards import load_board
    from .rtl.generate import GenerateError, generate
    from .toolchain import verilator_env

    board = next((b for b in ("ultra96v2", "zcu104", "kv260", "pynq_z2")
                  if load_board(b).default_engine_config() == config), None)
    if board is None:
        print("  RTL: skipped (this engine config is no board's default; use hwconv generate)")
        return None
    t = time.perf_counter()
    try:
        report = generate(load_board(board), config, out, synth=False, lint=bool(verilator_env()))
    except GenerateError as exc:
        print(f"  RTL: {exc}")
        return None
    print(f"  RTL for {board}: {report.verilog} ({report.verilog.stat().st_size // 1024} KiB Verilog, "
          f"lint {'clean of errors' if verilator_env() else 'skipped: no verilator'}, "
          f"{time.perf_counter() - t:.0f} s)")
    return report


def _simulate(out: Path, program: Program, image: np.ndarray, model: str):
    """The program on the generated engine (cocotb + Verilator), checked against golden.
    Returns (report or None, passed)."""
    from rich.progress import Progress

    from .sim.runner import SimError
    from .sim.simulate import simulate_program
    from .toolchain import verilator_env

    if not verilator_env():
        print("  simulation: skipped (no verilator; `hwconv doctor` says how to get it)")
        return None, True
    try:
        with Progress(transient=True) as bar:
            task = bar.add_task("RTL simulation", total=len(program.layers))
            rep = simulate_program(program, {"image": image}, out / "verification" / "rtl_sim", sim="verilator",
                                   progress=lambda done, n, cyc: bar.update(
                                       task, completed=done, description=f"RTL simulation: {cyc:,} cycles"))
    except SimError as exc:  # a failed build or run: say so in one line; the demo fails
        print(f"  RTL simulation failed: {exc}")
        return None, False
    d = rep.data
    verdict = "RTL == golden, bit for bit" if rep.passed else f"RTL != golden: {d['comparison']}"
    versus = f" ({d['fps_vs_codenet']:.2f}x CoDeNet's {d['codenet_fps']} fps)" if model == "a" else ""
    print(f"  RTL simulation (Verilator): {verdict}; {d['cycles']:,} cycles = {d['fps']:.1f} fps at "
          f"{d['clock_mhz']:.1f} MHz{versus}, MAC utilisation {d['utilisation']:.1%}")
    print(f"    clock: {d['clock']['source']}")
    return rep, rep.passed
