#!/usr/bin/env python3
"""Run a hwconv detector program on this machine: the runner of a `hwconv deploy` folder.

    python3 run_engine.py                          # PYNQ board: bitfile/*.bit, the sample image
    python3 run_engine.py --backend golden         # anywhere with numpy: the golden model
    python3 run_engine.py --image photo.png --json # Pillow reads .png/.jpg; .npy needs only numpy
    python3 run_engine.py --throughput 20

Everything it imports from hwconv is the copy in this folder (spec, golden model, driver).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

try:  # Python < 3.11 (PYNQ 3.0 images run 3.10): TOML config files are not needed here
    import tomllib  # noqa: F401
except ModuleNotFoundError:
    _toml = types.ModuleType("tomllib")

    class TOMLDecodeError(ValueError):
        pass

    def _no_toml(*_a, **_k):
        raise ModuleNotFoundError("reading TOML needs Python 3.11; this folder ships engine.json")

    _toml.TOMLDecodeError, _toml.loads, _toml.load = TOMLDecodeError, _no_toml, _no_toml
    sys.modules["tomllib"] = _toml

import numpy as np  # noqa: E402

from hwconv.driver.engine import EngineDriver  # noqa: E402
from hwconv.imageio import read_image as _read_image  # noqa: E402
from hwconv.spec import EngineConfig, Program  # noqa: E402
from hwconv.spec.errors import printable  # noqa: E402

HEAVY = ("torch", "brevitas", "pycocotools", "amaranth", "cocotb")


def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 through hwconv.imageio (regular files only, pixel cap, 16-bit grey scaled)."""
    path = Path(path)
    if path.suffix.lower() != ".npy":
        try:
            import PIL  # noqa: F401
        except ImportError:
            raise ValueError(f"{path}: reading {path.suffix} needs Pillow; pass a .npy (H, W, 3) uint8") from None
    return _read_image(path)


def open_driver(backend: str, program: Program, bitfile: Path | None) -> EngineDriver:
    if backend == "golden":
        from hwconv.driver.backends.golden import GoldenBackend

        return EngineDriver(GoldenBackend(program.config))
    if bitfile is None:
        found = sorted((HERE / "bitfile").glob("*.bit"))
        if not found:
            sys.exit("run_engine: no bitstream in bitfile/ (the deploy folder was built without one: run "
                     "`hwconv build` where Vivado is, deploy again, or use --backend golden)")
        bitfile = found[0]
    from hwconv.driver.backends.pynq import open_engine

    return open_engine(bitfile, config=program.config)


def main(argv=None) -> int:
    try:
        return _main(argv)
    except (ValueError, OSError) as exc:  # bad input (program, image, engine file): one line, exit 2
        print(f"run_engine: error: {exc}", file=sys.stderr)
        return 2


def _main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", choices=["pynq", "golden"], default="pynq")
    p.add_argument("--program", type=Path, default=None, help="default: the .hwc in this folder")
    p.add_argument("--bitfile", type=Path, default=None, help="default: bitfile/*.bit in this folder")
    p.add_argument("--image", type=Path, default=HERE / "sample_image.npy")
    p.add_argument("--score-threshold", type=float, default=0.3)
    p.add_argument("--throughput", type=int, default=0, metavar="N", help="also run N frames for fps")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = p.parse_args(argv)

    program_path = args.program or next(iter(sorted(HERE.glob("*.hwc"))), None)
    if program_path is None:
        sys.exit("run_engine: no .hwc program in this folder; pass --program")
    program = Program.load(program_path)
    config_file = HERE / "engine.json"
    if config_file.is_file() and EngineConfig.load(config_file).config_hash != program.config.config_hash:
        sys.exit(f"run_engine: {program_path.name} was built for another engine than engine.json")
    image = read_image(args.image)
    with open_driver(args.backend, program, args.bitfile) as engine:
        engine.load(program)
        t0 = time.perf_counter()
        det = engine.detect(image, score_threshold=args.score_threshold)
        host_ms = 1e3 * (time.perf_counter() - t0)
        result = {
            "backend": engine.backend.name, "program": program_path.name, "image": str(args.image),
            "image_shape": list(image.shape), "host_ms": host_ms,
            "detections": [{"box": [float(v) for v in b], "score": float(s), "label": int(lab)}
                           for b, s, lab in zip(det["boxes"], det["scores"], det["labels"])],
            "stats": {k: v for k, v in det["stats"].to_dict().items() if k not in ("layer_cycles", "layer_macs")},
        }
        if args.throughput:
            result["throughput"] = engine.throughput_test(args.throughput)
    import hwconv

    result["hwconv_path"] = str(Path(hwconv.__file__).resolve().parent)
    result["heavy_modules"] = sorted(m for m in HEAVY if m in sys.modules)
    if args.json:
        print(json.dumps(result))
        return 0
    names = det["class_names"]
    print(f"{result['backend']}: {len(result['detections'])} detection(s) in {args.image.name} "
          f"({result['host_ms']:.1f} ms on the host)")
    for d in result["detections"]:
        label = printable(names[d["label"]]) if names else d["label"]
        print(f"  {label}  {d['score']:.2f}  box {[round(v, 1) for v in d['box']]}")
    st = result["stats"]
    print(f"engine: {st['cycles']} cycles at {st['clock_mhz']:.2f} MHz = {st['engine_ms']:.3f} ms "
          f"({st['fps']:.1f} fps) [{st['counter_source']}]")
    if args.throughput:
        t = result["throughput"]
        print(f"throughput over {t['frames']} frames: {t['fps']:.1f} fps engine, {t['host_fps']:.1f} fps host")
    return 0


if __name__ == "__main__":
    sys.exit(main())
