"""`hwconv simulate`: refusal while the top cannot run programs, argument errors, the report
(cycles, fps, MAC utilisation, plot) from counters; end to end on the RTL once the engine runs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hwconv.cli import main
from hwconv.compiler.cost import layer_macs, peak_macs_per_cycle
from hwconv.compiler.synthetic import BackboneShape, codenet_program
from hwconv.sim.compare import compare_arenas, golden_arena
from hwconv.sim.programs import random_inputs
from hwconv.sim.simulate import CODENET_FPS, SimReport, _report_data, write_report
from hwconv.spec import EngineConfig
from hwconv.toolchain import verilator_env

CFG = EngineConfig()
SHAPE = BackboneShape(32, 4, (8, 16, 32, 64), (1, 1, 1), (32, 16, 16), 16, 2)


@pytest.fixture(scope="module")
def program_file(tmp_path_factory):
    prog, _ = codenet_program(CFG, SHAPE, reuse_memory=False)  # every layer output survives
    path = tmp_path_factory.mktemp("prog") / "small.hwc"
    prog.save(path)
    return prog, path


def test_program_is_required(capsys):
    assert main(["simulate"]) == 2
    assert "--program is required" in capsys.readouterr().err


def test_unreadable_image_is_a_clear_error(program_file, tmp_path, capsys):
    bad = tmp_path / "not_an_image.png"
    bad.write_text("hello")
    rc = main(["simulate", "--program", str(program_file[1]), "--image", str(bad), "-o",
               str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "not an image" in err and str(bad) in err


def test_report_from_counters(program_file, tmp_path):
    prog, _ = program_file
    inputs = random_inputs(prog, 0)
    want = golden_arena(prog, inputs)
    cycles = [100 + 10 * i for i in range(len(prog.layers))]
    result = {"status": {"busy": False, "done": True, "error": 0, "error_layer": 0,
                         "layers_done": len(prog.layers)},
              "counters": {"cycles": sum(cycles) + 50, "stall_cycles": 7,
                           "layers_done": len(prog.layers),
                           "layers": [{"cycles": c, "macs": layer_macs(d)}
                                      for c, d in zip(cycles, prog.layers)]},
              "sim_cycles": sum(cycles) + 60, "wall_seconds": 1.0, "violations": []}
    data = _report_data(prog, "small.hwc", "verilator", 250.0, result,
                        compare_arenas(prog, want, want))
    total = sum(cycles) + 50
    assert data["match"] and data["cycles"] == total
    assert data["fps"] == pytest.approx(250e6 / total)
    assert data["fps_vs_codenet"] == pytest.approx(250e6 / total / CODENET_FPS)
    macs = sum(layer_macs(d) for d in prog.layers)
    # The array's peak per layer: 256 products a cycle, 512 for a packed 4-bit CONV.
    peaks = [peak_macs_per_cycle(d, 16, 16) for d in prog.layers]
    assert 512 in peaks and 256 in peaks
    assert data["utilisation"] == pytest.approx(macs / (sum(c * p for c, p in zip(cycles, peaks)) + 50 * 256))
    first = data["layers"][0]
    assert first["utilisation"] == pytest.approx(layer_macs(prog.layers[0]) / (100 * peaks[0]))
    assert [x["name"] for x in data["layers"]] == prog.layer_names
    data["sim"] = {"simulator": "verilator", "waves": None}
    paths = write_report(SimReport("small.hwc", "verilator", 250.0, data, None), tmp_path)
    assert json.loads(paths[0].read_text())["cycles"] == total
    assert paths[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A mismatch names the first layer and its coordinates.
    got = want.copy()
    from hwconv.sim.compare import element_offsets

    got[element_offsets(prog.layers[5].out)[0, 1, 2]] ^= 4
    bad = _report_data(prog, "small.hwc", "verilator", 250.0, result, compare_arenas(prog, got, want))
    fm = bad["comparison"]["first_mismatch"]
    assert not bad["match"] and (fm["layer"], fm["y"], fm["x"], fm["c"]) == (5, 0, 1, 2)


@pytest.mark.engine
@pytest.mark.skipif(not verilator_env(), reason="verilator not installed")
def test_simulate_end_to_end(program_file, tmp_path, capsys):
    rc = main(["simulate", "--program", str(program_file[1]), "--random-input", "3",
               "--board", "ultra96v2", "-o", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    from hwconv.rtl.clock import clock_for

    clock = clock_for("ultra96v2", program_file[0].config)   # min(board clock, estimated Fmax)
    assert "MATCH: RTL arena == golden arena" in out and f"fps at {clock.mhz:.1f} MHz" in out
    assert f"clock: {clock.source}" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["match"] and report["cycles"] > 0 and len(report["layers"]) == len(program_file[0].layers)
    assert 0 < report["utilisation"] <= 1
    assert (tmp_path / "cycles_per_layer.png").is_file()
    assert np.isfinite(report["fps"]) and report["clock"]["mhz"] == clock.mhz


def test_simulation_cache_is_outside_the_repository(monkeypatch, tmp_path):
    from pathlib import Path

    from hwconv.sim.runner import build_root

    for name in ("HWCONV_SIM_BUILD", "HWCONV_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert build_root() == (tmp_path / "home" / ".cache" / "hwconv" / "sim").resolve()
    repo = Path(__file__).resolve().parents[1]
    assert repo not in build_root().parents
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert build_root() == (tmp_path / "xdg" / "hwconv" / "sim").resolve()
    monkeypatch.setenv("HWCONV_CACHE", str(tmp_path / "c"))
    assert build_root() == (tmp_path / "c" / "sim").resolve()
    monkeypatch.setenv("HWCONV_SIM_BUILD", str(tmp_path / "b"))
    assert build_root() == (tmp_path / "b").resolve()


def test_a_build_from_another_environment_is_not_reused(monkeypatch, tmp_path):
    """A Verilator binary loads cocotb's VPI library from the venv that linked it: a build
    cached by another checkout (a CI venv, since removed) must not be taken for this one's."""
    from hwconv.sim import runner

    cfg = EngineConfig()
    here, _ = runner.build_key(cfg, "verilator", False)
    assert runner.build_key(cfg, "verilator", False)[0] == here    # stable in one environment
    monkeypatch.setattr(runner, "cocotb_libs_dir", lambda: str(tmp_path / "other-venv" / "libs"))
    assert runner.build_key(cfg, "verilator", False)[0] != here
