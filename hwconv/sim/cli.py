"""`hwconv simulate`: a program on the RTL (cocotb: Verilator or Icarus), bit-exact vs golden.

    hwconv simulate --program P [--image I | --random-input SEED] [--board B]
                    [--sim verilator|icarus] [--waves] [--backpressure P] [-o DIR]
    hwconv simulate --speed [--sim S]     simulated cycles per second (both simulators if no --sim)

Prints per-layer and total cycles, fps at min(board clock, estimated Fmax) (hwconv.rtl.clock), MAC-array
utilisation and the verdict; writes DIR/report.json and DIR/cycles_per_layer.png. Exit status
0 when the RTL matches golden, 1 when it does not (or the run failed), 2 for bad input.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..options import stall_probability

__all__ = ["register"]


def register(add) -> None:
    sp = add("simulate", cmd_simulate,
             "run a program on the RTL engine (cocotb + Verilator/Icarus) and check it bit-exactly "
             "against the golden model: cycles, fps, MAC utilisation, report.json and a plot")
    sp.add_argument("--program", help="program file (.hwc) from hwconv export")
    src = sp.add_mutually_exclusive_group()
    src.add_argument("--image", help="image file (PNG/JPEG) for the program's input, letterboxed")
    src.add_argument("--random-input", type=int, metavar="SEED",
                     help="random inputs from this seed (default when no --image: seed 0)")
    sp.add_argument("--board", help="board whose clock and timing estimate give the fps (default: the board whose default engine the program is for)")
    sp.add_argument("--sim", choices=["verilator", "icarus"],
                    help="simulator (default: $SIM, else verilator)")
    sp.add_argument("--waves", action="store_true", help="record an FST waveform of the run")
    sp.add_argument("--backpressure", type=stall_probability, default=0.0, metavar="P",
                    help="random stalls on every AXI channel with probability P (default 0)")
    sp.add_argument("-o", "--out", default="out/simulate", help="output folder")
    sp.add_argument("--speed", action="store_true",
                    help="only measure simulation speed (cycles per wall-clock second)")


def cmd_simulate(args) -> int:
    if args.speed:
        return _speed(args)
    if not args.program:
        print("hwconv simulate: error: --program is required (or --speed)", file=sys.stderr)
        return 2
    from ..fileio import check_output_path
    from ..spec.program import Program

    check_output_path(args.out, option="-o", kind="dir")  # before any work: one line naming -o

    program = Program.load(args.program)
    inputs = _inputs(program, args)
    from ..rtl.clock import clock_for

    # min(board clock, estimated Fmax) of this engine on --board (else the board whose default it is)
    clock = clock_for(args.board, program.config) if args.board else clock_for(program.config)
    return _simulate(program, inputs, args, clock)


def _inputs(program, args) -> dict[str, np.ndarray]:
    from .programs import random_inputs

    if not args.image:
        return random_inputs(program, args.random_input or 0,
                             max_dilation=program.config.max_dilation)
    from ..driver.preprocess import as_rgb_uint8, letterbox, quantize_image
    from ..imageio import read_image
    from ..spec.errors import printable

    images = [t for t in program.inputs if t.ref.channels == 3]
    if len(program.inputs) != 1 or not images:
        raise ValueError(f"--image needs a program with one 3-channel input; {args.program} has "
                         f"{', '.join(f'{printable(t.name)} ({t.ref.channels} ch)' for t in program.inputs)}")
    try:
        pixels = read_image(args.image)   # regular files only, pixel cap, 16-bit grey scaled
    except ValueError as exc:
        raise ValueError(f"--image {exc}") from None
    t = images[0]
    pic, _ = letterbox(as_rgb_uint8(pixels, where=args.image), t.ref.height, t.ref.width)
    return {t.name: quantize_image(pic, t)}


def _simulate(program, inputs, args, clock) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from .simulate import simulate_program, write_report

    console = Console(stderr=True)
    out = Path(args.out)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                  TextColumn("{task.completed}/{task.total} layers, {task.fields[cycles]:,} cycles"),
                  TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("RTL simulation", total=len(program.layers), cycles=0)

        def progress(done: int, total: int, cycles: int) -> None:
            bar.update(task, completed=done, cycles=cycles)

        report = simulate_program(program, inputs, out, source=args.program, sim=args.sim,
                                  waves=args.waves, clock=clock,
                                  backpressure=args.backpressure, progress=progress,
                                  log=lambda m: console.print(m))
    files = write_report(report, out)
    _print_report(report.data)
    for f in files:
        print(f"wrote {f}")
    if report.data["sim"]["waves"]:
        print(f"waveform: {report.data['sim']['waves']}")
    return 0 if report.passed else 1


def _print_report(d: dict) -> None:
    from ..spec.errors import printable

    print(f"{printable(d['program'], 200)}: engine {d['engine']} ({d['pe'][0]}x{d['pe'][1]} MACs) on "
          f"{d['sim']['simulator']}, {d['sim']['cycles_per_second']:,} simulated cycles/s")
    print(f"{'#':>3} {'layer':32s} {'op':10s} {'cycles':>12s} {'MACs':>14s} {'util':>6s}")
    for layer in d["layers"]:
        util = f"{100 * layer['utilisation']:5.1f}%" if layer["utilisation"] is not None else "    -"
        print(f"{layer['index']:3d} {printable(layer['name'], 32):32s} {layer['op']:10s} "
              f"{layer['cycles']:12,d} {layer['macs']:14,d} {util}")
    st = d["status"]
    if st["error"] != "NONE" or st["hang"]:
        print(f"run FAILED: {st['hang'] or st['error'] + ' at layer ' + str(st['error_layer'])}")
    if d["cycles"]:
        print(f"total: {d['cycles']:,} cycles ({d['stall_cycles']:,} stalled on DRAM), "
              f"{d['fps']:.1f} fps at {d['clock_mhz']:.1f} MHz, MAC utilisation {100 * d['utilisation']:.1f}%")
        print(f"clock: {d['clock']['source']}")
    if d["comparison"] is not None:
        verdict = "MATCH" if d["match"] else "MISMATCH"
        print(f"{verdict}: {d['comparison']['summary']}")


def _speed(args) -> int:
    from .speed import measure

    for sim in ([args.sim] if args.sim else ["verilator", "icarus"]):
        print(measure(sim).describe(), flush=True)
    return 0
