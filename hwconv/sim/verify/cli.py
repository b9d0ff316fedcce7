"""`hwconv verify` (and `python -m hwconv.sim.verify`): the constrained-random RTL regression.

    hwconv verify [--board B | --engine FILE] [--seed S] [--programs N] [--layers L]
                  [--workers W] [--batch K] [--budget SECONDS] [--minimise]
                  [-o DIR] [--stem NAME]
    hwconv verify --merge A.json B.json [-o DIR] [--stem NAME]

Runs the random programs of seeds S .. S+N-1 (L targeted layers each) on the Verilator engine
of the board's default config (Ultra96-V2 unless --board/--engine), every arena compared with
the golden model bit for bit, and writes DIR/<stem>.json and DIR/<stem>.md (verdict, wall
time, layers/s, coverage table). With --minimise each failing program is shrunk and written
to DIR/failures/seed<S>/ (original.hwc, minimised.hwc, specs, report.txt). Exit status 0 when
every program matched, 1 when one did not, 2 for bad input.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ...options import int_range, positive_int

__all__ = ["main", "register"]

NAME = "verify"


def add_arguments(sp) -> None:
    where = sp.add_mutually_exclusive_group()
    where.add_argument("--board", default=None,
                       help="board whose default engine config to verify (default: ultra96v2)")
    where.add_argument("--engine", help="engine config file (.toml/.json) instead of a board's")
    sp.add_argument("--seed", type=int_range(0, (1 << 31) - 1), default=0, help="first program seed (default 0)")
    sp.add_argument("--programs", type=positive_int, default=200, help="programs to run (default 200)")
    sp.add_argument("--layers", type=positive_int, default=50,
                    help="targeted layers per program (default 50; at most max_layers - 1)")
    sp.add_argument("--workers", type=positive_int, default=None,
                    help="parallel simulator processes (default: every core)")
    sp.add_argument("--batch", type=positive_int, default=4,
                    help="programs per simulator process (default 4)")
    sp.add_argument("--budget", type=positive_int, default=None, metavar="SECONDS",
                    help="stop starting batches after this many seconds; report what ran")
    sp.add_argument("--minimise", action="store_true",
                    help="shrink each failing program and write it under DIR/failures/")
    sp.add_argument("--merge", nargs="+", metavar="JSON",
                    help="only merge reports of runs made side by side (same engine, disjoint "
                         "seeds) into DIR/<stem>.json/.md")
    sp.add_argument("-o", "--out", default="out/verify", help="output folder (default out/verify)")
    sp.add_argument("--stem", default="verify", help="report file name stem (default verify)")


def register(add) -> None:
    sp = add(NAME, cmd_verify,
             "constrained-random regression: many random multi-layer programs on the Verilator "
             "engine under backpressure, every arena bit-exact vs golden, functional coverage")
    add_arguments(sp)


def _config(args):
    from ...spec.config import EngineConfig

    if args.engine:
        return EngineConfig.load(args.engine), None
    from ...boards import load_board

    board = load_board(args.board or "ultra96v2")
    return board.default_engine_config(), board.name


def _merge(args) -> int:
    import json

    from .report import merge_data, write_data

    parts = []
    for path in args.merge:
        try:
            parts.append(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as exc:
            print(f"hwconv verify: error: --merge {path}: {exc}", file=sys.stderr)
            return 2
    try:
        data = merge_data(parts)
    except (KeyError, TypeError, ValueError) as exc:
        print(f"hwconv verify: error: --merge: not verify reports of one engine ({exc})",
              file=sys.stderr)
        return 2
    print("report: " + ", ".join(map(str, write_data(data, Path(args.out), args.stem))))
    return 0 if not data["failures"] else 1


def cmd_verify(args) -> int:
    from ...spec.errors import SpecError
    from ..runner import SimError

    if args.merge:
        return _merge(args)
    try:
        config, board = _config(args)
    except SpecError as exc:
        print(f"hwconv verify: error: {exc}", file=sys.stderr)
        return 2
    if args.layers > config.max_layers - 1:
        print(f"hwconv verify: error: --layers {args.layers} exceeds the engine's max_layers - 1 "
              f"= {config.max_layers - 1}", file=sys.stderr)
        return 2
    from .report import write_report
    from .run import verify

    out = Path(args.out)
    try:    # before any simulation: an unwritable -o would only show after the whole run
        out.mkdir(parents=True, exist_ok=True)
        if not os.access(out, os.W_OK):
            raise PermissionError(f"{out} is not writable")
    except OSError as exc:
        print(f"hwconv verify: error: -o {out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    try:
        summary = verify(config, seed=args.seed, programs=args.programs, layers=args.layers,
                         workers=args.workers, batch=args.batch, out_dir=out,
                         budget_s=args.budget,
                         log=lambda s: print(s, flush=True))
    except SimError as exc:
        print(f"hwconv verify: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    paths = write_report(summary, out, args.stem, board)
    cov = summary.coverage.summary()
    print(f"{summary.programs} programs, {summary.layers} layers, {len(summary.failures)} "
          f"mismatching; {summary.wall_s:.0f} s, "
          f"{summary.layers / max(1e-9, summary.wall_s - summary.build_s):.2f} layers/s; "
          f"coverage {cov['bins_hit']}/{cov['legal_bins']} legal bins")
    for o in summary.failures:
        print(f"FAIL seed {o.seed}: reproduce with `hwconv verify --seed {o.seed} --programs 1 "
              f"--layers {args.layers}" + (f" --board {board}" if board else "") + "`")
        if args.minimise:
            _minimise(config, o, args.layers, out, board)
    print("report: " + ", ".join(map(str, paths)))
    return 0 if not summary.failures else 1


def _minimise(config, outcome, layers: int, out: Path, board: str | None) -> None:
    from .generate import generate
    from .minimise import minimise, write_failure

    spec = generate(config, outcome.seed, layers)
    folder = out / "failures" / f"seed{outcome.seed}"
    small, small_out = minimise(config, spec, outcome, folder / "work",
                                log=lambda s: print(s, flush=True))
    command = (f"hwconv verify --seed {outcome.seed} --programs 1 --layers {layers}"
               + (f" --board {board}" if board else ""))
    paths = write_failure(config, folder, spec, outcome, small, small_out, command)
    print("  minimised: " + ", ".join(map(str, paths)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hwconv.sim.verify",
                                description=__doc__.splitlines()[0])
    add_arguments(p)
    return cmd_verify(p.parse_args(argv))
