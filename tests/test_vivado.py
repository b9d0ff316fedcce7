"""The Vivado build flow (hwconv.vivado) without Vivado: the generated Tcl runs under tclsh against a
mock of the Vivado commands it uses (tests/vivado_mock.tcl), which checks options, IP pin and
parameter names and the finished block design; `hwconv build` runs against a fake `vivado` built on
the same mock. What only real Vivado can tell (timing, the PS's exact clock, IP versions) is not
tested here."""

from __future__ import annotations

import argparse
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from hwconv.boards.catalog import BoardError, list_boards, load_board
from hwconv.vivado import cli as build_cli
from hwconv.vivado import tcl
from hwconv.vivado.implement import REPORTS
from hwconv.vivado.plan import PARTIAL_BITFILE, make_plan
from hwconv.vivado.project import PARTS, write_scripts
from hwconv.vivado.ps import ps_side
from hwconv.rtl.generate import generate
from hwconv.spec import EngineConfig, SpecError
from hwconv.spec.registers import ENGINE_VLNV

TCLSH = shutil.which("tclsh")
MOCK = Path(__file__).with_name("vivado_mock.tcl")
BOARDS = [b.name for b in list_boards()]
HP_PORT = {"zynq7": "S_AXI_HP0", "zynq_ultra_ps_e": "S_AXI_HP0_FPD"}
pytestmark = pytest.mark.skipif(TCLSH is None, reason="tclsh is not installed (apt-get install tcl)")


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rtl_cache(tmp_path_factory):
    """generate() once per board and config (1 s each); tests copy the folder."""
    cache: dict[tuple, Path] = {}

    def get(board, config: EngineConfig) -> Path:
        key = (board.name, config)
        if key not in cache:
            out = tmp_path_factory.mktemp(f"rtl_{board.name}")
            generate(board, config, out / "o", synth=False, lint=False)
            cache[key] = out / "o"
        return cache[key]
    return get


@pytest.fixture
def cached_generate(monkeypatch, rtl_cache):
    """`hwconv build` with generate() served from rtl_cache: Amaranth's Verilog takes seconds per
    call and test_rtl_generate.py tests it; here only the folder it leaves matters."""
    import hwconv.rtl.generate as gen

    def fake(board, config, out_dir, *, synth=True, lint=True, synth_timeout_s=None):
        gen.check_config(board, config)
        out_dir = Path(out_dir)
        for sub in ("rtl", "reports"):
            shutil.rmtree(out_dir / sub, ignore_errors=True)
            shutil.copytree(rtl_cache(board, config) / sub, out_dir / sub)
        top = board.artifact_stem(config)
        files = sorted(p for sub in ("rtl", "reports") for p in (out_dir / sub).iterdir())
        return gen.GenerateReport(out_dir, top, out_dir / "rtl" / f"{top}.v", files, None, None,
                                  ["synthesis skipped: resources not checked against the board"])
    monkeypatch.setattr(gen, "generate", fake)


def _project(tmp_path: Path, rtl_cache, name: str, config: EngineConfig | None = None, jobs: int = 3):
    board = load_board(name)
    config = config or board.default_engine_config()
    out = tmp_path / "out"
    shutil.copytree(rtl_cache(board, config), out)
    plan = make_plan(board, config, out, jobs)
    write_scripts(plan)
    return plan


def _expect_tcl(plan) -> str:
    b, c = plan.board, plan.config
    ps_ip = ps_side(b, c).ip.split(":")[2]
    expect = dict(part=b.part, board_part=b.board_part, vlnv=ENGINE_VLNV, clock_mhz=c.clock_mhz,
                  hp_width=b.hp_port_width, ps=ps_ip, stem=plan.stem)
    return "array set ::mock::expect [list " + " ".join(f"{k} {tcl.quote(v)}" for k, v in expect.items()) + "]\n"


def _run_mock(plan, *, installed: bool = True, extra: str = "", env: dict | None = None):
    runner = (f"source {tcl.quote(MOCK)}\n{_expect_tcl(plan)}"
              + (f"set ::mock::installed_board_parts [list {tcl.quote(plan.board.board_part)}]\n" if installed else "")
              + extra
              + f"cd {tcl.quote(plan.vivado_dir)}\n"
              + "if {[catch {source build.tcl} err]} { puts \"FAILED: $err\"; exit 1 }\n"
              + "puts \"CALLS [llength $::mock::calls]\"\n"
              + "foreach c $::mock::calls { puts \"CALL $c\" }\n")
    return subprocess.run([TCLSH], input=runner, text=True, capture_output=True, timeout=60,
                          env={**os.environ, **(env or {})})


def _calls(stdout: str, command: str) -> list[str]:
    return [ln[5:] for ln in stdout.splitlines() if ln.startswith(f"CALL {command} ")]


# --------------------------------------------------------------------------------------------------
# Every board: the flow runs under the mock and makes <stem>.bit + .hwh
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BOARDS)
def test_every_script_is_complete_tcl(tmp_path, rtl_cache, name):
    plan = _project(tmp_path, rtl_cache, name)
    files = ["build.tcl", "settings.tcl", *PARTS]
    check = "".join(f"puts [info complete [read [open {tcl.quote(plan.vivado_dir / f)}]]]\n" for f in files)
    r = subprocess.run([TCLSH], input=check, text=True, capture_output=True, timeout=30)
    assert r.stdout.split() == ["1"] * len(files), r.stderr


@pytest.mark.parametrize("name", BOARDS)
def test_flow_runs_under_mock_vivado(tmp_path, rtl_cache, name):
    plan = _project(tmp_path, rtl_cache, name)
    r = _run_mock(plan)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    assert sorted(p.name for p in plan.bitfile_dir.iterdir()) == [f"{plan.stem}.bit", f"{plan.stem}.hwh"]
    assert f"VLNV=\"{ENGINE_VLNV}\"" in plan.hwh.read_text()          # the handoff names the engine IP
    assert plan.bit.read_text() == f"BIT {plan.stem}\n"
    assert not (plan.out_dir / PARTIAL_BITFILE).exists()
    for report in REPORTS:
        assert (plan.out_dir / "reports" / report).is_file()
    steps = [ln for ln in r.stdout.splitlines() if ln.startswith("HWCONV-STEP")]
    assert [s.split()[1] for s in steps] == [f"{i}/6" for i in range(1, 7)]
    # The calls name the right part, PS, HP port, VLNV and jobs.
    assert any(f"-part {plan.board.part}" in c for c in _calls(r.stdout, "create_project"))
    cells = _calls(r.stdout, "create_bd_cell")
    assert any(ps_side(plan.board, plan.config).ip in c and c.endswith(" ps") for c in cells)
    assert any(f"-vlnv {ENGINE_VLNV} engine" in c for c in cells)
    hp = HP_PORT[plan.board.ps]
    assert any(f"ps/{hp}" in c for c in _calls(r.stdout, "connect_bd_intf_net"))
    assert all("-jobs 3" in c for c in _calls(r.stdout, "launch_runs"))


def test_flow_with_interfaces_that_packaging_inferred_itself(tmp_path, rtl_cache):
    # Vivado may already have made ap_clk/ap_rst_n/irq interfaces; the script must not infer twice.
    plan = _project(tmp_path, rtl_cache, "ultra96v2")
    r = _run_mock(plan, extra="set ::mock::auto_infer_signals 1\n")
    assert r.returncode == 0, r.stdout[-2000:]
    assert _calls(r.stdout, "ipx::infer_bus_interface") == []


def test_address_map_reaches_ddr_high_with_40_bit_addresses(tmp_path, rtl_cache):
    board = load_board("zcu104")
    plan = _project(tmp_path, rtl_cache, "zcu104", board.default_engine_config().with_(addr_width=40))
    r = _run_mock(plan)
    assert r.returncode == 0, r.stdout[-2000:]
    targets = " ".join(_calls(r.stdout, "assign_bd_address"))
    assert "HP0_DDR_LOW" in targets and "HP0_DDR_HIGH" in targets


def test_jobs_from_environment(tmp_path, rtl_cache):
    plan = _project(tmp_path, rtl_cache, "pynq_z2")
    r = _run_mock(plan, env={"HWCONV_JOBS": "7"})
    assert r.returncode == 0 and all("-jobs 7" in c for c in _calls(r.stdout, "launch_runs"))


# --------------------------------------------------------------------------------------------------
# The mock is strict: each of these edits to a correct script must be caught
# --------------------------------------------------------------------------------------------------
MUTATIONS = {
    "typo in a command": ("block_design.tcl", "connect_bd_intf_net", "connect_bd_intf_nets", "invalid command"),
    "wrong interrupt pin": ("block_design.tcl", "ps/pl_ps_irq0", "ps/pl_ps_irq", "no pin pl_ps_irq"),
    "typo in a PS parameter": ("block_design.tcl", "PSU__SAXIGP2__DATA_WIDTH", "PSU__SAXIGP2_DATA_WIDTH",
                               "no parameter CONFIG.PSU__SAXIGP2_DATA_WIDTH"),
    "HP port left disabled": ("block_design.tcl", 'CONFIG.PSU__USE__S_AXI_GP2 "1"', 'CONFIG.PSU__USE__S_AXI_GP2 "0"',
                              "saxihp0_fpd_aclk does not exist unless CONFIG.PSU__USE__S_AXI_GP2 is 1"),
    "unused PS port left on": ("block_design.tcl", 'CONFIG.PSU__USE__M_AXI_GP1 "0"', 'CONFIG.PSU__USE__M_AXI_GP1 "1"',
                               "maxihpm1_fpd_aclk is not connected"),
    "wrong HP width": ("block_design.tcl", 'PSU__SAXIGP2__DATA_WIDTH "128"', 'PSU__SAXIGP2__DATA_WIDTH "64"',
                       "HP port is 64 bits"),
    "clock not connected": ("block_design.tcl", "    [get_bd_pins ps/saxihp0_fpd_aclk]", "",
                            "saxihp0_fpd_aclk"),
    "wrong clock association": ("package_ip.tcl", "ASSOCIATED_BUSIF s_axi_control:m_axi_gmem",
                                "ASSOCIATED_BUSIF s_axi_control", "ASSOCIATED_BUSIF must be"),
    "reset polarity": ("package_ip.tcl", "POLARITY ACTIVE_LOW", "POLARITY ACTIVE_HIGH", "POLARITY must be"),
    "unknown option": ("implement.tcl", "-to_step write_bitstream", "-to-step write_bitstream", "unknown option"),
    "control window outside the port": ("block_design.tcl", "-offset 0xA0000000", "-offset 0x90000000",
                                        "outside M_AXI_HPM0_FPD"),
    "no board preset": ("block_design.tcl", 'apply_board_preset "1"', 'apply_board_preset "0"',
                        "the PS needs apply_board_preset 1"),
}


@pytest.mark.parametrize("script,old,new,error", MUTATIONS.values(), ids=MUTATIONS.keys())
def test_mock_catches_broken_script(tmp_path, rtl_cache, script, old, new, error):
    plan = _project(tmp_path, rtl_cache, "ultra96v2")
    path = plan.vivado_dir / script
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    r = _run_mock(plan)
    assert r.returncode == 1 and error in r.stdout, r.stdout[-2000:]
    assert list(plan.bitfile_dir.iterdir()) == [] if plan.bitfile_dir.exists() else True


def test_timing_failure_stops_before_export(tmp_path, rtl_cache):
    plan = _project(tmp_path, rtl_cache, "kv260")
    r = _run_mock(plan, extra="set ::mock::wns -0.231\n")
    assert r.returncode == 1
    assert "ERROR: [hwconv] timing not met at 250 MHz (setup slack -0.231 ns" in r.stdout
    assert (plan.out_dir / "reports" / REPORTS[0]).is_file()          # reports first, to see why
    assert not plan.bit.exists() and not (plan.out_dir / PARTIAL_BITFILE).exists()


def test_missing_board_files_say_where_to_get_them(tmp_path, rtl_cache):
    plan = _project(tmp_path, rtl_cache, "pynq_z2")
    r = _run_mock(plan, installed=False)
    assert r.returncode == 1
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("ERROR: [hwconv]"))
    assert "tul.com.tw:pynq-z2:part0:1.0 is not installed" in line
    assert plan.board.board_files in line and "HWCONV_BOARD_REPO" in line


# --------------------------------------------------------------------------------------------------
# What the scripts name, per board
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BOARDS)
def test_scripts_name_part_ps_port_clock_vlnv_and_stem(tmp_path, rtl_cache, name):
    plan = _project(tmp_path, rtl_cache, name)
    board, config = plan.board, plan.config
    settings = (plan.vivado_dir / "settings.tcl").read_text()
    block = (plan.vivado_dir / "block_design.tcl").read_text()
    assert f'set hwconv(part)        "{board.part}"' in settings
    assert f'set hwconv(board_part)  "{board.board_part}"' in settings
    assert f'set hwconv(vlnv)        "{ENGINE_VLNV}"' in settings
    assert f"set hwconv(stem)        {plan.stem}" in settings
    assert f"set hwconv(clock_mhz)   {config.clock_mhz:g}" in settings
    ps = {"zynq7": "processing_system7", "zynq_ultra_ps_e": "zynq_ultra_ps_e"}[board.ps]
    assert f"xilinx.com:ip:{ps}:*" in block
    width = "PCW_S_AXI_HP0_DATA_WIDTH" if board.ps == "zynq7" else "PSU__SAXIGP2__DATA_WIDTH"
    assert f'CONFIG.{width} "{board.hp_port_width}"' in block
    freq = "PCW_FPGA0_PERIPHERAL_FREQMHZ" if board.ps == "zynq7" else "PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ"
    assert f'CONFIG.{freq} "{config.clock_mhz:g}"' in block
    assert f"ps/{HP_PORT[board.ps]}]" in block
    implement = (plan.vivado_dir / "implement.tcl").read_text()
    assert "$hwconv(stem).bit" in implement and "$hwconv(stem).hwh" in implement
    assert "hw_handoff $hwconv(bd).hwh" in implement


def test_engine_clock_follows_the_engine_config(tmp_path):
    board = load_board("ultra96v2")
    plan = make_plan(board, board.default_engine_config().with_(clock_mhz=187.5), tmp_path, 2)
    write_scripts(plan)
    assert 'PSU__CRL_APB__PL0_REF_CTRL__FREQMHZ "187.5"' in (plan.vivado_dir / "block_design.tcl").read_text()
    assert "set hwconv(clock_mhz)   187.5" in (plan.vivado_dir / "settings.tcl").read_text()
    assert plan.stem.endswith("_188mhz")


def test_tcl_quote_survives_hostile_text():
    nasty = 'a "b" [exec rm -rf /] $x {y} \\z\nw'
    r = subprocess.run([TCLSH], input=f"puts -nonewline [set v {tcl.quote(nasty)}]", text=True,
                       capture_output=True, timeout=10)
    assert r.stdout == nasty


def test_sizes():
    assert [tcl.size(n) for n in (4096, 1 << 32, 1 << 40, 1 << 64)] == ["4K", "4G", "1T", "16E"]
    with pytest.raises(ValueError):
        tcl.size(3000)


# --------------------------------------------------------------------------------------------------
# hwconv build
# --------------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hwconv")
    sub = parser.add_subparsers()

    def add(name, fn, help_):
        sp = sub.add_parser(name, help=help_)
        sp.set_defaults(fn=fn)
        return sp
    build_cli.register(add)
    return parser


def _build(*argv: str) -> int:
    args = _parser().parse_args(["build", *argv, "--no-synth", "--no-lint"])
    try:
        return args.fn(args)
    except SpecError as exc:                    # as hwconv.cli.main reports it
        print(f"hwconv build: error: {exc}")
        return 2


def _no_vivado(monkeypatch, tmp_path):
    empty = tmp_path / "empty_bin"
    empty.mkdir(exist_ok=True)
    monkeypatch.setenv("PATH", f"{empty}:{os.path.dirname(TCLSH)}")
    monkeypatch.delenv("XILINX_VIVADO", raising=False)


@pytest.mark.parametrize("how", ["scripts-only", "no vivado"])
def test_build_writes_scripts_and_says_what_to_run(cached_generate, tmp_path, monkeypatch, capsys, how):
    out = tmp_path / "b"
    (out / "bitfile").mkdir(parents=True)
    (out / "bitfile" / "old.bit").write_text("stale")                 # from an older rtl/
    if how == "no vivado":
        _no_vivado(monkeypatch, tmp_path)
        rc = _build("--board", "pynq_z2", "-o", str(out), "--jobs", "5")
    else:
        rc = _build("--board", "pynq_z2", "-o", str(out), "--jobs", "5", "--scripts-only")
    text = capsys.readouterr().out
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["bitfile", "deploy", "driver", "reports", "rtl", "vivado"]
    assert sorted(p.name for p in (out / "vivado").iterdir()) == sorted(["build.tcl", "settings.tcl", *PARTS])
    assert list((out / "bitfile").iterdir()) == []
    stem = "hwconv_pynq_z2_w4a8_8x8_100mhz"
    assert (out / "rtl" / f"{stem}.v").is_file()
    assert f"cd {out / 'vivado'} && vivado -mode batch -source build.tcl -log ../reports/vivado.log" in text
    assert str(out / "bitfile" / f"{stem}.bit") in text and str(out / "bitfile" / f"{stem}.hwh") in text
    assert "HWCONV_BOARD_REPO" in text and "tul.com.tw:pynq-z2:part0:1.0" in text
    assert "removed the previous bitstream" in text
    assert ("--scripts-only" in text) == (how == "scripts-only")
    assert "set hwconv(jobs)        5" in (out / "vivado" / "settings.tcl").read_text()


def _fake_vivado(tmp_path: Path, board, extra: str = "") -> Path:
    """A `vivado` that answers -version and runs `-source X` under tclsh with the mock."""
    plan_stub = make_plan(board, board.default_engine_config(), tmp_path, 1)
    runner = tmp_path / "fake_vivado.tcl"
    runner.write_text(
        f"source {tcl.quote(MOCK)}\n{_expect_tcl(plan_stub)}"
        f"set ::mock::installed_board_parts [list {tcl.quote(board.board_part)}]\n{extra}"
        "set script [lindex $argv [expr {[lsearch $argv -source] + 1}]]\n"
        "if {[catch {source $script} err]} { puts $err; exit 1 }\nexit 0\n")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "vivado"
    exe.write_text(f'#!/bin/sh\nif [ "$1" = "-version" ]; then echo "Vivado v2022.1 (64-bit)"; exit 0; fi\n'
                   f'exec {TCLSH} {runner} "$@"\n')
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return bindir


def test_build_runs_vivado_when_on_path(cached_generate, tmp_path, monkeypatch, capsys):
    board = load_board("ultra96v2")
    _no_vivado(monkeypatch, tmp_path)
    monkeypatch.setenv("PATH", f"{_fake_vivado(tmp_path, board)}:{os.environ['PATH']}")
    out = tmp_path / "b"
    assert _build("--board", "ultra96v2", "-o", str(out), "--jobs", "2") == 0
    text = capsys.readouterr().out
    stem = board.artifact_stem(board.default_engine_config())
    assert sorted(p.name for p in (out / "bitfile").iterdir()) == [f"{stem}.bit", f"{stem}.hwh"]
    assert f"built {out / 'bitfile' / stem}.bit and" in text and "running Vivado 2022.1" in text
    log = (out / "reports" / "vivado.log").read_text()
    assert "HWCONV-STEP 6/6" in log and "HWCONV-DONE" in log


def test_failed_vivado_run_reports_first_error_and_leaves_no_bitfile(cached_generate, tmp_path, monkeypatch, capsys):
    board = load_board("ultra96v2")
    _no_vivado(monkeypatch, tmp_path)
    bindir = _fake_vivado(tmp_path, board, "set ::mock::wns -1.5\n")
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    out = tmp_path / "b"
    assert _build("--board", "ultra96v2", "-o", str(out)) == 2
    err = capsys.readouterr().err
    assert "Vivado build of hwconv_ultra96v2_w4a8_16x16_250mhz failed: ERROR: [hwconv] timing not met" in err
    assert str(out / "reports" / "vivado.log") in err
    assert list((out / "bitfile").iterdir()) == [] and not (out / PARTIAL_BITFILE).exists()


def test_build_is_a_hwconv_command():
    from hwconv.cli import build_parser

    args = build_parser().parse_args(["build", "--board", "kv260", "--scripts-only"])
    assert args.fn is build_cli.cmd_build and args.scripts_only and args.out == "out/build"


# --------------------------------------------------------------------------------------------------
# Board files: what building needs, with clear errors
# --------------------------------------------------------------------------------------------------
VALID = """\
name = "myboard"
display_name = "My Board"
part = "xczu2cg-sbva484-1-e"
family = "xcup"
ps = "zynq_ultra_ps_e"
board_part = "xilinx.com:myboard:part0:1.0"
board_files = "vivado"
default_clock_mhz = 200.0
hp_port_width = 128
pynq_image = "none"

[resources]
dsp = 240
bram36 = 150
lut = 47232
ff = 94464
uram = 0

[pl_clocks]
pl_clk0 = 200.0
"""

BROKEN = {
    "PS7 clock name on a ZU+": (VALID.replace("pl_clk0 = 200.0", "FCLK_CLK0 = 200.0"),
                                r"field 'pl_clocks\.FCLK_CLK0' is not a fabric clock of the zynq_ultra_ps_e PS"),
    "clock index out of range": (VALID.replace("pl_clk0 = 200.0", "pl_clk4 = 200.0"), r"field 'pl_clocks\.pl_clk4'"),
    "board_files not a URL": (VALID.replace('board_files = "vivado"', 'board_files = "ftp://x"'),
                              r"field 'board_files' must be \"vivado\""),
    "board_files without board_part": (VALID.replace('board_part = "xilinx.com:myboard:part0:1.0"\n', ""),
                                       r"field 'board_files' says where to get a board part"),
    "board_part wrong type": (VALID.replace('"xilinx.com:myboard:part0:1.0"', "1"), r"field 'board_part' must be"),
}


@pytest.mark.parametrize("text,pattern", BROKEN.values(), ids=BROKEN.keys())
def test_broken_board_file_names_file_and_field(tmp_path, text, pattern):
    path = tmp_path / "myboard.toml"
    path.write_text(text)
    with pytest.raises(BoardError, match=pattern) as info:
        load_board(path)
    assert str(info.value).startswith(f"{path}: ")


def test_board_without_board_part_cannot_be_built(tmp_path, capsys):
    path = tmp_path / "myboard.toml"
    path.write_text(VALID.replace('board_part = "xilinx.com:myboard:part0:1.0"\n', "")
                    .replace('board_files = "vivado"\n', ""))
    assert _build("--board", str(path), "-o", str(tmp_path / "b"), "--scripts-only") == 2
    out = capsys.readouterr().out
    assert f"{path}: missing field 'board_part': building a bitstream needs the Vivado board part" in out
    assert not (tmp_path / "b").exists()                      # refused before generating anything


def test_user_board_builds_under_mock(cached_generate, tmp_path, capsys):
    path = tmp_path / "myboard.toml"
    path.write_text(VALID)
    board = load_board(path)
    assert board.engine_clock == ("pl_clk0", 0) and board.board_files == "vivado"
    out = tmp_path / "b"
    assert _build("--board", str(path), "-o", str(out), "--scripts-only") == 0
    assert "HWCONV_BOARD_REPO" not in capsys.readouterr().out      # Vivado ships this one
    plan = make_plan(board, board.default_engine_config(), out, 3)
    assert _run_mock(plan).returncode == 0


def test_jobs_must_be_positive(tmp_path):
    board = load_board("kv260")
    with pytest.raises(SpecError, match="--jobs must be a positive integer"):
        make_plan(board, board.default_engine_config(), tmp_path, 0)
