"""`generate`: Verilog + lint + resource report per board, atomic output, fit checks; EngineTop
running a program through its registers; yosys stat parsing."""

from __future__ import annotations

import importlib.resources
import json
import re
from pathlib import Path

import numpy as np
import pytest
from amaranth.sim import Simulator

from hwconv.boards.catalog import list_boards, load_board
from hwconv.rtl import generate as gen
from hwconv.rtl import resources
from hwconv.rtl.csr import ControlRegisters
from hwconv.rtl.generate import FitError, GenerateError, LintError, generate
from hwconv.rtl.resources import ResourceUsage, SynthError, SynthResult
from hwconv.rtl.top import EngineTop
from hwconv.spec import EngineConfig, SpecError
from hwconv.spec.registers import offset
from hwconv.toolchain import find_yosys, verilator_env

BOARDS = [b.name for b in list_boards()]
needs_verilator = pytest.mark.skipif(not verilator_env(), reason="verilator not installed")
needs_yosys = pytest.mark.skipif(not find_yosys().found, reason="yosys not installed")


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file (with its content) and folder under root, hidden ones too."""
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None
            for p in sorted(root.rglob("*"))}


def _chain_netlist(levels: int) -> dict:
    """A `write_json` netlist: a register, `levels` LUT1s, a register."""
    def cell(type_, ins, outs):
        return {"type": type_, "parameters": {}, "attributes": {},
                "port_directions": {**{p: "input" for p in ins}, **{p: "output" for p in outs}},
                "connections": {**{p: [b] for p, b in ins.items()}, **{p: [b] for p, b in outs.items()}}}
    cells = {"$ff0": cell("FDRE", {"C": 2, "CE": "1", "R": "0", "D": 3}, {"Q": 10})}
    for k in range(levels):
        cells[f"$lut{k}"] = cell("LUT1", {"I0": 10 + k}, {"O": 11 + k})
    cells["$ff1"] = cell("FDRE", {"C": 2, "CE": "1", "R": "0", "D": 10 + levels}, {"Q": 3})
    return {"modules": {"top": {"attributes": {"top": "00000000000000000000000000000001"},
                                "cells": cells, "netnames": {}}}}


def _fake_synth(usage: ResourceUsage, levels: int = 1):
    def synthesize(verilog, top, family, *, timeout_s=None, log_path=None, netlist_path=None):
        if log_path is not None:
            Path(log_path).write_text("fake yosys log\n")
        if netlist_path is not None:
            Path(netlist_path).write_text(json.dumps(_chain_netlist(levels)))
        return SynthResult(usage, {"LUT6": usage.lut_logic}, 0.1, "yosys (fake)", "synth_xilinx")
    return synthesize


# -- every board ---------------------------------------------------------------------------------
@needs_verilator
@pytest.mark.parametrize("name", BOARDS)
def test_generate_every_board(tmp_path, name):
    board = load_board(name)
    config = board.default_engine_config()
    report = generate(board, config, tmp_path / "out", synth=False)
    stem = board.artifact_stem(config)
    out = tmp_path / "out"
    assert report.top == stem and report.verilog == out / "rtl" / f"{stem}.v"
    assert sorted(p.relative_to(out).as_posix() for p in report.files) == [
        "reports/lint.txt", "rtl/engine_config.toml", "rtl/filelist.f", f"rtl/{stem}.v"]
    text = report.verilog.read_text()
    assert re.search(rf"^module {stem}\(", text, flags=re.M)
    assert (out / "rtl" / "filelist.f").read_text().split() == [f"{stem}.v"]
    assert EngineConfig.load(out / "rtl" / "engine_config.toml") == config
    lint = (out / "reports" / "lint.txt").read_text()
    assert "errors: 0" in lint and "%Error" not in lint
    assert report.lint_warnings is not None and report.synth is None
    assert any("synthesis skipped" in w for w in report.warnings)
    assert list(tmp_path.iterdir()) == [out]  # no staging folder left behind


def test_ports_are_vivado_style(tmp_path):
    board = load_board("ultra96v2")
    report = generate(board, board.default_engine_config(), tmp_path, synth=False, lint=False)
    header = re.search(r"^module \w+\(([^;]*)\);", report.verilog.read_text(), flags=re.M).group(1)
    ports = {p.strip() for p in header.split(",")}
    for channel in ("awaddr", "awvalid", "awready", "wdata", "wstrb", "bresp", "araddr", "rdata",
                    "rready"):
        assert f"s_axi_control_{channel}" in ports
    assert {"ap_clk", "ap_rst_n", "irq"} <= ports
    assert not any("__" in p for p in ports), ports


# -- refusals ------------------------------------------------------------------------------------
def test_axi_wider_than_hp_port_is_refused(tmp_path):
    board = load_board("pynq_z2")
    with pytest.raises(FitError, match=r"axi_data_width=128 is wider than TUL Pynq-Z2's 64-bit HP"):
        generate(board, board.default_engine_config().with_(axi_data_width=128), tmp_path / "o")
    assert not any(tmp_path.iterdir())


def test_non_square_array_is_refused_with_the_fix(tmp_path):
    board = load_board("ultra96v2")
    with pytest.raises(FitError, match=r"--pe 8x16: the engine's MAC array is square.*use 16x16"):
        generate(board, board.default_engine_config().with_(pe_in=8), tmp_path / "o")
    assert not any(tmp_path.iterdir())


def test_wide_addresses_refused_on_zynq7000(tmp_path):
    board = load_board("pynq_z2")
    with pytest.raises(SpecError, match="addr_width=40"):
        generate(board, board.default_engine_config().with_(addr_width=40), tmp_path / "o")


def test_clock_the_board_does_not_generate_is_a_warning():
    board = load_board("pynq_z2")
    warnings = gen.check_config(board, board.default_engine_config().with_(clock_mhz=125.0))
    assert any("125 MHz" in w and "FCLK_CLK0=100 MHz" in w for w in warnings)


def test_config_that_does_not_fit_is_refused(tmp_path, monkeypatch):
    board = load_board("ultra96v2")
    monkeypatch.setattr(resources, "synthesize", _fake_synth(ResourceUsage(lut_logic=100, ff=50,
                                                                           dsp=412, bram36=3.5)))
    out = tmp_path / "out"
    with pytest.raises(FitError, match=r"needs 412 DSP, Avnet Ultra96-V2 has 360") as info:
        generate(board, board.default_engine_config(), out, lint=False)
    assert "LUT" not in str(info.value)  # only what does not fit is named
    assert not out.exists() and not any(tmp_path.iterdir())


def test_tiny_board_file_names_every_resource_that_does_not_fit(tmp_path, monkeypatch):
    src = (importlib.resources.files("hwconv.boards") / "ultra96v2.toml").read_text()
    src = re.sub(r"dsp = \d+", "dsp = 2", src)
    src = re.sub(r"bram36 = \d+", "bram36 = 1", src)
    (tmp_path / "tiny.toml").write_text(src)
    board = load_board(tmp_path / "tiny.toml")
    monkeypatch.setattr(resources, "synthesize", _fake_synth(ResourceUsage(dsp=64, bram36=1.5)))
    with pytest.raises(FitError, match=r"needs 64 DSP, .* has 2; needs 1.5 BRAM36, .* has 1"):
        generate(board, board.default_engine_config(), tmp_path / "out", lint=False)


# -- atomicity -----------------------------------------------------------------------------------
def test_failure_during_synth_leaves_output_untouched(tmp_path, monkeypatch):
    board = load_board("ultra96v2")
    out = tmp_path / "out"
    generate(board, board.default_engine_config(), out, synth=False, lint=False)
    (out / "notes.txt").write_text("mine")
    before = _snapshot(tmp_path)

    def broken(*args, **kwargs):
        raise SynthError("yosys failed (exit 1): ERROR: something")
    monkeypatch.setattr(resources, "synthesize", broken)
    with pytest.raises(GenerateError, match="ERROR: something"):
        generate(board, board.default_engine_config().with_(pe_in=8, pe_out=8), out, lint=False)
    assert _snapshot(tmp_path) == before


def test_regenerating_replaces_rtl_and_reports_only(tmp_path, monkeypatch):
    board = load_board("ultra96v2")
    out = tmp_path / "out"
    monkeypatch.setattr(resources, "synthesize", _fake_synth(ResourceUsage(lut_logic=10)))
    first = generate(board, board.default_engine_config(), out, lint=False)
    assert (out / "reports" / "resources.json").is_file()
    (out / "notes.txt").write_text("mine")
    second = generate(board, board.default_engine_config().with_(pe_in=8, pe_out=8), out, synth=False,
                      lint=False)
    assert not first.verilog.exists() and second.verilog.is_file()
    assert not (out / "reports" / "resources.json").exists()  # no stale report survives
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("levels", [1, 20])
def test_generate_writes_the_timing_estimate_and_warns_below_the_clock(tmp_path, monkeypatch, levels):
    from hwconv.rtl.clock import clock_for
    from hwconv.rtl.timing import MODELS
    board = load_board("ultra96v2")
    config = board.default_engine_config()
    monkeypatch.setattr(resources, "synthesize", _fake_synth(ResourceUsage(lut_logic=10), levels))
    report = generate(board, config, tmp_path / "out", lint=False)
    m = MODELS["xcup"]
    path_ns = m.ff_clk_to_q.ns + (levels + 1) * m.net.ns + levels * m.lut.ns + m.ff_setup.ns
    reports = tmp_path / "out" / "reports"
    data = json.loads((reports / "timing.json").read_text())
    assert data["critical_path_ns"] == pytest.approx(path_ns, abs=1e-3)
    assert data["fmax_mhz"] == pytest.approx(1e3 / path_ns, abs=0.05)
    assert data["engine_config"] == config.to_dict() and data["family"] == "xcup"
    assert data["meets_clock"] == (1e3 / path_ns >= 250)
    assert data["paths"][0]["levels"] == {"LUT": levels}
    assert "estimated Fmax" in (reports / "timing.txt").read_text()
    below = [w for w in report.warnings if "below the 250 MHz clock" in w]
    clock = clock_for(board, config, timing_report=reports / "timing.json")
    assert report.clock == clock
    assert json.loads((reports / "resources.json").read_text())["clock"] == clock.to_dict()
    if levels == 20:                                  # ~11 ns: below 250 MHz
        assert below and clock.mhz == pytest.approx(data["fmax_mhz"])
        assert "below the 250 MHz board clock" in report.summary(board)
    else:
        assert not below and clock.mhz == 250.0
    assert not (tmp_path / "out" / "netlist.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_output_path_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "out").write_text("x")
    board = load_board("ultra96v2")
    with pytest.raises(GenerateError, match="not a folder"):
        generate(board, board.default_engine_config(), tmp_path / "out", synth=False, lint=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_lint_errors_fail_generation(tmp_path, monkeypatch):
    if not verilator_env():
        pytest.skip("verilator not installed")
    monkeypatch.setattr(gen, "_convert", lambda config, top: f"module {top}(input a);\n"
                                                             "  nosuch u(.a(a));\nendmodule\n")
    board = load_board("ultra96v2")
    with pytest.raises(LintError, match=r"%Error.*'nosuch'"):
        generate(board, board.default_engine_config(), tmp_path / "out", synth=False)
    assert not any(tmp_path.iterdir())


def test_missing_yosys_is_a_clear_error(tmp_path, monkeypatch):
    from hwconv.toolchain import Tool
    missing = Tool("yosys", False, None, None, "", "pip x")
    monkeypatch.setattr(resources, "find_yosys", lambda: missing)
    board = load_board("ultra96v2")
    with pytest.raises(GenerateError, match="yosys not found.*pip x"):
        generate(board, board.default_engine_config(), tmp_path / "out", lint=False)


# -- yosys statistics ----------------------------------------------------------------------------
# `stat -json` of yosys 0.70 after synth_xilinx -flatten -family xcup on the 16x16 EngineTop.
STAT_JSON_XCUP = """{
   "creator": "Yosys 0.70 (git sha1 28ba3cb92, Release, Clang)",
   "invocation": "stat -json ",
   "modules": {
      "\\\\hwconv_ultra96v2_w4a8_16x16_250mhz": {
         "num_wires": 17605, "num_cells": 12872, "num_submodules": 0,
         "num_cells_by_type": {"$scopeinfo": 2, "CARRY4": 978, "DSP48E2": 64, "FDRE": 3251,
            "INV": 24, "LUT2": 2468, "LUT3": 1948, "LUT4": 1086, "LUT5": 1557, "LUT6": 1494}
      }
   },
   "design": {
      "num_wires": 17605, "num_cells": 12872, "num_submodules": 0,
      "num_cells_by_type": {"$scopeinfo": 2, "CARRY4": 978, "DSP48E2": 64, "FDRE": 3251,
         "INV": 24, "LUT2": 2468, "LUT3": 1948, "LUT4": 1086, "LUT5": 1557, "LUT6": 1494}
   }
}"""


def test_stat_json_maps_to_resources():
    cells = resources.parse_stat_json(STAT_JSON_XCUP)
    usage = resources.usage_from_cells(cells)
    assert usage.lut_logic == 24 + 2468 + 1948 + 1086 + 1557 + 1494 == 8577
    assert (usage.lut, usage.ff, usage.dsp, usage.bram36, usage.carry4) == (8577, 3251, 64, 0, 978)
    assert usage.other == {}  # $scopeinfo is bookkeeping, not an unknown cell
    table = resources.format_table(usage, load_board("ultra96v2"))
    assert re.search(r"^DSP\s+64\s+360\s+17\.78$", table, flags=re.M)
    assert re.search(r"^LUT\s+8577\s+70560\s+12\.16$", table, flags=re.M)


def test_memory_and_odd_cells_map_to_resources():
    usage = resources.usage_from_cells({
        "LUT6_2": 3, "LUT1": 1, "RAMB36E2": 2, "RAMB18E2": 3, "RAMB18E1": 1, "RAM32M": 2,
        "RAM64X1D": 1, "SRLC32E": 5, "FDSE": 4, "FDCE": 1, "DSP48E1": 7, "CARRY8": 9,
        "MUXF7": 2, "MUXF8": 1, "URAM288": 1, "XORCY": 1})
    assert usage.lut_logic == 4 and usage.lutram == 2 * 4 + 2 and usage.srl == 5
    assert usage.lut == 4 + 10 + 5
    assert usage.bram36 == 2 + 1.5 + 0.5
    assert (usage.ff, usage.dsp, usage.carry8, usage.muxf, usage.uram) == (5, 7, 9, 3, 1)
    assert usage.other == {"XORCY": 1}  # unknown cells are reported, never dropped


def test_stat_json_errors():
    with pytest.raises(SynthError, match="not JSON"):
        resources.parse_stat_json("Number of cells: 3")
    with pytest.raises(SynthError, match="no design cell counts"):
        resources.parse_stat_json('{"modules": {}}')


@needs_yosys
def test_synth_timeout_is_reported(tmp_path):
    src = tmp_path / "t.v"
    src.write_text("module t(input a, output b); assign b = ~a; endmodule\n")
    with pytest.raises(SynthError, match="timed out after 0.01 s"):
        resources.synthesize(src, "t", "xc7", timeout_s=0.01)


@pytest.mark.slow
@needs_yosys
def test_real_synth_of_a_small_engine(tmp_path):
    """The whole flow on a 4x4 engine with small buffers: real yosys for xcup, numbers in both
    reports (a few minutes on 2 cores: the engine's memories and datapath are all there)."""
    board = load_board("ultra96v2")
    config = board.default_engine_config().with_(pe_in=4, pe_out=4, max_layers=16, max_channels=64,
                                                 weight_buffer_bytes=4096, line_buffer_bytes=4096,
                                                 row_buffer_bytes=2048)
    report = generate(board, config, tmp_path / "out", lint=False)
    usage = report.synth.usage
    # 16 MACs, and the requantiser's (acc + bias) * mult in two DSP48-sized halves per lane.
    assert usage.dsp >= 16 + 2 * 4 and usage.lut > 100 and usage.ff > 100 and usage.other == {}
    data = json.loads((tmp_path / "out" / "reports" / "resources.json").read_text())
    assert data["utilisation"]["dsp"] == {"used": usage.dsp, "available": 360,
                                          "percent": round(100 * usage.dsp / 360, 2)}
    assert data["family"] == "xcup" and data["synth_seconds"] > 0
    assert "DSP" in (tmp_path / "out" / "reports" / "resources.txt").read_text()
    assert (tmp_path / "out" / "reports" / "yosys.log").stat().st_size > 0
    # The timing estimate on the same netlist: named paths, and the clock it implies.
    timing = json.loads((tmp_path / "out" / "reports" / "timing.json").read_text())
    assert timing["fmax_mhz"] > 0
    assert timing["fmax_mhz"] == pytest.approx(report.timing.fmax_mhz, abs=0.05)
    assert timing["unknown_cells"] == {} and timing["loops_broken"] == 0
    assert all("?" not in p["start"] + p["end"] for p in timing["paths"])
    assert data["clock"]["estimated_fmax_mhz"] == timing["fmax_mhz"]
    print(f"\n4x4 engine: estimated Fmax {timing['fmax_mhz']} MHz, worst "
          f"{timing['paths'][0]['start']} -> {timing['paths'][0]['end']}")


@needs_yosys
def test_real_synth_of_control_registers(tmp_path):
    from amaranth.back import verilog
    src = tmp_path / "csr.v"
    src.write_text(verilog.convert(ControlRegisters(EngineConfig()), name="csr"))
    result = resources.synthesize(src, "csr", "xc7")
    assert result.usage.dsp == 0 and result.usage.ff > 32 and result.usage.lut > 0


@pytest.mark.slow
@needs_yosys
@needs_verilator
@pytest.mark.parametrize("name", ["ultra96v2", "pynq_z2"])
def test_real_synth_full_engine(tmp_path, name):
    """The board's default engine, real yosys (3-6 min each on this 2-core machine); it fits."""
    board = load_board(name)
    report = generate(board, board.default_engine_config(), tmp_path / "out")
    usage = report.synth.usage
    assert usage.dsp <= board.resources.dsp and usage.other == {}
    print(f"\n{name}: {report.synth.seconds:.1f} s\n"
          + resources.format_table(usage, board))


# -- EngineTop: a program through the register file, simulated ----------------------------------
def test_engine_top_runs_a_program_through_its_registers():
    """The host's view: AXI4-Lite writes of the bases, CONTROL.start, the done interrupt, STATUS,
    counters; DRAM an AXI RAM model on m_axi_gmem; the arena afterwards equals the golden one."""
    import sys
    sys.path.insert(0, str(Path(__file__).parent))
    from engine_harness import golden_arena, initial_arena
    from rtl_models import AxiRamModel

    from hwconv.compiler import ProgramBuilder
    from hwconv.compiler.cost import layer_macs

    cfg = EngineConfig(pe_in=4, pe_out=4, axi_data_width=64, max_width=32, max_channels=64, max_layers=16,
                       line_buffer_bytes=4096, weight_buffer_bytes=4096, row_buffer_bytes=2048, max_dilation=3)
    rng = np.random.default_rng(5)
    b = ProgramBuilder(cfg)
    x = b.input("x", 5, 4, 6)
    y = b.conv("c", x, rng.integers(-8, 8, size=(5, 3, 3, 6)), mult=3, shift=6)
    b.output("y", b.maxpool("p", y, kernel=2, stride=2, pad=0))
    program = b.build()
    arena = initial_arena(program, {"x": rng.integers(0, 256, size=(5, 4, 6))})
    gold, _ = golden_arena(program, program.device_image(), arena)
    image, params = program.device_image(), program.params
    desc_base, params_base, arena_base = 0x1000, 0x2000, 0x3000

    top = EngineTop(cfg)
    bus = top.s_axi_control
    ram = AxiRamModel(top.m_axi_gmem, 0x4000 + arena.size, stall=0.2, latency=(1, 4))
    ram.load(desc_base, image)
    ram.load(params_base, params)
    ram.load(arena_base, arena)
    got = {}

    async def clock(ctx):
        while True:
            ctx.set(top.ap_clk, 0)
            await ctx.delay(5e-9)
            ctx.set(top.ap_clk, 1)
            await ctx.delay(5e-9)

    async def write(ctx, addr, data):
        ctx.set(bus.awaddr, addr)
        ctx.set(bus.wdata, data & 0xFFFFFFFF)
        ctx.set(bus.wstrb, 0xF)
        ctx.set(bus.awvalid, 1)
        ctx.set(bus.wvalid, 1)
        ctx.set(bus.bready, 1)
        while not (ctx.get(bus.awready) and ctx.get(bus.wready)):
            await ctx.tick()
        await ctx.tick()
        ctx.set(bus.awvalid, 0)
        ctx.set(bus.wvalid, 0)
        while not ctx.get(bus.bvalid):
            await ctx.tick()
        await ctx.tick()
        ctx.set(bus.bready, 0)

    async def read(ctx, addr):
        ctx.set(bus.araddr, addr)
        ctx.set(bus.arvalid, 1)
        ctx.set(bus.rready, 1)
        while not ctx.get(bus.arready):
            await ctx.tick()
        await ctx.tick()
        ctx.set(bus.arvalid, 0)
        while not ctx.get(bus.rvalid):
            await ctx.tick()
        value = ctx.get(bus.rdata)
        await ctx.tick()
        ctx.set(bus.rready, 0)
        return value

    async def bench(ctx):
        ctx.set(top.ap_rst_n, 0)
        for _ in range(2):
            await ctx.tick()
        ctx.set(top.ap_rst_n, 1)
        for name, value in (("DESC_BASE_LO", desc_base), ("PARAMS_BASE_LO", params_base),
                            ("PARAMS_SIZE", len(params)), ("ARENA_BASE_LO", arena_base),
                            ("ARENA_SIZE", arena.size), ("IRQ_ENABLE", 1), ("CONTROL", 1)):
            await write(ctx, offset(name), value)
        got["busy"] = await read(ctx, offset("STATUS"))
        for _ in range(20_000):
            if ctx.get(top.irq):
                break
            await ctx.tick()
        got["irq"] = ctx.get(top.irq)
        got["status"] = await read(ctx, offset("STATUS"))
        got["layers"] = await read(ctx, offset("LAYERS_DONE"))
        got["cycles"] = await read(ctx, offset("CYCLES_LO"))
        got["per_layer"] = []
        for i in range(2):
            await write(ctx, offset("PERF_SELECT"), i)
            cycles = await read(ctx, offset("PERF_LAYER_CYCLES"))
            macs = await read(ctx, offset("PERF_LAYER_MACS_LO")) | await read(ctx, offset("PERF_LAYER_MACS_HI")) << 32
            got["per_layer"].append((cycles, macs))
        await write(ctx, offset("IRQ_STATUS"), 1)
        got["irq_after_clear"] = ctx.get(top.irq)

    sim = Simulator(top)
    sim.add_testbench(clock, background=True)
    ram.add_to(sim)
    sim.add_testbench(bench)
    sim.run()
    assert got["busy"] & 1
    assert got["irq"] == 1 and got["irq_after_clear"] == 0
    assert got["status"] == 0b010  # done, not busy, no error
    assert got["layers"] == 2
    assert [macs for _, macs in got["per_layer"]] == [layer_macs(d) for d in program.layers]
    assert 0 < sum(c for c, _ in got["per_layer"]) <= got["cycles"]
    assert np.array_equal(np.frombuffer(ram.dump(arena_base, arena.size), np.uint8), gold)
