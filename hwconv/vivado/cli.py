"""`hwconv build`: generate the engine for a board, write the Vivado flow, and run it if Vivado is here."""

from __future__ import annotations

import sys
from pathlib import Path

from ..spec.config import EngineConfig
from ..options import positive_int
from ..spec.errors import SpecError


def register(add) -> None:
    sp = add("build", cmd_build, "bitstream for a board: generate the RTL, then Vivado (IP, block design, "
                                 "implementation) to bitfile/<stem>.bit + .hwh; without Vivado, the scripts "
                                 "and the command to run")
    sp.add_argument("--board", required=True, help="catalog name or path to a board .toml")
    sp.add_argument("--pe", help="PE array as IxO (default: the engine config's)")
    sp.add_argument("--engine", help="engine config (.toml or .json); default: the board's")
    sp.add_argument("-o", "--out", default="out/build", help="output folder (default: out/build)")
    sp.add_argument("--jobs", type=positive_int, help="parallel Vivado jobs (default: the CPUs available)")
    sp.add_argument("--scripts-only", action="store_true",
                    help="write the Vivado scripts but do not run Vivado even if it is installed")
    sp.add_argument("--no-synth", action="store_true", help="skip the yosys resource report")
    sp.add_argument("--no-lint", action="store_true", help="skip verilator --lint-only")


def engine_config(args, board) -> EngineConfig:
    """The engine of `hwconv generate` / `build`: --engine FILE or the board's default, with --pe IxO."""
    cfg = EngineConfig.load(args.engine) if args.engine else board.default_engine_config()
    if getattr(args, "pe", None):
        try:
            pe_in, pe_out = (int(v, 10) for v in args.pe.lower().split("x"))
        except ValueError:
            raise SpecError(f"--pe {args.pe!r}: expected IxO, e.g. 16x16") from None
        cfg = cfg.with_(pe_in=pe_in, pe_out=pe_out)
    return cfg


def cmd_build(args) -> int:
    from ..boards.catalog import load_board
    from ..rtl.generate import GenerateError, generate
    from ..toolchain import find_vivado
    from .plan import make_plan
    from .project import write_scripts
    from .run import BuildError, clear_bitfile, run_vivado

    from ..fileio import check_output_path

    check_output_path(args.out, option="-o", kind="dir")     # a file there: one line, before any work
    board = load_board(args.board)
    cfg = engine_config(args, board)
    plan = make_plan(board, cfg, args.out, args.jobs)        # refuses an unbuildable board first
    try:
        report = generate(board, cfg, plan.out_dir, synth=not args.no_synth, lint=not args.no_lint)
    except GenerateError as exc:
        print(f"hwconv build: error: {exc}", file=sys.stderr)
        return 2
    print(report.summary(board))
    for name in ("driver", "deploy"):
        (plan.out_dir / name).mkdir(exist_ok=True)
    if clear_bitfile(plan):
        print(f"removed the previous bitstream from {plan.bitfile_dir} (built from the old rtl/)")
    scripts = write_scripts(plan)
    print(f"wrote the Vivado flow: {scripts[0]} (sources {', '.join(p.name for p in scripts[1:])})")

    vivado = None if args.scripts_only else find_vivado()
    if vivado is None or not vivado.found:
        print(how_to_build(plan, reason="--scripts-only" if vivado is None else vivado.hint))
        return 0
    print(f"running Vivado {vivado.version} ({vivado.path}) with {plan.jobs} jobs; "
          f"log: {plan.log}")
    try:
        result = run_vivado(plan, vivado.path, progress=sys.stderr.isatty())
    except BuildError as exc:
        print(f"hwconv build: error: {exc}", file=sys.stderr)
        return 2
    print(f"built {result.bit} and {result.hwh} in {result.seconds / 60:.1f} min")
    print(f"reports: {plan.out_dir / 'reports'} (vivado_timing_summary.txt, vivado_utilization.txt)")
    return 0


def how_to_build(plan, *, reason: str) -> str:
    """Exactly what to run where Vivado is, and what it makes."""
    from .implement import REPORTS
    from .run import manual_command

    board = plan.board
    lines = [f"Vivado not run ({reason}). To build, where Vivado is installed "
             f"(source <Vivado>/settings64.sh first):",
             f"  {manual_command(plan)}"]
    if board.board_files != "vivado":
        lines.append(f"Vivado needs the board part {board.board_part}; if `get_board_parts` lacks it, "
                     f"get the board files from {board.board_files or 'the board vendor'} and run the "
                     f"command with HWCONV_BOARD_REPO=<folder holding them>.")
    lines += ["It writes:",
              f"  {plan.bit}",
              f"  {plan.hwh}",
              f"  {plan.log} and " + ", ".join(str(Path(plan.out_dir) / 'reports' / r) for r in REPORTS),
              f"HWCONV_JOBS=<n> overrides the {plan.jobs} parallel jobs in {plan.vivado_dir / 'settings.tcl'}."]
    return "\n".join(lines)
