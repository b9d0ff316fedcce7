"""`hwconv generate`: Verilog of the engine for one board, linted, with a resource report.

Output folder (FINN-like; every name starts with the artifact stem's board and config):

    <out_dir>/rtl/<stem>.v              the whole design, one file, top module <stem>
    <out_dir>/rtl/filelist.f            files to read, relative to rtl/
    <out_dir>/rtl/engine_config.toml    the EngineConfig (+ [target]); EngineConfig.load reads it
    <out_dir>/reports/lint.txt          verilator --lint-only -Wall output and a summary
    <out_dir>/reports/resources.json    yosys post-synthesis counts vs the board's capacity
    <out_dir>/reports/resources.txt     the same as a table
    <out_dir>/reports/timing.json       estimated Fmax and worst paths on the same netlist (timing.py)
    <out_dir>/reports/timing.txt        the same as text, with the delay model and its sources
    <out_dir>/reports/yosys.log         the full synthesis log

Nothing lands in `out_dir` until everything has succeeded: the folder is built in a temporary
sibling and moved into place, replacing `rtl/` and `reports/` wholesale (so no stale report
survives) and leaving anything else in `out_dir` alone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from amaranth.back import verilog

from ..boards.catalog import Board
from ..spec.config import EngineConfig
from ..spec.errors import SpecError
from ..toolchain import VERILATOR_HINT, verilator_env
from . import resources, timing
from .clock import EngineClock, clock_for, clock_from_estimate
from .axi_lite import verilog_ports
from .top import EngineTop

__all__ = ["FitError", "GenerateError", "GenerateReport", "LintError", "check_config", "generate"]

LINT_TIMEOUT_S = 300.0
_SUBDIRS = ("rtl", "reports")


class FitError(SpecError):
    """The engine config does not suit the board (bus widths, or resources after synthesis)."""


class GenerateError(RuntimeError):
    """A tool failed: Verilator lint errors, yosys missing or failing."""


class LintError(GenerateError):
    """Verilator reported errors in the generated Verilog."""


@dataclass
class GenerateReport:
    out_dir: Path
    top: str                                   # top module name (= artifact stem)
    verilog: Path
    files: list[Path]                          # everything written, under out_dir
    synth: resources.SynthResult | None       # yosys result; None when synth=False
    lint_warnings: dict[str, int] | None       # Verilator -Wall warnings by rule; None: no lint
    warnings: list[str] = field(default_factory=list)  # things to know that did not stop us
    timing: timing.TimingReport | None = None  # estimate on the same netlist; None when synth=False
    clock: EngineClock | None = None           # the clock speed figures use for this engine

    def summary(self, board: Board) -> str:
        lines = [f"wrote {self.out_dir} (top {self.top})"]
        if self.lint_warnings is not None:
            n = sum(self.lint_warnings.values())
            lines.append(f"lint: no errors, {n} warning(s) (reports/lint.txt)")
        if self.synth is not None:
            lines.append(f"synthesis: {self.synth.tool}, {self.synth.seconds:.1f} s")
            lines.append(resources.format_table(self.synth.usage, board).rstrip())
        if self.timing is not None and self.clock is not None:
            fmax = self.timing.fmax_mhz
            lines.append(f"timing: estimated Fmax {fmax:.1f} MHz (reports/timing.txt); "
                         f"speed figures use {self.clock.source}" if fmax else
                         "timing: no register-to-register path found")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def check_config(board: Board, config: EngineConfig) -> list[str]:
    """Refuse a config the board cannot host (FitError); return warnings for odd but legal ones."""
    problems = []
    if config.axi_data_width > board.hp_port_width:
        problems.append(f"axi_data_width={config.axi_data_width} is wider than "
                        f"{board.display_name}'s {board.hp_port_width}-bit HP port "
                        f"(use axi_data_width={board.hp_port_width})")
    if config.pe_in != config.pe_out:
        problems.append(f"--pe {config.pe_in}x{config.pe_out}: the engine's MAC array is square "
                        f"(channel-wise ops use one block of P channels in and out); use "
                        f"{max(config.pe_in, config.pe_out)}x{max(config.pe_in, config.pe_out)}")
    if board.family == "xc7" and config.addr_width != 32:
        problems.append(f"addr_width={config.addr_width}: the Zynq-7000 PS of {board.display_name} "
                        f"has a 32-bit address space (use addr_width=32)")
    if problems:
        raise FitError(f"engine config {config.name} does not suit {board.display_name}: "
                       + "; ".join(problems))
    warnings = []
    if config.axi_data_width < board.hp_port_width:
        warnings.append(f"axi_data_width={config.axi_data_width} uses part of the "
                        f"{board.hp_port_width}-bit HP port")
    clocks = ", ".join(f"{name}={mhz:g} MHz" for name, mhz in board.pl_clocks)
    if all(abs(config.clock_mhz - mhz) > 1e-6 for _, mhz in board.pl_clocks):
        warnings.append(f"clock {config.clock_mhz:g} MHz is none of {board.display_name}'s "
                        f"PL clocks ({clocks}); the Vivado flow must configure it")
    return warnings


def generate(board: Board, config: EngineConfig, out_dir: str | Path, *, synth: bool = True,
             lint: bool = True, synth_timeout_s: float | None = None) -> GenerateReport:
    """Write the engine's Verilog and reports for `board` into `out_dir` (see module docstring).

    Raises FitError (a SpecError) for a config the board cannot host, LintError/GenerateError
    when a tool fails; `out_dir` is untouched then.
    """
    warnings = check_config(board, config)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise GenerateError(f"{out_dir} exists and is not a folder")
    top = board.artifact_stem(config)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # A sibling, so the final moves are renames within one filesystem. os.mkdir (not mkdtemp,
    # which makes it 0700) because the folder itself may become out_dir.
    stage = out_dir.parent / f".{out_dir.name}.tmp-{uuid.uuid4().hex[:12]}"
    stage.mkdir()
    try:
        rtl, reports = stage / "rtl", stage / "reports"
        rtl.mkdir()
        reports.mkdir()
        source = rtl / f"{top}.v"
        source.write_text(_convert(config, top))
        (rtl / "filelist.f").write_text(f"{source.name}\n")
        (rtl / "engine_config.toml").write_text(_config_toml(board, config, top))

        lint_warnings = None
        if lint:
            lint_warnings = _lint(source, top, reports / "lint.txt")

        result = estimate = clock = None
        if synth:
            netlist = stage / "netlist.json"          # outside rtl/ and reports/: not kept
            try:
                result = resources.synthesize(source, top, board.family, timeout_s=synth_timeout_s,
                                              log_path=reports / "yosys.log", netlist_path=netlist)
                estimate = timing.analyse(timing.load_netlist(netlist, top), board.family,
                                          verilog=source.read_text())
            except (resources.SynthError, timing.TimingError) as exc:
                raise GenerateError(str(exc)) from None
            netlist.unlink()
            over = resources.over_capacity(result.usage, board)
            if over:
                raise FitError(f"engine config {config.name} does not fit {board.display_name} "
                               f"({board.part}): " + "; ".join(over))
            timing_json = reports / "timing.json"
            timing_json.write_text(_timing_json(board, config, top, estimate))
            final = str(out_dir / "reports" / timing_json.name)    # where it will be
            clock = (clock_from_estimate(config, estimate.fmax_mhz, final) if estimate.fmax_mhz
                     else clock_for(board, config))
            (reports / "timing.txt").write_text(_timing_txt(board, config, top, estimate, clock))
            if clock.limited_by_timing:
                warnings.append(f"estimated Fmax {estimate.fmax_mhz:.1f} MHz is below the "
                                f"{config.clock_mhz:g} MHz clock (reports/timing.txt): speed "
                                f"figures use {clock.mhz:.1f} MHz")
            (reports / "resources.json").write_text(_resources_json(board, config, top, result,
                                                                    clock))
            (reports / "resources.txt").write_text(_resources_txt(board, top, result))
        else:
            warnings.append("synthesis skipped: resources not checked against the board")

        for f in (*rtl.iterdir(), *reports.iterdir()):  # durable before it becomes visible
            _fsync(f)
        _move_into_place(stage, out_dir)
    finally:
        shutil.rmtree(stage, ignore_errors=True)

    files = sorted(p for d in _SUBDIRS for p in (out_dir / d).iterdir())
    return GenerateReport(out_dir, top, out_dir / "rtl" / source.name, files, result,
                          lint_warnings, warnings, estimate, clock)


def engine_verilog(config: EngineConfig, top: str) -> str:
    """The whole engine for `config` as one Verilog file whose top module is `top`.

    The same text `generate` writes (ports named as in the module docstring); simulation
    benches build it without the lint and synthesis steps.
    """
    return _convert(config, top)


# -- steps -----------------------------------------------------------------------------------------
def _convert(config: EngineConfig, top: str) -> str:
    engine = EngineTop(config)
    # emit_src=False: no absolute paths of this checkout in the artifact; same config, same bytes.
    return verilog.convert(engine, name=top, ports=verilog_ports(engine), emit_src=False)


def _config_toml(board: Board, config: EngineConfig, top: str) -> str:
    import tomli_w

    return tomli_w.dumps({
        "engine": config.to_dict(),
        # EngineConfig.load reads only [engine]; this says what the Verilog was built for.
        "target": {"board": board.name, "part": board.part, "family": board.family, "top": top,
                   "config_hash": f"0x{config.config_hash:08x}"},
    })


def _lint(source: Path, top: str, report: Path) -> dict[str, int]:
    """verilator --lint-only -Wall: errors raise LintError; warnings are counted and reported."""
    env = verilator_env()
    exe = shutil.which("verilator", path=env.get("PATH")) if env else None
    if exe is None:
        raise GenerateError(f"verilator not found, so the Verilog cannot be linted: "
                            f"{VERILATOR_HINT} (or generate with lint disabled)")
    argv = [exe, "--lint-only", "-Wall", "-Wno-fatal", "--top-module", top, source.name]
    try:
        proc = subprocess.run(argv, cwd=source.parent, env={**os.environ, **env}, text=True,
                              capture_output=True, timeout=LINT_TIMEOUT_S, errors="replace")
    except subprocess.TimeoutExpired:
        raise GenerateError(f"verilator --lint-only timed out after {LINT_TIMEOUT_S:g} s") from None
    out = proc.stdout + proc.stderr
    errors = [ln for ln in out.splitlines() if ln.startswith("%Error")]
    if errors or proc.returncode != 0:
        first = errors[0] if errors else f"exit {proc.returncode}"
        raise LintError(f"verilator --lint-only found {len(errors) or 'an'} error(s) in "
                        f"{source.name}: {first}")
    rules = Counter(re.findall(r"^%Warning-(\w+)", out, flags=re.M))
    summary = ", ".join(f"{rule} {n}" for rule, n in sorted(rules.items())) or "none"
    # One line per diagnostic (the source excerpts under each would make it ~200 KB). Most are
    # Amaranth's style (init value and reset on every register, casez without default, debug
    # wires left unused), not defects.
    headlines = "\n".join(ln for ln in out.splitlines() if ln.startswith("%"))
    report.write_text(f"$ {' '.join(['verilator', *argv[1:]])}\n"
                      f"errors: 0\nwarnings: {sum(rules.values())} ({summary})\n\n{headlines}\n")
    return dict(sorted(rules.items()))


def _resources_json(board: Board, config: EngineConfig, top: str,
                    result: resources.SynthResult, clock: EngineClock) -> str:
    util = {r.label.lower(): {"used": r.used, "available": r.available,
                              "percent": round(r.percent, 2)}
            for r in resources.utilisation(result.usage, board)}
    return json.dumps({
        "board": board.name, "part": board.part, "family": board.family, "top": top,
        "engine": config.name, "config_hash": f"0x{config.config_hash:08x}",
        "tool": result.tool, "script": result.script,
        "synth_seconds": round(result.seconds, 1),
        "estimate": "yosys post-synthesis cell counts; Vivado place-and-route gives the final ones",
        "utilisation": util,
        "detail": result.usage.to_dict(),
        "cells": dict(sorted(result.cells.items())),
        "clock": clock.to_dict(),                 # the timing estimate (reports/timing.json)
    }, indent=2) + "\n"


def _timing_json(board: Board, config: EngineConfig, top: str, report: timing.TimingReport) -> str:
    fmax = report.fmax_mhz
    return json.dumps({
        "board": board.name, "part": board.part, "part_speed_grade": board.speed_grade,
        "top": top, "engine": config.name, "config_hash": f"0x{config.config_hash:08x}",
        "engine_config": config.to_dict(), "clock_mhz": config.clock_mhz,
        "meets_clock": fmax is not None and fmax >= config.clock_mhz,
        "estimate": "register-to-register delay on yosys's synth_xilinx netlist under a "
                    "datasheet-based delay model (hwconv/rtl/timing.py); unplaced, not Vivado's",
        **report.to_dict(),
    }, indent=2) + "\n"


def _timing_txt(board: Board, config: EngineConfig, top: str, report: timing.TimingReport,
                clock: EngineClock) -> str:
    grade = ""
    if board.speed_grade not in (None, report.model.speed_grade):
        grade = (f"\nthe part is speed grade {board.speed_grade}; the model is "
                 f"{report.model.speed_grade}, so the estimate is conservative")
    title = (f"{top} on {board.display_name} ({board.part}), timing estimate{grade}\n"
             f"speed figures use {clock.source}\n")
    return timing.format_report(report, title=title, clock_mhz=config.clock_mhz, top=20)


def _resources_txt(board: Board, top: str, result: resources.SynthResult) -> str:
    return (f"{top} on {board.display_name} ({board.part}), post-synthesis estimate\n"
            f"{result.tool}: synth_xilinx -family {board.family}, {result.seconds:.1f} s\n\n"
            + resources.format_table(result.usage, board))


# -- atomic placement ------------------------------------------------------------------------------
def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _move_into_place(stage: Path, out_dir: Path) -> None:
    """Make stage's rtl/ and reports/ those of out_dir: one rename for a new folder, else a
    rename per subfolder (the old one is set aside first and removed after)."""
    if not out_dir.exists():
        os.rename(stage, out_dir)
        stage.mkdir()  # the caller removes `stage`; give it something to remove
        return
    if not out_dir.is_dir():
        raise GenerateError(f"{out_dir} exists and is not a folder")
    for name in _SUBDIRS:
        new, old = stage / name, out_dir / name
        if old.exists():
            os.rename(old, stage / f"{name}.old")  # stage is removed afterwards, old copy with it
        os.rename(new, old)
