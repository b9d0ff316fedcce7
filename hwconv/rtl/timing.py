"""Static timing estimate on yosys's `synth_xilinx` netlist: worst register-to-register paths, Fmax.

No open place-and-route exists for Zynq, so the clock an engine can meet is estimated here from
the post-synthesis netlist (`write_json`) under a delay model for each device family (`MODELS`).
Every number of a model is a `Figure` that says where it comes from: the DSP48 rows are the
datasheets' Fmax tables (DS925 for Zynq UltraScale+, DS187 for Zynq-7000, speed grade -1); the
datasheets give no per-LUT or routing figure, so those are the project's estimates, of the order
Vivado reports on -1 parts, and say so. It is an estimate: no placement, so every net costs the
same base delay plus a fanout term; Vivado's placed figure is the final word.

The graph: start points are register outputs (FD* Q; BRAM outputs, with or without DO[AB]_REG;
SRL and LUTRAM outputs; DSP outputs after their last internal register), end points are register
inputs (setup). A DSP48 is modelled as its internal stages, input registers (AREG/BREG/DREG/...),
ADREG, MREG, PREG, with the stage delays derived from the datasheet's Fmax rows: a DSP with all
registers is start and end point at its own stages; an unregistered one is combinational delay.
Arrivals are propagated in topological order over the cells (linear in netlist size).

Names: the project's synthesis script runs `rename -hide w:*` (an ABC9 crash workaround, see
resources.py), so register output nets carry no readable names. yosys's `read_verilog` tags every
cell with a `src` attribute (file:line), which survives mapping; the start and end of each path
are named by the Verilog statement at that line (the register assigned there), e.g. `acc_0`.
"""

from __future__ import annotations

import bisect
import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["DelayModel", "Figure", "MODELS", "TimingError", "TimingPath", "TimingReport", "analyse",
           "estimate_verilog", "format_report", "load_netlist", "main", "unregistered_multipliers"]


class TimingError(RuntimeError):
    """The netlist cannot be read or analysed."""


@dataclass(frozen=True)
class Figure:
    ns: float
    source: str


def _fmax(mhz: float, source: str) -> Figure:
    """A datasheet Fmax row, kept as the period it allows."""
    return Figure(1e3 / mhz, f"{source}: {mhz:g} MHz")


@dataclass(frozen=True)
class DelayModel:
    family: str
    speed_grade: str
    datasheet: str
    ff_clk_to_q: Figure
    ff_setup: Figure
    lut: Figure
    net: Figure                  # one routed hop between two cells
    net_fanout: Figure           # added per doubling of a net's fanout
    muxf: Figure                 # MUXF7/8/9 (their inputs come by dedicated routes: no net delay)
    carry_in: Figure             # CARRY4/8: S, DI, CYINIT/AX to CO or O
    carry_through: Figure        # CARRY4/8: CI to CO/O (CO -> CI is a dedicated route: no net delay)
    srl_clk_to_out: Figure
    srl_addr: Figure             # SRL address to Q
    lutram_clk_to_out: Figure
    lutram_read: Figure          # LUTRAM read address to output
    lutram_setup: Figure
    bram_clk_to_out: Figure      # without the output register
    bram_clk_to_out_reg: Figure  # with DO[AB]_REG = 1
    bram_setup: Figure
    dsp_all_regs: Figure         # DSP Fmax rows, as periods
    dsp_no_adreg: Figure
    dsp_no_pipeline: Figure
    dsp_clk_to_out: Figure
    dsp_setup: Figure

    # DSP stage delays derived from the Fmax rows (each includes the internal clock-to-out and
    # setup). With all registers the multiplier stage is the slowest one; removing ADREG adds the
    # pre-adder to it; removing MREG as well adds the ALU. A DSP without MREG but with no pre-adder
    # then costs mult + alu, slightly more than the datasheet's "without MREG" row (conservative).
    @property
    def dsp_mult(self) -> float:
        return self.dsp_all_regs.ns

    @property
    def dsp_preadd(self) -> float:
        return self.dsp_no_adreg.ns - self.dsp_all_regs.ns

    @property
    def dsp_alu(self) -> float:
        return self.dsp_no_pipeline.ns - self.dsp_no_adreg.ns

    def figures(self) -> dict[str, dict]:
        out = {k: {"ns": round(v.ns, 3), "source": v.source} for k, v in vars(self).items()
               if isinstance(v, Figure)}
        out["dsp_stage_ns"] = {"preadd": round(self.dsp_preadd, 3), "mult": round(self.dsp_mult, 3),
                               "alu": round(self.dsp_alu, 3),
                               "source": "derived from the DSP Fmax rows (see module docstring)"}
        return out


_EST = "estimate: the datasheet has no per-element figure"
_UNCHECKED = "estimate, not transcribed from the datasheet PDF (unavailable offline here)"
_DS925 = "DS925 v1.30 Table 'DSP48 Slice Switching Characteristics', -1 at VCCINT 0.85 V"
_DS187 = ("DS187 'DSP48E1 Switching Characteristics', -1 (Z-7010/7020; values as recalled from "
          "the table, to re-check against the PDF)")

MODELS: dict[str, DelayModel] = {
    # Zynq UltraScale+ (xczu3eg-...-1: Ultra96-V2), speed grade -1.
    "xcup": DelayModel(
        family="xcup", speed_grade="-1",
        datasheet="DS925 (Zynq UltraScale+ MPSoC Data Sheet: DC and AC Switching Characteristics)",
        ff_clk_to_q=Figure(0.10, f"{_EST}; UltraScale+ slice FF clock-to-Q, ~0.08-0.1 ns in "
                                 f"Vivado -1 reports"),
        ff_setup=Figure(0.05, f"{_EST}; slice FF D setup"),
        lut=Figure(0.15, f"{_EST}; one LUT level, input to output (~0.05-0.2 ns in Vivado -1 "
                         f"reports, by input pin)"),
        net=Figure(0.35, f"{_EST}; one routed hop between nearby slices, unplaced"),
        net_fanout=Figure(0.08, f"{_EST}; per doubling of fanout (fanout 1000 adds ~0.8 ns)"),
        muxf=Figure(0.10, f"{_EST}; MUXF7/F8/F9 in the slice"),
        carry_in=Figure(0.30, f"{_EST}; CARRY8 S/DI to CO[7]/O"),
        carry_through=Figure(0.05, f"{_EST}; CARRY8 CI to CO[7] (dedicated carry chain)"),
        srl_clk_to_out=Figure(0.80, f"{_EST}; SRL clock to Q"),
        srl_addr=Figure(0.25, f"{_EST}; SRL address to Q (a LUT read)"),
        lutram_clk_to_out=Figure(0.80, f"{_EST}; LUTRAM write clock to output"),
        lutram_read=Figure(0.25, f"{_EST}; LUTRAM read address to output (a LUT read)"),
        lutram_setup=Figure(0.40, f"{_EST}; LUTRAM data/write-enable setup"),
        bram_clk_to_out=Figure(1.40, f"{_UNCHECKED}; RAMB36E2 clock to DOUT without the "
                                     f"output register (DS925 'Block RAM and FIFO Switching "
                                     f"Characteristics' TRCKO_DO is of this order)"),
        bram_clk_to_out_reg=Figure(0.40, f"{_UNCHECKED}; with DO[AB]_REG = 1 "
                                         f"(DS925 TRCKO_DO_REG is of this order)"),
        bram_setup=Figure(0.50, f"{_EST}; RAMB address/enable/data setup"),
        dsp_all_regs=_fmax(645, f"{_DS925}, FMAX with all registers used"),
        dsp_no_adreg=_fmax(468, f"{_DS925}, FMAX_PREADD_NOADREG"),
        dsp_no_pipeline=_fmax(338, f"{_DS925}, FMAX_NOPIPELINEREG (without MREG, ADREG)"),
        dsp_clk_to_out=Figure(0.35, f"{_EST}; DSP48E2 clock to P with PREG"),
        dsp_setup=Figure(0.30, f"{_EST}; DSP48E2 A/B/C/D setup to the input registers"),
    ),
    # Zynq-7000 (xc7z020-1: Pynq-Z2), speed grade -1: Artix-7-class fabric, slower everywhere.
    "xc7": DelayModel(
        family="xc7", speed_grade="-1",
        datasheet="DS187 (Zynq-7000 SoC (Z-7007S..Z-7020) Data Sheet: DC and AC Switching "
                  "Characteristics)",
        ff_clk_to_q=Figure(0.46, f"{_EST}; 7-series FDRE clock to Q, ~0.46 ns in Vivado -1 "
                                 f"reports"),
        ff_setup=Figure(0.06, f"{_EST}; slice FF D setup"),
        lut=Figure(0.124, f"{_EST}; one LUT level (Vivado -1 reports LUT6 I->O ~0.12 ns)"),
        net=Figure(0.50, f"{_EST}; one routed hop between nearby slices, unplaced"),
        net_fanout=Figure(0.10, f"{_EST}; per doubling of fanout (fanout 1000 adds ~1 ns)"),
        muxf=Figure(0.30, f"{_EST}; MUXF7/F8 in the slice"),
        carry_in=Figure(0.55, f"{_EST}; CARRY4 S/DI/CYINIT to CO[3]/O"),
        carry_through=Figure(0.11, f"{_EST}; CARRY4 CI to CO[3] (dedicated carry chain)"),
        srl_clk_to_out=Figure(1.30, f"{_EST}; SRL clock to Q"),
        srl_addr=Figure(0.40, f"{_EST}; SRL address to Q"),
        lutram_clk_to_out=Figure(1.30, f"{_EST}; LUTRAM write clock to output"),
        lutram_read=Figure(0.40, f"{_EST}; LUTRAM read address to output"),
        lutram_setup=Figure(0.60, f"{_EST}; LUTRAM data/write-enable setup"),
        bram_clk_to_out=Figure(2.46, f"{_UNCHECKED}; RAMB36E1 clock to DO without the "
                                     f"output register (DS187 'Block RAM and FIFO Switching "
                                     f"Characteristics' TRCKO_DO is of this order)"),
        bram_clk_to_out_reg=Figure(0.88, f"{_UNCHECKED}; with DO[AB]_REG = 1 (DS187 "
                                         f"TRCKO_DO_REG is of this order)"),
        bram_setup=Figure(0.60, f"{_EST}; RAMB address/enable/data setup"),
        dsp_all_regs=_fmax(464, f"{_DS187}, FMAX with all registers used"),
        dsp_no_adreg=_fmax(294, f"{_DS187}, FMAX_PREADD_MULT_NOADREG"),
        dsp_no_pipeline=_fmax(192, f"{_DS187}, FMAX_NOPIPELINEREG"),
        dsp_clk_to_out=Figure(0.43, f"{_EST}; DSP48E1 clock to P with PREG"),
        dsp_setup=Figure(0.40, f"{_EST}; DSP48E1 A/B/C/D setup to the input registers"),
    ),
}


# -- the report -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TimingPath:
    delay_ns: float
    start: str            # the signal it starts at (yosys/Verilog name) and the cell kind
    end: str
    cells: tuple[str, ...]  # cell types along the path, start to end
    through: tuple[str, ...] = ()  # the signals it passes, start to end (named like start/end)

    def to_dict(self) -> dict:
        return {"delay_ns": round(self.delay_ns, 3), "fmax_mhz": round(1e3 / self.delay_ns, 1),
                "start": self.start, "end": self.end, "levels": _levels(self.cells),
                "cells": list(self.cells), "through": list(self.through)}


@dataclass
class TimingReport:
    model: DelayModel
    paths: list[TimingPath]               # worst first, one per end signal
    cells: int
    unknown_cells: dict[str, int] = field(default_factory=dict)
    loops_broken: int = 0                 # combinational cells left out of a cycle
    unregistered: list[str] = field(default_factory=list)  # unregistered_multipliers()

    @property
    def critical_ns(self) -> float:
        return self.paths[0].delay_ns if self.paths else 0.0

    @property
    def fmax_mhz(self) -> float | None:
        return 1e3 / self.critical_ns if self.paths else None

    def to_dict(self) -> dict:
        fmax = self.fmax_mhz
        return {"fmax_mhz": round(fmax, 1) if fmax else None,
                "critical_path_ns": round(self.critical_ns, 3),
                "family": self.model.family, "speed_grade": self.model.speed_grade,
                "datasheet": self.model.datasheet, "cells": self.cells,
                "unknown_cells": dict(sorted(self.unknown_cells.items())),
                "loops_broken": self.loops_broken,
                "unregistered_multipliers": self.unregistered,
                "paths": [p.to_dict() for p in self.paths],
                "model": self.model.figures()}


def _levels(cells: tuple[str, ...]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for c in cells[1:-1] if len(cells) > 1 else ():
        out[_kind(c)] += 1
    return dict(out)


def _kind(cell_type: str) -> str:
    if cell_type.startswith("LUT") or cell_type == "INV":
        return "LUT"
    if cell_type.startswith("CARRY"):
        return "CARRY"
    if cell_type.startswith("MUXF"):
        return "MUXF"
    if cell_type.startswith("DSP48"):
        return "DSP"
    return cell_type


def format_report(report: TimingReport, *, title: str = "", clock_mhz: float | None = None,
                  top: int = 10, through: int = 3) -> str:
    """The report as text; the first `through` paths also list the signals they pass."""
    m = report.model
    lines = [title] if title else []
    fmax = report.fmax_mhz
    if fmax is None:
        lines.append("no register-to-register path found")
    else:
        verdict = ""
        if clock_mhz is not None:
            verdict = (f"  (meets the {clock_mhz:g} MHz clock)" if fmax >= clock_mhz else
                       f"  (BELOW the {clock_mhz:g} MHz clock)")
        lines.append(f"estimated Fmax {fmax:.1f} MHz: critical path {report.critical_ns:.2f} ns"
                     f"{verdict}")
    lines.append(f"model: {m.family} speed grade {m.speed_grade}, {m.datasheet}; "
                 f"{report.cells} cells; an unplaced estimate, not Vivado's placed figure")
    if report.unknown_cells:
        lines.append("cells without a timing model (treated as one LUT level): "
                     + ", ".join(f"{c} {n}" for c, n in sorted(report.unknown_cells.items())))
    if report.loops_broken:
        lines.append(f"{report.loops_broken} cell(s) in combinational cycles left out")
    if report.unregistered:
        lines.append(f"{len(report.unregistered)} multiplier(s) without registered operands and "
                     f"product, e.g. {report.unregistered[0]}")
    lines += ["", f"worst paths (one per end signal, top {min(top, len(report.paths))}):"]
    for i, p in enumerate(report.paths[:top], 1):
        lv = ", ".join(f"{n} {k}" for k, n in sorted(p.to_dict()["levels"].items())) or "direct"
        lines.append(f"{i:3d}. {p.delay_ns:6.2f} ns  {1e3 / p.delay_ns:6.1f} MHz  {p.start}  ->  "
                     f"{p.end}  [{lv}]")
        if i <= through and p.through:
            lines.append("       through: " + " > ".join(p.through))
    lines += ["", "delay model (ns):"]
    for k, v in m.figures().items():
        if "ns" in v:
            lines.append(f"  {k:20s} {v['ns']:6.3f}  {v['source']}")
    st = m.figures()["dsp_stage_ns"]
    lines.append(f"  DSP stages: pre-adder {st['preadd']:.3f}, multiplier {st['mult']:.3f}, "
                 f"ALU {st['alu']:.3f} ({st['source']})")
    return "\n".join(lines) + "\n"


# -- netlist ----------------------------------------------------------------------------------------
def load_netlist(path: str | Path, top: str | None = None) -> dict:
    """The top module of a yosys `write_json` netlist (the one with attribute top, or `top`)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise TimingError(f"{path}: cannot read the yosys netlist: {exc}") from None
    modules = data.get("modules") if isinstance(data, dict) else None
    if not isinstance(modules, dict) or not modules:
        raise TimingError(f"{path}: no modules in the yosys netlist")
    if top is not None and top in modules:
        return modules[top]
    tops = [m for m in modules.values() if str(m.get("attributes", {}).get("top", "0")).strip("0")]
    if len(tops) != 1 and len(modules) != 1:
        raise TimingError(f"{path}: cannot tell the top module (pass top=)")
    return tops[0] if tops else next(iter(modules.values()))


def _param(cell: dict, name: str, default=0):
    v = cell.get("parameters", {}).get(name)
    if v is None:
        return default
    if isinstance(v, int):
        return v
    s = str(v)
    return int(s, 2) if s and set(s) <= {"0", "1"} else s.strip()


# -- per-cell timing ------------------------------------------------------------------------------
@dataclass
class _CellTiming:
    comb: list[tuple[tuple[str, ...], tuple[str, ...], float]] = field(default_factory=list)
    launch: list[tuple[tuple[str, ...], float]] = field(default_factory=list)
    capture: list[tuple[tuple[str, ...], float]] = field(default_factory=list)
    internal: list[tuple[float, str, str]] = field(default_factory=list)  # (ns, from, to) stages


_FF = {"FDRE", "FDSE", "FDCE", "FDPE", "FDRE_1", "FDSE_1", "FDCE_1", "FDPE_1"}
_SRL = {"SRL16E", "SRLC16E", "SRLC32E"}
_BRAM = {"RAMB18E1", "RAMB36E1", "RAMB18E2", "RAMB36E2", "FIFO18E1", "FIFO36E1", "FIFO18E2",
         "FIFO36E2"}
_CLOCKS = re.compile(r"^(C|CLK|WCLK|CLKARDCLK|CLKBWRCLK|RDCLK|WRCLK|CLKA|CLKB|REGCLK\w*)$")
_ADDR = re.compile(r"^(A\d*|ADDR[A-H]|DPRA\d*|RADR\w*)$")
_FREE = {"GND", "VCC", "$scopeinfo", "BUFG", "BUFGCE", "IBUF", "OBUF", "IOBUF", "OBUFT"}
# DSP ports by where they enter: the A/B/D side (before the multiplier), or the ALU side.
_DSP_AB = {"A": "AREG", "ACIN": "AREG", "B": "BREG", "BCIN": "BREG", "D": "DREG",
           "INMODE": "INMODEREG"}
_DSP_ALU = {"C": "CREG", "OPMODE": "OPMODEREG", "ALUMODE": "ALUMODEREG", "CARRYIN": "CARRYINREG",
            "CARRYINSEL": "CARRYINSELREG", "PCIN": None, "CARRYCASCIN": None, "MULTSIGNIN": None}
_DSP_AB_OUT = {"ACOUT", "BCOUT"}
# Dedicated routes: no general routing delay between these (driver port, load port).
_DEDICATED = {("CO", "CI"), ("PCOUT", "PCIN"), ("ACOUT", "ACIN"), ("BCOUT", "BCIN"),
              ("CARRYCASCOUT", "CARRYCASCIN"), ("MULTSIGNOUT", "MULTSIGNIN"),
              ("CASDOUTA", "CASDINA"), ("CASDOUTB", "CASDINB")}


def _cell_timing(cell: dict, m: DelayModel) -> _CellTiming | None:
    """Timing arcs of one cell; None for a type without a model."""
    t = cell["type"]
    dirs = cell.get("port_directions", {})
    ins = tuple(p for p, d in dirs.items() if d == "input")
    outs = tuple(p for p, d in dirs.items() if d == "output")
    data_ins = tuple(p for p in ins if not _CLOCKS.match(p))
    ct = _CellTiming()
    if t in _FF:
        ct.launch.append((outs, m.ff_clk_to_q.ns))
        ct.capture.append((data_ins, m.ff_setup.ns))
    elif t.startswith("LUT") or t == "INV":
        ct.comb.append((ins, outs, m.lut.ns))
    elif t.startswith("MUXF"):
        ct.comb.append((ins, outs, m.muxf.ns))
    elif t in ("CARRY4", "CARRY8"):
        chain = tuple(p for p in ins if p in ("CI", "CI_TOP"))
        ct.comb.append((chain, outs, m.carry_through.ns))
        ct.comb.append((tuple(p for p in ins if p not in chain), outs, m.carry_in.ns))
    elif t in _SRL:
        ct.launch.append((outs, m.srl_clk_to_out.ns))
        ct.comb.append((tuple(p for p in ins if _ADDR.match(p)), outs, m.srl_addr.ns))
        ct.capture.append((tuple(p for p in data_ins if not _ADDR.match(p)), m.lutram_setup.ns))
    elif t.startswith("RAM") and t not in _BRAM:           # LUTRAM: RAM32M, RAM64X1D, ...
        ct.launch.append((outs, m.lutram_clk_to_out.ns))
        ct.comb.append((tuple(p for p in ins if _ADDR.match(p)), outs, m.lutram_read.ns))
        # Read-only addresses are no end point: RAM32M/64M's ADDRA..C (ADDRD writes), RAM32M16/
        # 64M8's ADDRA..G (ADDRH writes), the X1D's DPRA.
        letters = sorted(p for p in ins if re.fullmatch(r"ADDR[A-H]", p))
        read_only = set(letters[:-1]) | {p for p in ins if p.startswith("DPRA")}
        ct.capture.append((tuple(p for p in data_ins if p not in read_only), m.lutram_setup.ns))
    elif t in _BRAM:
        for port_reg in ("DOA_REG", "DOB_REG"):
            side = port_reg[2]
            mine = tuple(o for o in outs if _bram_side(o) == side)
            reg = _param(cell, port_reg) == 1
            ct.launch.append((mine, m.bram_clk_to_out_reg.ns if reg else m.bram_clk_to_out.ns))
        rest = tuple(o for o in outs if _bram_side(o) is None)
        ct.launch.append((rest, m.bram_clk_to_out.ns))
        ct.capture.append((data_ins, m.bram_setup.ns))
    elif t in ("DSP48E1", "DSP48E2"):
        _dsp_timing(cell, ins, outs, m, ct)
    else:
        return None
    return ct


def _unknown_timing(cell: dict, m: DelayModel) -> _CellTiming:
    """A cell type without a model: one LUT level from every input to every output."""
    dirs = cell.get("port_directions", {})
    return _CellTiming(comb=[(tuple(p for p, d in dirs.items() if d == "input"),
                              tuple(p for p, d in dirs.items() if d == "output"), m.lut.ns)])


def _bram_side(port: str) -> str | None:
    """'A' or 'B' for a block RAM data output (DOADO, DOUTBDOUT, CASDOUTA, ...), else None."""
    for side in "AB":
        if port in (f"DO{side}DO", f"DOP{side}DOP", f"DOUT{side}DOUT", f"DOUTP{side}DOUTP",
                    f"CASDOUT{side}", f"CASDOUTP{side}"):
            return side
    return None


def _dsp_timing(cell: dict, ins, outs, m: DelayModel, ct: _CellTiming) -> None:
    """A DSP48 as its stages: 1 input registers, 2 ADREG, 3 MREG, 4 PREG (the output)."""
    preadd = (str(_param(cell, "USE_DPORT", "FALSE")).upper() == "TRUE"
              or _param(cell, "AMULTSEL", "A") == "AD" or _param(cell, "BMULTSEL", "B") == "AD")
    mult = str(_param(cell, "USE_MULT", "MULTIPLY")).upper() != "NONE"
    seg = {2: m.dsp_preadd if preadd else 0.0, 3: m.dsp_mult if mult else 0.0, 4: m.dsp_alu}
    reg = {2: preadd and _param(cell, "ADREG") > 0, 3: mult and _param(cell, "MREG") > 0,
           4: _param(cell, "PREG") > 0}
    p_outs = tuple(o for o in outs if o not in _DSP_AB_OUT)
    ab_outs = tuple(o for o in outs if o in _DSP_AB_OUT)
    name = {1: "input registers", 2: "ADREG", 3: "MREG", 4: "PREG"}

    def walk(frm: int, delay: float):
        """From stage `frm` on: (delay to the next register, its stage) or (delay to P, None)."""
        for s in range(frm + 1, 5):
            delay += seg[s]
            if reg[s]:
                return delay, s
        return delay, None

    ab_regs = [p for p, r in _DSP_AB.items() if p in ins and _param(cell, r) > 0]
    for port in ins:
        if port in _DSP_AB:
            r = _DSP_AB[port]
            if _param(cell, r) > 0:
                ct.capture.append(((port,), m.dsp_setup.ns))
                continue
            ct.comb.append(((port,), ab_outs, 0.0))
            frm = 1
        elif port in _DSP_ALU:
            r = _DSP_ALU[port]
            if r is not None and _param(cell, r) > 0:
                ct.capture.append(((port,), m.dsp_setup.ns))
                continue
            frm = 3
        else:
            if not _CLOCKS.match(port):                        # CE*, RST*: register controls
                ct.capture.append(((port,), m.dsp_setup.ns))
            continue
        delay, stage = walk(frm, 0.0)
        if stage is None:
            ct.comb.append(((port,), p_outs, delay))
        else:
            ct.capture.append(((port,), delay + m.dsp_setup.ns))
    # Registered stages launch: into the next register (an internal path) or out to P.
    launches = ([1] if ab_regs else []) + [s for s in (2, 3, 4) if reg[s]]
    alu_regs = any(_param(cell, r) > 0 for p, r in _DSP_ALU.items() if r and p in ins)
    if alu_regs and not reg[4]:
        ct.launch.append((p_outs, m.dsp_clk_to_out.ns + m.dsp_alu))
    if ab_regs:
        ct.launch.append((ab_outs, m.dsp_clk_to_out.ns))
    for s in launches:
        if s == 4:
            ct.launch.append((p_outs, m.dsp_clk_to_out.ns))
            continue
        delay, nxt = walk(s, 0.0)
        if nxt is None:
            ct.launch.append((p_outs, m.dsp_clk_to_out.ns + delay))
        else:
            ct.internal.append((delay, name[s], name[nxt]))


# -- the analysis -----------------------------------------------------------------------------------
def analyse(netlist: dict, family: str, *, verilog: str | None = None, top_n: int = 20) -> TimingReport:
    """Worst register-to-register paths of one flattened module (`load_netlist`) under
    MODELS[family]. `verilog`: the synthesised source, to name paths by their registers."""
    if family not in MODELS:
        raise TimingError(f"no timing model for family {family!r} (known: {', '.join(MODELS)})")
    m = MODELS[family]
    cells = netlist.get("cells", {})
    namer = _Namer(verilog, netlist)

    names, types, timings = [], [], []
    arcs: dict[tuple, tuple[_CellTiming, bool]] = {}
    unknown: dict[str, int] = defaultdict(int)
    driver: dict[int, tuple[int, str]] = {}
    loads: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for cname, cell in cells.items():
        t = cell.get("type", "")
        if t in _FREE:
            continue
        # Arcs depend on the type, the ports and (DSP, BRAM) the parameters: shared, not rebuilt.
        key = (t, tuple(cell.get("port_directions", {}).items()),
               tuple(cell.get("parameters", {}).items()) if t in _BRAM or t.startswith("DSP")
               else ())
        if key not in arcs:
            modelled = _cell_timing(cell, m)
            arcs[key] = (modelled or _unknown_timing(cell, m), modelled is None)
        ct, no_model = arcs[key]
        if no_model:
            unknown[t] += 1
        i = len(names)
        names.append(cname)
        types.append(t)
        timings.append(ct)
        dirs = cell.get("port_directions", {})
        for port, bits in cell.get("connections", {}).items():
            for b in bits:
                if not isinstance(b, int):
                    continue
                if dirs.get(port) == "output":
                    driver[b] = (i, port)
                else:
                    loads[b].append((i, port))

    fanout = {b: len(v) for b, v in loads.items()}

    # Arrival at every driven bit; pred[bit] = (input bit, cell index) that set it.
    arr: dict[int, float] = {}
    pred: dict[int, tuple[int | None, int]] = {}
    for i, ct in enumerate(timings):
        conns = cells[names[i]]["connections"]
        for ports, cko in ct.launch:
            for p in ports:
                for b in conns.get(p, ()):
                    if isinstance(b, int) and cko > arr.get(b, -1.0):
                        arr[b] = cko
                        pred[b] = (None, i)

    types_is_muxf = [t.startswith("MUXF") for t in types]

    def pin_arrival(bit: int, cell_i: int, port: str) -> float | None:
        a = arr.get(bit)
        if a is None:
            return None
        d = driver.get(bit)
        if d is None:
            return a
        if (d[1], port) in _DEDICATED or (types_is_muxf[cell_i] and port in ("I0", "I1")):
            return a
        return a + m.net.ns + m.net_fanout.ns * math.log2(max(1, fanout.get(bit, 1)))

    # Kahn over combinational cells: a cell is ready when every comb input's driver is done.
    pending = [0] * len(timings)
    waiting: dict[int, list[int]] = defaultdict(list)   # driver cell -> comb cells waiting on it
    is_comb_out: dict[int, bool] = {}
    for i, ct in enumerate(timings):
        conns = cells[names[i]]["connections"]
        for _ins, outs, _d in ct.comb:
            for p in outs:
                for b in conns.get(p, ()):
                    if isinstance(b, int):
                        is_comb_out[b] = True
    for i, ct in enumerate(timings):
        conns = cells[names[i]]["connections"]
        bits = sorted({b for ins, _o, _d in ct.comb for p in ins for b in conns.get(p, ())
                       if isinstance(b, int)})
        deps = {driver[b][0] for b in bits if b in driver and is_comb_out.get(b)}
        deps.discard(i)
        pending[i] = len(deps)
        for d in deps:
            waiting[d].append(i)
    ready = [i for i, ct in enumerate(timings) if ct.comb and pending[i] == 0]
    done = 0
    while ready:
        i = ready.pop()
        done += 1
        ct = timings[i]
        conns = cells[names[i]]["connections"]
        for ins, outs, delay in ct.comb:
            best, best_bit = None, None
            for p in ins:
                for b in conns.get(p, ()):
                    if isinstance(b, int):
                        a = pin_arrival(b, i, p)
                        if a is not None and (best is None or a > best):
                            best, best_bit = a, b
            if best is None:
                continue
            for p in outs:
                for b in conns.get(p, ()):
                    if isinstance(b, int) and best + delay > arr.get(b, -1.0):
                        arr[b] = best + delay
                        pred[b] = (best_bit, i)
        for j in waiting.get(i, ()):
            pending[j] -= 1
            if pending[j] == 0:
                ready.append(j)
    n_comb = sum(1 for ct in timings if ct.comb)
    loops = n_comb - done

    # End points: the worst arrival + setup per end signal.
    worst: dict[str, tuple[float, int, int, str]] = {}
    for i, ct in enumerate(timings):
        conns = cells[names[i]]["connections"]
        for ports, setup in ct.capture:
            for p in ports:
                for b in conns.get(p, ()):
                    if not isinstance(b, int):
                        continue
                    a = pin_arrival(b, i, p)
                    if a is None:
                        continue
                    key = namer.cell(cells[names[i]], types[i], p, names[i], b)
                    if key not in worst or a + setup > worst[key][0]:
                        worst[key] = (a + setup, b, i, p)
        for delay, frm, to in ct.internal:
            nm = namer.cell(cells[names[i]], types[i], "P", names[i])
            key = f"{nm} ({to})"
            if key not in worst or delay > worst[key][0]:
                worst[key] = (delay, -1, i, f"{frm}->{to}")

    paths = []
    for key, (delay, bit, i, port) in sorted(worst.items(), key=lambda kv: -kv[1][0])[:top_n]:
        if bit == -1:
            nm = key.rsplit(" (", 1)[0]
            frm = port.split("->")[0]
            paths.append(TimingPath(delay, f"{nm} ({frm})", key, (types[i], types[i])))
            continue
        chain = [types[i]]
        via: list[str] = []
        b, start = bit, None
        for _ in range(100000):                       # bounded: a path is at most every cell
            pb, ci = pred[b]
            chain.append(types[ci])
            if pb is not None:
                nm = namer.cell(cells[names[ci]], types[ci], "", names[ci], b).rsplit(" (", 1)[0]
                # yosys's own cells (ABC's LUTs, reintegrated carries) name nothing a reader knows
                if not nm.startswith("$") and ".cc:" not in nm and "genblk" not in nm and (not via or via[-1] != nm):
                    via.append(nm)
            if pb is None:
                start = namer.cell(cells[names[ci]], types[ci], driver[b][1] if b in driver else "",
                                   names[ci], b)
                break
            b = pb
        paths.append(TimingPath(delay, start or "?", key, tuple(reversed(chain)),
                                tuple(reversed(via))))
    return TimingReport(m, paths, len(names), dict(unknown), loops,
                        unregistered_multipliers(netlist, verilog))


def unregistered_multipliers(netlist: dict, verilog: str | None = None) -> list[str]:
    """The DSP48 multipliers whose operands or product are not registered, one line each.

    Registered means by the DSP's own registers (AREG/BREG, MREG or PREG) or by fabric flip-flops
    right at its pins (yosys 0.70 does not pack registers into DSP48E2; Vivado does): every
    operand bit comes from an FD* output, a constant or the P output of a DSP48 whose product is
    registered in it (MREG or PREG: yosys packs a product's register into the DSP48E1 on xc7, so a
    product of products is fed by that register through the DSP's own ALU, whose delay the
    paths count), and the product bits go only to FD* inputs (a product only cascaded on
    through PCOUT is not registered).
    """
    cells = netlist.get("cells", {})
    namer = _Namer(verilog, netlist)
    driver_type: dict[int, str] = {}
    load_types: dict[int, set[str]] = defaultdict(set)
    for cell in cells.values():
        dirs = cell.get("port_directions", {})
        dsp_p_register = cell["type"].startswith("DSP48") and (_param(cell, "PREG") == 1
                                                               or _param(cell, "MREG") == 1)
        for port, bits in cell.get("connections", {}).items():
            for b in bits:
                if isinstance(b, int):
                    if dirs.get(port) == "output":
                        # a registered DSP output counts as a flip-flop's
                        driver_type[b] = "FDRE" if dsp_p_register and port == "P" else cell["type"]
                    else:
                        load_types[b].add(cell["type"])
    out = []
    for cname, cell in cells.items():
        if not cell["type"].startswith("DSP48") or \
                str(_param(cell, "USE_MULT", "MULTIPLY")).upper() == "NONE":
            continue
        conns = cell.get("connections", {})

        def fed_by_ffs(port: str) -> bool:
            return all(not isinstance(b, int) or driver_type.get(b) in _FF
                       for b in conns.get(port, ()))

        problems = [f"{port} not registered" for port, reg in (("A", "AREG"), ("B", "BREG"))
                    if port in conns and _param(cell, reg) == 0 and not fed_by_ffs(port)]
        if _param(cell, "MREG") == 0 and _param(cell, "PREG") == 0:
            used = [b for b in conns.get("P", ()) if isinstance(b, int) and load_types.get(b)]
            if not used or not all(load_types[b] <= _FF for b in used):
                problems.append("product not registered")
        if problems:
            out.append(f"{namer.cell(cell, cell['type'], '', cname)}: {', '.join(problems)}")
    return sorted(out)


class _Namer:
    """Readable names for cells: a public net name on the pin, else the Verilog statement at the
    cell's `src` line (the register it assigns), else the cell type and yosys name."""

    _ASSIGN = re.compile(r"^\s*(?:assign\s+)?\\?([^\s\[=<]+)\s*(\[[^\]]*\])?\s*<?=(?!=)")
    _DECL = re.compile(r"^\s*(?:reg|wire)\s*(?:signed\s*)?(?:\[[^\]]*\]\s*)?\\?([^\s\[;=]+)")

    def __init__(self, verilog: str | None, netlist: dict) -> None:
        self.lines = verilog.splitlines() if verilog else []
        # Where each module starts: names get the module's path (core.rq.sum1), the top's
        # own name (the first module) left off.
        self.modules: list[tuple[int, str]] = []
        top = None
        for k, ln in enumerate(self.lines, 1):
            if ln.startswith("module "):
                mod = ln[7:].split("(")[0].strip().lstrip("\\")
                top = top or mod
                self.modules.append((k, mod[len(top) + 1:] if mod.startswith(top + ".") else ""))
        self.public: dict[int, str] = {}
        for name, net in netlist.get("netnames", {}).items():
            if net.get("hide_name", 1) or name.startswith("$"):
                continue
            for k, b in enumerate(net.get("bits", ())):
                if isinstance(b, int):
                    self.public.setdefault(b, name if len(net["bits"]) == 1 else f"{name}[{k}]")
        self.cache: dict[str, str] = {}

    def cell(self, cell: dict, cell_type: str, port: str, cell_name: str = "",
             bit: int | None = None) -> str:
        """`name (TYPE.port)`: the Verilog statement at the cell's src line, else the cell's own
        name when public (memories: `big.0.0`), else a public net on `bit`, else yosys's name."""
        src = str(cell.get("attributes", {}).get("src", ""))
        key = f"{src}|{cell_type}|{port}|{cell_name if '/share/' in src or not src else ''}"
        if key not in self.cache:
            name = self._from_src(src)
            if name is None and cell_name and not cell_name.startswith("$"):
                name = cell_name
            if name is None:                  # a public net on the pin, or on the cell's output
                dirs = cell.get("port_directions", {})
                outs = [b for p, d in dirs.items() if d == "output"
                        for b in cell.get("connections", {}).get(p, ())]
                name = next((re.sub(r"\[\d+\]$", "", self.public[b]) for b in [bit, *outs]
                             if b in self.public), None)
            if name is None:
                name = cell_name[-40:] or "?"
            self.cache[key] = f"{name} ({cell_type}{'.' + port if port else ''})"
        return self.cache[key]

    def _from_src(self, src: str) -> str | None:
        for part in src.split("|"):
            mt = re.match(r"^(.*?):(\d+)\.\d+-(\d+)\.\d+$", part)
            if not mt or "/share/" in mt.group(1) or not self.lines:
                continue
            lo, hi = int(mt.group(2)), int(mt.group(3))
            k = bisect.bisect_right(self.modules, (lo, "\uffff")) - 1
            prefix = self.modules[k][1] + "." if k >= 0 and self.modules[k][1] else ""
            name = self._statement(self.lines[lo - 1: min(hi, lo + 40)])
            return prefix + name if name else None
        return None

    def _statement(self, text: list[str]) -> str | None:
        for ln in text:
            a = self._ASSIGN.match(ln)
            if a and not ln.lstrip().startswith(("always", "if", "case", "end", "begin")):
                if a.group(1).startswith("$"):      # an unnamed temporary: say what it is
                    rhs = " ".join(ln[a.end():].rstrip(" ;").replace("\\", "").split())
                    return f"{a.group(1)} = {rhs[:48]}"
                return a.group(1)
        for ln in text:
            d = self._DECL.match(ln)
            if d:
                return d.group(1)
        return " ".join(" ".join(text).split())[:60] or None


# -- one Verilog file, from the command line --------------------------------------------------------
def estimate_verilog(verilog: str | Path, top: str, family: str, *,
                     timeout_s: float | None = None) -> TimingReport:
    """Synthesise one Verilog file as `hwconv generate` does (resources.synthesize) and estimate
    its timing: for checking one unit of the engine without generating the whole design."""
    import tempfile

    from . import resources

    verilog = Path(verilog)
    with tempfile.TemporaryDirectory(prefix="hwconv-timing-") as scratch:
        netlist = Path(scratch) / "netlist.json"
        try:
            resources.synthesize(verilog, top, family, timeout_s=timeout_s, netlist_path=netlist)
        except resources.SynthError as exc:
            raise TimingError(str(exc)) from None
        return analyse(load_netlist(netlist, top), family, verilog=verilog.read_text())


def main(argv: list[str] | None = None) -> int:
    """python -m hwconv.rtl.timing DESIGN.v --top NAME --family xcup|xc7 [--clock MHZ] [-n N]"""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m hwconv.rtl.timing", description=(
        "Timing estimate of one Verilog file on yosys's synth_xilinx netlist"))
    ap.add_argument("verilog")
    ap.add_argument("--top", required=True, help="top module name")
    ap.add_argument("--family", required=True, choices=sorted(MODELS))
    ap.add_argument("--clock", type=float, default=None, help="target clock in MHz, for the verdict")
    ap.add_argument("-n", type=int, default=10, help="paths to list (default 10)")
    args = ap.parse_args(argv)
    if not Path(args.verilog).is_file():
        print(f"error: {args.verilog}: no such Verilog file", file=sys.stderr)
        return 2
    try:
        report = estimate_verilog(args.verilog, args.top, args.family)
    except TimingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_report(report, title=f"{args.top} ({args.verilog})", clock_mhz=args.clock,
                        top=args.n), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
