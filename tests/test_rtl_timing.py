"""Timing: the clock every speed figure uses (hwconv.rtl.clock) and the netlist timing estimate
(hwconv.rtl.timing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hwconv.boards import load_board, parse_board
from hwconv.rtl.clock import ClockError, clock_for
from hwconv.spec import EngineConfig

U96 = load_board("ultra96v2")


def _board_text(name: str, fmax: float | None, config_hash: str = "") -> str:
    text = (Path(__file__).parents[1] / "hwconv" / "boards" / f"{name}.toml").read_text()
    if "[timing]" in text:
        text = text[: text.index("[timing]")]
    if fmax is not None:
        text += f'\n[timing]\nestimated_fmax_mhz = {fmax}\nconfig_hash = "{config_hash}"\nreport = "ref.txt"\n'
    return text


def _u96(fmax: float | None, config_hash: str | None = None):
    h = config_hash or f"0x{U96.default_engine_config().config_hash:08x}"
    return parse_board(_board_text("ultra96v2", fmax, h), source="u96.toml")


# ==================================================================================================
# clock_for
# ==================================================================================================
def test_estimate_below_the_board_clock_is_the_clock():
    clk = clock_for(_u96(55.25))
    mhz, source = clk
    assert mhz == 55.25 and clk.board_mhz == 250.0 and clk.limited_by_timing and clk.verified
    assert "estimated Fmax" in source and "below the 250 MHz board clock" in source and "ref.txt" in source


def test_estimate_above_the_board_clock_keeps_the_board_clock():
    clk = clock_for(_u96(312.0))
    assert clk.mhz == 250.0 and clk.fmax_mhz == 312.0 and not clk.limited_by_timing
    assert clk.source.startswith("250 MHz, the board clock (estimated Fmax 312.0 MHz")


def test_no_estimate_is_labelled_unverified():
    clk = clock_for(_u96(None))
    assert (clk.mhz, clk.fmax_mhz, clk.verified) == (250.0, None, False)
    assert "unverified" in clk.source and "no timing estimate" in clk.source
    assert clk.to_dict()["estimated_fmax_mhz"] is None


def test_reference_for_another_config_is_not_used():
    clk = clock_for(_u96(55.0, "0x00000000"))
    assert clk.mhz == 250.0 and not clk.verified and "another engine config" in clk.source
    other = clock_for(_u96(55.0), U96.default_engine_config().with_(pe_in=8, pe_out=8))
    assert not other.verified


def test_config_alone_finds_the_catalog_board():
    for board in ("ultra96v2", "pynq_z2"):
        b = load_board(board)
        assert clock_for(b.default_engine_config()) == clock_for(b)
    assert not clock_for(EngineConfig(pe_in=4, pe_out=4)).verified


def _report(tmp_path, config: EngineConfig, fmax=80.0, family="xcup", **extra) -> Path:
    path = tmp_path / "timing.json"
    path.write_text(json.dumps({"fmax_mhz": fmax, "family": family, "engine_config": config.to_dict(), **extra}))
    return path


def test_generate_report_overrides_the_reference(tmp_path):
    cfg = U96.default_engine_config()
    clk = clock_for(_u96(55.0), timing_report=_report(tmp_path, cfg.with_(clock_mhz=200.0)))
    assert clk.mhz == 80.0 and str(tmp_path / "timing.json") in clk.source
    assert clk.to_dict()["estimated_fmax_mhz"] == 80.0


@pytest.mark.parametrize("change,field", [
    (dict(fmax=-1), "fmax_mhz"), (dict(fmax="fast"), "fmax_mhz"), (dict(family="xc7"), "family"),
    (dict(config=EngineConfig(pe_in=8, pe_out=8)), "engine_config"),
])
def test_mismatched_report_is_refused(tmp_path, change, field):
    cfg = change.pop("config", U96.default_engine_config())
    path = _report(tmp_path, cfg, **change)
    with pytest.raises(ClockError, match=rf"^{path}: .*'{field}'"):
        clock_for(U96, timing_report=path)


def test_unreadable_report_is_one_line(tmp_path):
    with pytest.raises(ClockError, match="cannot read timing report"):
        clock_for(U96, timing_report=tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ClockError, match="not JSON"):
        clock_for(U96, timing_report=tmp_path / "bad.json")


# ==================================================================================================
# The path search on hand-made netlists (exact delays under the model's own figures)
# ==================================================================================================
from hwconv.rtl.timing import MODELS, TimingError, analyse, format_report, load_netlist  # noqa: E402

XCUP = MODELS["xcup"]
XC7 = MODELS["xc7"]
CLK, RST = 1, 2


class Net:
    """A tiny yosys `write_json` module built by hand: bits are numbered as cells are added."""

    def __init__(self):
        self.cells, self.next_bit, self.n = {}, 10, 0

    def bit(self) -> int:
        self.next_bit += 1
        return self.next_bit

    def cell(self, type_, ins: dict, outs: dict, src: str = "", **params) -> dict:
        self.n += 1
        conns = {**{p: (b if isinstance(b, list) else [b]) for p, b in ins.items()},
                 **{p: (b if isinstance(b, list) else [b]) for p, b in outs.items()}}
        dirs = {**{p: "input" for p in ins}, **{p: "output" for p in outs}}
        self.cells[f"$c{self.n}"] = {"type": type_, "parameters": {k: format(v, "032b") if isinstance(v, int)
                                                                   else v for k, v in params.items()},
                                     "attributes": {"src": src} if src else {},
                                     "port_directions": dirs, "connections": conns}
        return self.cells[f"$c{self.n}"]

    def ff(self, d: int, src: str = "") -> int:
        q = self.bit()
        self.cell("FDRE", {"C": CLK, "CE": "1", "R": "0", "D": d}, {"Q": q}, src)
        return q

    def lut(self, *ins: int) -> int:
        o = self.bit()
        self.cell(f"LUT{len(ins)}", {f"I{k}": b for k, b in enumerate(ins)}, {"O": o})
        return o

    def module(self) -> dict:
        return {"cells": self.cells, "netnames": {}}


def net(fanout: int = 1, m=XCUP) -> float:
    import math
    return m.net.ns + m.net_fanout.ns * math.log2(fanout)


def test_two_luts_between_registers():
    n = Net()
    q = n.ff(n.bit())
    n.ff(n.lut(n.lut(q)))
    r = analyse(n.module(), "xcup")
    want = XCUP.ff_clk_to_q.ns + 3 * net() + 2 * XCUP.lut.ns + XCUP.ff_setup.ns
    assert r.critical_ns == pytest.approx(want, abs=1e-9)
    assert r.fmax_mhz == pytest.approx(1e3 / want)
    assert r.paths[0].to_dict()["levels"] == {"LUT": 2}


def test_the_longer_of_two_paths_and_the_fanout_term():
    n = Net()
    q = n.ff(n.bit())
    short = n.lut(q)                                     # q drives three LUTs: fanout 3
    long_ = n.lut(n.lut(n.lut(q), q), short)
    n.ff(long_)
    r = analyse(n.module(), "xcup")
    # q -> LUT -> LUT -> LUT -> FF: the first hop has fanout 3, later hops fanout 1.
    want = XCUP.ff_clk_to_q.ns + net(3) + 3 * XCUP.lut.ns + 2 * net() + net() + XCUP.ff_setup.ns
    assert r.critical_ns == pytest.approx(want, abs=1e-9)
    assert net(3) > net(1)


def test_carry_chain_links_are_dedicated_routes():
    n = Net()
    q = n.ff(n.bit())
    co1, o1 = n.bit(), n.bit()
    n.cell("CARRY8", {"CI": "0", "S": [q] + ["0"] * 7, "DI": ["0"] * 8}, {"CO": [n.bit()] * 0 + [co1], "O": [o1]})
    o2 = n.bit()
    n.cell("CARRY8", {"CI": co1, "S": ["0"] * 8, "DI": ["0"] * 8}, {"CO": [n.bit()], "O": [o2]})
    n.ff(o2)
    r = analyse(n.module(), "xcup")
    want = (XCUP.ff_clk_to_q.ns + net() + XCUP.carry_in.ns + XCUP.carry_through.ns + net()
            + XCUP.ff_setup.ns)                               # no net delay on CO -> CI
    assert r.critical_ns == pytest.approx(want, abs=1e-9)
    assert r.paths[0].to_dict()["levels"] == {"CARRY": 2}


def _dsp(n: Net, a: int, p: int, type_="DSP48E2", **regs) -> None:
    params = {"AREG": 0, "BREG": 0, "CREG": 0, "DREG": 0, "ADREG": 0, "MREG": 0, "PREG": 0,
              "INMODEREG": 0, "OPMODEREG": 0, "ALUMODEREG": 0, "CARRYINREG": 0, "CARRYINSELREG": 0,
              "USE_MULT": "MULTIPLY", "AMULTSEL": "A", **regs}
    n.cell(type_, {"CLK": CLK, "A": [a] + ["0"] * 29, "B": ["1"] * 18, "OPMODE": ["0"] * 9},
           {"P": [p] + [n.bit() for _ in range(3)]}, src="", **params)


def test_unregistered_dsp_is_combinational_delay():
    n = Net()
    q, p = n.ff(n.bit()), n.bit()
    _dsp(n, q, p)
    n.ff(p)
    r = analyse(n.module(), "xcup")
    want = XCUP.ff_clk_to_q.ns + net() + XCUP.dsp_mult + XCUP.dsp_alu + net() + XCUP.ff_setup.ns
    assert r.critical_ns == pytest.approx(want, abs=1e-9)
    assert r.paths[0].cells == ("FDRE", "DSP48E2", "FDRE")


def test_fully_registered_dsp_is_its_own_start_and_end():
    n = Net()
    q, p = n.ff(n.bit()), n.bit()
    _dsp(n, q, p, AREG=1, BREG=1, MREG=1, PREG=1, OPMODEREG=1)
    n.ff(p)
    r = analyse(n.module(), "xcup")
    # The multiplier stage (input registers -> MREG) is the slowest: DS925's 645 MHz row.
    assert r.fmax_mhz == pytest.approx(645.0)
    assert "MREG" in r.paths[0].end
    ends = {p.end: p.delay_ns for p in r.paths}
    into_areg = [d for e, d in ends.items() if "DSP48E2.A" in e]
    assert into_areg == [pytest.approx(XCUP.ff_clk_to_q.ns + net() + XCUP.dsp_setup.ns)]
    out_of_preg = XCUP.dsp_clk_to_out.ns + net() + XCUP.ff_setup.ns
    assert any(d == pytest.approx(out_of_preg) for d in ends.values())


@pytest.mark.parametrize("family,regs,mhz", [
    ("xcup", dict(AREG=1, BREG=1, PREG=1), None),       # no MREG: mult + ALU in one stage
    ("xc7", dict(AREG=1, BREG=1, MREG=1, PREG=1), 464.0),
])
def test_dsp_stage_delays_come_from_the_fmax_rows(family, regs, mhz):
    n = Net()
    q, p = n.ff(n.bit()), n.bit()
    _dsp(n, q, p, type_="DSP48E2" if family == "xcup" else "DSP48E1", **regs)
    n.ff(p)
    m = MODELS[family]
    r = analyse(n.module(), family)
    if mhz is None:
        assert r.critical_ns == pytest.approx(m.dsp_mult + m.dsp_alu)
        assert m.dsp_mult + m.dsp_alu + m.dsp_preadd == pytest.approx(1e3 / 338)   # DS925 row
    else:
        assert r.fmax_mhz == pytest.approx(mhz)


@pytest.mark.parametrize("reg", [0, 1])
def test_bram_clock_to_out_depends_on_the_output_register(reg):
    n = Net()
    do = n.bit()
    n.cell("RAMB36E2", {"CLKARDCLK": CLK, "ADDRARDADDR": [n.bit()]}, {"DOUTADOUT": [do]}, DOA_REG=reg, DOB_REG=0)
    n.ff(do)
    r = analyse(n.module(), "xcup")
    cko = XCUP.bram_clk_to_out_reg.ns if reg else XCUP.bram_clk_to_out.ns
    assert r.critical_ns == pytest.approx(cko + net() + XCUP.ff_setup.ns)


def test_paths_are_named_by_the_registers_at_their_ends():
    verilog = "\n".join(["module t;", "  always @(posedge clk)", "    count <= \\$7 ;",
                         "  always @(posedge clk)", "    total[3:0] <= \\$9 ;", "endmodule"])
    n = Net()
    q = n.ff(n.bit(), src="design.v:2.3-3.20|/share/xilinx/ff_map.v:68.41-68.95")
    n.ff(n.lut(q), src="design.v:4.3-5.24")
    r = analyse(n.module(), "xcup", verilog=verilog)
    assert r.paths[0].start == "count (FDRE.Q)" and r.paths[0].end == "total (FDRE.D)"
    text = format_report(r, clock_mhz=250.0, title="t")
    assert "count (FDRE.Q)  ->  total (FDRE.D)" in text and "DS925" in text


def test_unknown_cells_and_cycles_are_reported_not_hidden():
    n = Net()
    q = n.ff(n.bit())
    o = n.bit()
    n.cell("MYSTERY", {"I": q}, {"O": o})
    n.ff(o)
    a, b = n.bit(), n.bit()                   # two LUTs feeding each other: a combinational loop
    n.cell("LUT1", {"I0": a}, {"O": b})
    n.cell("LUT1", {"I0": b}, {"O": a})
    r = analyse(n.module(), "xcup")
    assert r.unknown_cells == {"MYSTERY": 1} and r.loops_broken == 2
    assert r.critical_ns == pytest.approx(XCUP.ff_clk_to_q.ns + 2 * net() + XCUP.lut.ns + XCUP.ff_setup.ns)
    assert "MYSTERY 1" in format_report(r)


def test_bad_family_and_netlist_are_clear_errors(tmp_path):
    with pytest.raises(TimingError, match="no timing model for family 'xc9'"):
        analyse({"cells": {}}, "xc9")
    (tmp_path / "n.json").write_text("{")
    with pytest.raises(TimingError, match="cannot read the yosys netlist"):
        load_netlist(tmp_path / "n.json")


def test_every_model_figure_states_its_source():
    for m in MODELS.values():
        figs = m.figures()
        assert all(v["source"] for v in figs.values())
        assert all("DS925" in v["source"] or "DS187" in v["source"] or "estimate" in v["source"]
                   for k, v in figs.items() if k != "dsp_stage_ns")


# ==================================================================================================
# Real yosys on small Amaranth designs
# ==================================================================================================
from hwconv.toolchain import find_yosys  # noqa: E402

needs_yosys = pytest.mark.skipif(not find_yosys().found, reason="yosys not installed")


def _two_multipliers_verilog() -> str:
    """An unregistered multiply-add (operands registered, product and sum in one cycle) beside a
    registered multiplier (operands, product and output each registered)."""
    from amaranth import Elaboratable, Module, Signal
    from amaranth.back import verilog

    class TwoMultipliers(Elaboratable):
        def __init__(self):
            self.a, self.b, self.c = Signal(8), Signal(8), Signal(16)
            self.slow, self.fast = Signal(17), Signal(16)

        def elaborate(self, platform):
            m = Module()
            ua, ub, uc = Signal(8, name="ua"), Signal(8, name="ub"), Signal(16, name="uc")
            m.d.sync += [ua.eq(self.a), ub.eq(self.b), uc.eq(self.c), self.slow.eq(ua * ub + uc)]
            ra, rb = Signal(8, name="ra", reset_less=True), Signal(8, name="rb", reset_less=True)
            rp, rq = Signal(16, name="rp", reset_less=True), Signal(16, name="rq", reset_less=True)
            m.d.sync += [ra.eq(self.a), rb.eq(self.b), rp.eq(ra * rb), rq.eq(rp), self.fast.eq(rq)]
            return m

    d = TwoMultipliers()
    return verilog.convert(d, name="two", ports=[d.a, d.b, d.c, d.slow, d.fast], emit_src=False)


def _variant_fmax(report, names: set[str]) -> float:
    """Fmax of the paths that start or end at one of `names` (whole words)."""
    import re
    pat = re.compile(r"\b(" + "|".join(names) + r")\b")
    delays = [p.delay_ns for p in report.paths if pat.search(p.start) or pat.search(p.end)]
    assert delays, f"no path of {names} in {[(p.start, p.end) for p in report.paths]}"
    return 1e3 / max(delays)


def _synth_two(tmp_path, family):
    from hwconv.rtl.timing import estimate_verilog
    src = tmp_path / "two.v"
    src.write_text(_two_multipliers_verilog())
    return estimate_verilog(src, "two", family)


@needs_yosys
def test_real_netlist_registered_multiplier_is_faster_xc7(tmp_path):
    """yosys packs the registers into DSP48E1 (AREG/BREG/MREG/PREG): the registered multiplier's
    worst stage is DS187's all-registers Fmax; the multiply-add without MREG is slower."""
    r = _synth_two(tmp_path, "xc7")
    registered = _variant_fmax(r, {"ra", "rb", "rp", "rq", "fast"})
    unregistered = _variant_fmax(r, {"ua", "ub", "uc", "slow"})
    assert registered > unregistered
    assert registered == pytest.approx(1e3 / XC7.dsp_mult)           # 464 MHz: the MREG stage
    assert unregistered < 1e3 / (XC7.dsp_mult + XC7.dsp_alu) + 1e-6    # mult + ALU in one cycle


@needs_yosys
def test_command_line_estimate_of_one_file(tmp_path, capsys):
    from hwconv.rtl.timing import main
    src = tmp_path / "inv.v"
    src.write_text("module inv(input clk, input a, output reg q);\n  reg r;\n  always @(posedge clk)\n"
                   "    r <= a;\n  always @(posedge clk)\n    q <= ~r;\nendmodule\n")
    assert main([str(src), "--top", "inv", "--family", "xc7", "--clock", "100"]) == 0
    out = capsys.readouterr().out
    assert "estimated Fmax" in out and "(meets the 100 MHz clock)" in out and "r (FDRE.Q)" in out
    assert main([str(tmp_path / "missing.v"), "--top", "x", "--family", "xc7"]) == 2
    assert "missing.v: no such Verilog file" in capsys.readouterr().err


@pytest.mark.slow
@needs_yosys
def test_real_netlist_registered_multiplier_is_faster_xcup(tmp_path):
    """yosys 0.70 leaves DSP48E2 registers unused (fabric FFs around a combinational DSP); the
    multiply-add still has the longer path (DSP, then the adder's carry chain)."""
    r = _synth_two(tmp_path, "xcup")
    registered = _variant_fmax(r, {"ra", "rb", "rp", "rq", "fast"})
    unregistered = _variant_fmax(r, {"ua", "ub", "uc", "slow"})
    assert registered > unregistered
    assert r.paths[0].cells[0] == "FDRE" and "DSP48E2" in r.paths[0].cells


# ==================================================================================================
# The whole engine (issue 12's goals): real yosys, minutes each; the measured figure is printed
# ==================================================================================================
@pytest.mark.slow
@needs_yosys
@pytest.mark.parametrize("name,goal_mhz", [("ultra96v2", 250.0), ("pynq_z2", 150.0)])
def test_whole_engine_estimated_fmax_meets_the_goal(tmp_path, name, goal_mhz):
    from hwconv.rtl.generate import generate
    board = load_board(name)
    report = generate(board, board.default_engine_config(), tmp_path / "out", lint=False)
    est = report.timing
    print(f"\n{name}: estimated Fmax {est.fmax_mhz:.1f} MHz (goal {goal_mhz:g}); worst paths:\n"
          + "\n".join(f"  {p.delay_ns:.2f} ns {p.start} -> {p.end}" for p in est.paths[:5]))
    print(f"  multipliers without registered operands and product: {len(est.unregistered)}")
    assert est.fmax_mhz >= goal_mhz
    assert est.unregistered == []


def test_unregistered_multipliers_are_named():
    from hwconv.rtl.timing import unregistered_multipliers
    verilog = "\n".join(["module t;", "  assign \\$5 = x * y;", "endmodule"])
    n = Net()
    q, p = n.ff(n.bit()), n.bit()
    _dsp(n, q, p)                                       # FF -> DSP -> FF: registered in the fabric
    n.ff(p)
    q2, p2 = n.ff(n.bit()), n.bit()
    _dsp(n, n.lut(q2), p2)                              # A through a LUT, product into a LUT
    n.cells[f"$c{n.n}"]["attributes"]["src"] = "design.v:2.3-2.20"
    n.ff(n.lut(p2))
    q3, p3 = n.ff(n.bit()), n.bit()
    _dsp(n, n.lut(q3), p3, AREG=1, MREG=1)              # the DSP's own registers
    n.lut(p3)
    q4, p4 = n.ff(n.bit()), n.bit()
    _dsp(n, q4, p4, MREG=1)                             # a product in the DSP's own register ...
    p5 = n.bit()
    _dsp(n, p4, p5, type_="DSP48E1")                    # ... is a registered operand of the next
    n.ff(p5)
    p6 = n.bit()
    _dsp(n, p2, p6)                                     # an unregistered product is not
    n.ff(p6)
    found = unregistered_multipliers(n.module(), verilog)
    assert found[0] == "$5 = x * y (DSP48E2): A not registered, product not registered"
    assert len(found) == 2 and found[1].endswith("(DSP48E2): A not registered")  # p2 -> p6 only
    report = analyse(n.module(), "xcup", verilog=verilog)
    assert report.unregistered == found
    assert "2 multiplier(s) without registered operands" in format_report(report)


def test_names_fall_back_to_memory_cells_and_public_nets():
    n = Net()
    do = n.bit()
    n.cell("RAMB18E2", {"CLKARDCLK": CLK}, {"DOUTADOUT": [do]}, src="/share/xilinx/brams_xcu_map.v:1.1-2.2",
           DOA_REG=1, DOB_REG=0)
    n.cells["big.0.0"] = n.cells.pop(f"$c{n.n}")
    q = n.bit()
    n.cell("FDRE", {"C": CLK, "D": do}, {"Q": q}, src="/share/xilinx/ff_map.v:68.41-68.95")
    module = {**n.module(), "netnames": {"result": {"hide_name": 0, "bits": [q, n.bit()]}}}
    r = analyse(module, "xcup", verilog="module t;\nendmodule")
    assert (r.paths[0].start, r.paths[0].end) == ("big.0.0 (RAMB18E2.DOUTADOUT)", "result (FDRE.D)")


def test_lutram_read_addresses_are_not_end_points():
    n = Net()
    q = n.ff(n.bit())
    o = n.bit()
    n.cell("RAM32M", {"WCLK": CLK, "ADDRA": [q], "ADDRD": [q], "DIA": [q], "WE": "1"}, {"DOA": [o]})
    n.ff(o)
    r = analyse(n.module(), "xcup")
    ends = [p.end for p in r.paths]
    assert not any("ADDRA" in e for e in ends) and any("ADDRD" in e for e in ends)
    assert r.critical_ns == pytest.approx(XCUP.ff_clk_to_q.ns + net(3) + XCUP.lutram_read.ns + net()
                                          + XCUP.ff_setup.ns)


def test_names_carry_the_module_path():
    verilog = "\n".join(["module top(clk);", "endmodule", "module \\top.core.rq (clk);",
                         "  always @(posedge clk)", "    sum1 <= \\$5 ;", "endmodule"])
    n = Net()
    q = n.ff(n.bit(), src="design.v:4.3-5.20")
    n.ff(q, src="design.v:4.3-5.20")
    r = analyse(n.module(), "xcup", verilog=verilog)
    assert (r.paths[0].start, r.paths[0].end) == ("core.rq.sum1 (FDRE.Q)", "core.rq.sum1 (FDRE.D)")
