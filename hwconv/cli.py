"""hwconv: quantized CNN detectors with modified deformable convolutions on embedded FPGAs."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from .quant.registry import DEFAULT_MODEL, HEAD_STYLES, MODEL_NAMES
from .spec import EngineConfig, SpecError

MAX_INFO_SIZE = 2048  # `hwconv info --size`: one forward pass at this size is a few GB at most


def _config(args) -> EngineConfig:
    return EngineConfig.load(args.engine) if getattr(args, "engine", None) else EngineConfig()


def cmd_doctor(args) -> int:
    from .doctor import main_doctor

    return main_doctor(as_json=args.json)


def cmd_inspect(args) -> int:
    from .describe import format_program
    from .spec import Program

    prog = Program.load(args.program)
    print(format_program(prog, args.program))
    return 0


def cmd_spec(args) -> int:
    from .describe import format_contract

    cfg = _config(args)
    print(f"engine {cfg.stem}  hash 0x{cfg.config_hash:08x}")
    print(cfg.to_toml())
    print(format_contract())
    return 0


def cmd_bench(args) -> int:
    if args.rtl:
        from .fileio import check_output_path
        from .sim.bench_frame import format_summary, run_frame_bench

        check_output_path(args.out, option="-o", kind="dir")  # one line now, not after the simulation

        s = run_frame_bench(args.model, args.board, args.out, sim=args.sim)
        print(json.dumps(s, indent=2) if args.json else format_summary(s))
        return 0 if s["match"] else 1
    from .bench import bench_golden

    cfg = _config(args)
    r = bench_golden(cfg, args.model, repeat=args.repeat)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    print(f"golden model, detector config {r['model']} ({r['input_size']}x{r['input_size']}, random weights), "
          f"{r['layers']} layers, {r['gmac']:.3f} GMAC, engine {cfg.name}")
    print(f"  frame time: median {r['frame_s_median'] * 1e3:.1f} ms, min {r['frame_s_min'] * 1e3:.1f} ms "
          f"over {r['repeat']} runs ({r['gmac_per_s']:.2f} GMAC/s); program build {r['build_s']:.2f} s")
    print("  time by op: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in r["seconds_by_op"].items()))
    return 0


def _detector_overrides(args) -> dict:
    return {k: v for k, v in (("head", getattr(args, "head", None)), ("sampling", getattr(args, "sampling", None)))
            if v is not None}


def cmd_info(args) -> int:
    from .quant.info import format_stats, model_stats
    from .quant.models import build_detector

    if args.size is not None and not 32 <= args.size <= MAX_INFO_SIZE:
        raise ValueError(f"--size {args.size}: expected 32..{MAX_INFO_SIZE} pixels")
    st = model_stats(build_detector(args.model, **_detector_overrides(args)), args.size)
    if args.json:
        print(json.dumps(st, indent=1))
    else:
        print(format_stats(st, layers=args.layers))
    return 0


def cmd_check(args) -> int:
    """Does this model fit this engine? Export it (unsupported layers are refused by name)."""
    from .describe import format_program
    from .spec import Program

    board = None
    if args.board:
        from .boards import load_board
        from .vivado.cli import engine_config

        board = load_board(args.board)
        cfg = engine_config(args, board)  # --engine FILE, else the board's default engine
    else:
        cfg = _config(args)
    if args.program:
        prog = Program.load(args.program, expect=cfg)
        source = args.program
    else:
        from .quant.export import export_program
        from .quant.models import build_detector

        model = build_detector(args.model, **_detector_overrides(args))
        prog = export_program(model, cfg)  # untrained scales: enough to check the mapping
        source = f"(detector config {args.model})"
    print(format_program(prog, source, board))
    print(f"OK: every layer maps to the engine {cfg.stem}" + (f" of {board.name}" if board else ""))
    return 0


def cmd_generate(args) -> int:
    from .boards import load_board
    from .rtl.generate import GenerateError, generate

    from .vivado.cli import engine_config

    board = load_board(args.board)
    cfg = engine_config(args, board)
    try:
        report = generate(board, cfg, Path(args.out), synth=not args.no_synth, lint=not args.no_lint)
    except GenerateError as exc:
        print(f"hwconv generate: error: {exc}", file=sys.stderr)
        return 2
    print(report.summary(board))
    return 0


def cmd_boards(args) -> int:
    from .boards import format_board_table, list_boards, load_board

    boards = [load_board(b) for b in args.board] if args.board else list_boards()
    print(format_board_table(boards), end="")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(Path(args.out), _config(args), model=args.model)


# Modules that add commands of their own: each defines register(add), where add(name, fn, help)
# returns the new subparser (as for the commands above).
COMMAND_MODULES: tuple[str, ...] = (
    "hwconv.quant.cli",
    "hwconv.vivado.cli",
    "hwconv.driver.cli",
    "hwconv.driver.deploy_cli",
    "hwconv.sim.cli",
    "hwconv.sim.verify.cli",
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hwconv", description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--version", action="version", version=f"hwconv {__import__('hwconv').__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(name, fn, help_):
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(fn=fn)
        return sp

    sp = add("doctor", cmd_doctor, "which tools are present, their versions, and what a missing one disables")
    sp.add_argument("--json", action="store_true", help="machine-readable output")

    sp = add("demo", cmd_demo, "the main job on a built-in default: build a CoDeNet-shaped program, "
                               "write it, run the golden model, report")
    sp.add_argument("-o", "--out", default="out/demo", help="output folder (default: out/demo)")
    sp.add_argument("--model", default=DEFAULT_MODEL, choices=MODEL_NAMES,
                    help=f"detector config, random weights (default: {DEFAULT_MODEL})")
    sp.add_argument("--engine", help="engine config (.toml or .json); default: Ultra96-V2 reference")

    sp = add("info", cmd_info, "true MACs, thop-rule MACs and size of a detector config, beside CoDeNet's "
                               "published figures; per section (and --layers: per layer)")
    sp.add_argument("model", choices=MODEL_NAMES)
    sp.add_argument("--size", type=int, help="input size (default: the config's)")
    sp.add_argument("--head", choices=HEAD_STYLES, help="head style (default: the config's, codenet)")
    sp.add_argument("--layers", action="store_true", help="also print every layer")
    sp.add_argument("--json", action="store_true", help="machine-readable output (every layer included)")

    sp = add("check", cmd_check, "does a model (or program) fit an engine: layer table, MACs, ideal cycles")
    src = sp.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", choices=MODEL_NAMES)
    src.add_argument("--program")
    sp.add_argument("--sampling", choices=["integer", "bilinear"], help="override the deformable sampling")
    sp.add_argument("--head", choices=HEAD_STYLES, help="--model: head style (default: the config's)")
    sp.add_argument("--board", help="catalog name or path to a board .toml: its default engine and its clock")
    sp.add_argument("--engine", help="engine config (.toml or .json); with --board: instead of the board's")

    sp = add("generate", cmd_generate, "Verilog of the engine for a board + lint + yosys resource report")
    sp.add_argument("--board", required=True, help="catalog name or path to a board .toml")
    sp.add_argument("--pe", help="PE array as IxO (default: the engine config's)")
    sp.add_argument("--engine", help="engine config (.toml or .json); default: the board's")
    sp.add_argument("-o", "--out", default="out/generate")
    sp.add_argument("--no-synth", action="store_true", help="skip the yosys resource report")
    sp.add_argument("--no-lint", action="store_true", help="skip verilator --lint-only")

    sp = add("boards", cmd_boards, "list the board catalog (part, family, DSP/BRAM/LUT/FF, clock)")
    sp.add_argument("board", nargs="*", help="board names or paths to your own board .toml files")

    sp = add("inspect", cmd_inspect, "print a program file's header, tensors and layer table")
    sp.add_argument("program")

    sp = add("spec", cmd_spec, "print the engine contract: config, register map, descriptor layout")
    sp.add_argument("--engine", help="engine config (.toml or .json)")

    sp = add("bench", cmd_bench, "a CoDeNet-sized frame: golden-model time, or (--rtl) the simulated "
                                 "engine's cycles, fps and MAC utilisation vs CoDeNet's 32.2 fps")
    sp.add_argument("--model", default=DEFAULT_MODEL, choices=MODEL_NAMES,
                    help=f"detector config, random weights (default: {DEFAULT_MODEL})")
    sp.add_argument("--repeat", type=int, default=5)
    sp.add_argument("--engine", help="engine config (.toml or .json)")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--rtl", action="store_true", help="simulate the frame on the RTL (Verilator; minutes)")
    sp.add_argument("--board", default="ultra96v2", help="--rtl: board whose default engine runs it")
    sp.add_argument("--sim", choices=["verilator", "icarus"], help="--rtl: simulator")
    sp.add_argument("-o", "--out", default="out/bench_rtl", help="--rtl: output folder")

    for module in COMMAND_MODULES:
        importlib.import_module(module).register(add)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "fn", None):
        parser.print_help()
        return 0
    try:
        return args.fn(args)
    except SpecError as exc:  # contract violations are user errors: one clear line, no traceback
        print(f"hwconv {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:  # a path that cannot be read or written: the OS names it
        print(f"hwconv {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
