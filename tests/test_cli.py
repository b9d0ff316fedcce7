"""The `hwconv` command: help, demo, inspect, spec, bench, and clear errors on bad input."""

import json
import subprocess
import sys

import numpy as np

from hwconv.cli import main
from hwconv.toolchain import verilator_env


def test_help_runs_as_console_script():
    r = subprocess.run([sys.executable, "-m", "hwconv.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for cmd in ("demo", "doctor", "bench", "inspect", "spec"):
        assert cmd in r.stdout


def test_demo_writes_output_folder_and_inspect_reads_it(tmp_path, capsys):
    assert main(["demo", "-o", str(tmp_path), "--model", "tiny"]) == 0
    program = tmp_path / "program" / "codenet_tiny_w4a8_16x16.hwc"
    assert program.is_file() and (tmp_path / "program" / "engine.toml").is_file()
    report = json.loads((tmp_path / "reports" / "demo.json").read_text())
    assert report["layers"] == len(report["layer_table"]) > 20
    golden = np.load(tmp_path / "verification" / "golden_outputs.npz")
    assert set(golden.files) == {"hm", "wh", "reg"}
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave nothing behind
    assert (tmp_path / "rtl" / "hwconv_ultra96v2_w4a8_16x16_250mhz.v").is_file()
    if verilator_env():  # the program ran on the generated RTL and matched golden
        sim = json.loads((tmp_path / "reports" / "simulation.json").read_text())
        assert sim["match"] and sim["cycles"] > 0 and (tmp_path / "reports" / "cycles_per_layer.png").is_file()
    capsys.readouterr()
    assert main(["inspect", str(program)]) == 0
    out = capsys.readouterr().out
    assert "DEFORM_DW" in out and "decoder0.deform" in out


def test_inspect_corrupt_program_is_one_clear_line(tmp_path, capsys):
    bad = tmp_path / "bad.hwc"
    bad.write_bytes(b"HWCVPROG" + bytes(20))
    assert main(["inspect", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "truncated" in err and str(bad) in err and "Traceback" not in err
    assert main(["inspect", str(tmp_path / "missing.hwc")]) == 2
    assert "cannot read program" in capsys.readouterr().err


def test_spec_prints_register_map_and_descriptor_layout(capsys):
    assert main(["spec"]) == 0
    out = capsys.readouterr().out
    assert "0x00 ID" in out and "CONFIG_HASH" in out and "ARENA_OUT_OF_BOUNDS" in out
    assert "weights_offset" in out and "group_stride" in out


def test_bad_engine_config_names_field(tmp_path, capsys):
    cfg = tmp_path / "engine.toml"
    cfg.write_text("[engine]\npe_in = 12\n")
    assert main(["spec", "--engine", str(cfg)]) == 2
    assert "pe_in=12" in capsys.readouterr().err


def test_bench_json(capsys):
    assert main(["bench", "--model", "tiny", "--repeat", "1", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["layers"] > 20 and r["frame_s_median"] > 0 and "CONV" in r["seconds_by_op"]


def test_info_prints_counts_beside_published(capsys):
    assert main(["info", "a"]) == 0
    out = capsys.readouterr().out
    assert "MACs, thop rule:  0.2855 G   CoDeNet published 0.29 (-1.6 %)" in out
    assert "0.757 MB as CoDeNet counts" in out and "CoDeNet published 0.76" in out
    assert "MACs, true:       0.2798 G" in out
    for section in ("stem", "stages", "layer4", "decoder", "heads"):
        assert f"\n  {section} " in out
    assert main(["info", "tiny", "--json", "--size", "64"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["input_size"] == 64 and st["published"] == {} and len(st["layers"]) > 40
    assert sum(s["macs"] for s in st["sections"].values()) == round(st["true_gmac"] * 1e9)
    assert st["gmac"] < st["true_gmac"]  # the old key: nn.Conv2d layers only, for the quant benchmarks
    assert main(["info", "tiny", "--size", "100000"]) == 2
    assert "--size 100000: expected 32..2048" in capsys.readouterr().err


def test_every_model_choice_comes_from_the_registry():
    from hwconv.cli import build_parser
    from hwconv.quant.registry import MODEL_NAMES

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for cmd in ("demo", "info", "check", "bench"):
        model = next(a for a in sub.choices[cmd]._actions if a.dest == "model")
        assert tuple(model.choices) == MODEL_NAMES, cmd


def test_check_maps_model_or_names_the_unsupported_layer(capsys):
    assert main(["check", "--model", "tiny"]) == 0
    assert "every layer maps to the engine" in capsys.readouterr().out
    assert main(["check", "--model", "a"]) == 0  # layer4 and decoder0 split to fit the engine's buffers
    out = capsys.readouterr().out
    assert "total 0.280 GMAC" in out and "layer4[768:1024]" in out
    assert main(["check", "--model", "c"]) == 2  # 512x512 is wider than the default engine's rows
    assert "stem): in0.width=512 exceeds the engine's max_width=256" in capsys.readouterr().err
    assert main(["check", "--model", "tiny", "--sampling", "bilinear"]) == 2
    assert "decoder0" in capsys.readouterr().err


def test_check_on_a_board_uses_its_engine_and_clock(capsys):
    assert main(["check", "--model", "tiny", "--board", "pynq_z2"]) == 0
    out = capsys.readouterr().out
    assert "on a 8x8 array" in out and "engine w4a8_8x8_100mhz of pynq_z2" in out
    assert "clock: 100 MHz, the board clock (estimated Fmax" in out and "pynq_z2 reference estimate" in out
    assert main(["check", "--model", "tiny", "--board", "no_such_board"]) == 2
    assert "unknown board 'no_such_board'" in capsys.readouterr().err


def test_bench_rtl_refuses_a_file_as_its_output_folder_before_simulating(tmp_path, capsys):
    target = tmp_path / "results.txt"
    target.write_text("keep me")
    assert main(["bench", "--rtl", "--model", "tiny", "--board", "ultra96v2", "-o", str(target)]) == 2
    assert f"-o {target}: is a file, a folder is needed here" in capsys.readouterr().err
    assert target.read_text() == "keep me"


def test_boards_lists_catalog(capsys):
    assert main(["boards"]) == 0
    out = capsys.readouterr().out
    for name in ("pynq_z2", "ultra96v2", "zcu104", "kv260"):
        assert name in out
    assert main(["boards", "no_such_board"]) == 2


def test_quantize_then_export_end_to_end(tmp_path, capsys):
    """The README's user path on a minimal budget: float + QAT, export, golden == fake-quant."""
    assert main(["quantize", "--epochs", "1", "--qat-epochs", "1", "--train-images", "32", "--val-images", "8",
                 "--batch-size", "16", "-o", str(tmp_path / "q")]) == 0
    ckpt = tmp_path / "q" / "qat" / "last.pt"
    assert ckpt.is_file() and (tmp_path / "q" / "quantize.json").is_file()
    capsys.readouterr()
    assert main(["export", str(ckpt), "-o", str(tmp_path / "e"), "--verify", "2"]) == 0
    out = capsys.readouterr().out
    assert "tiny_w4a8_16x16.hwc" in out and "identical output integers" in out
    report = json.loads((tmp_path / "e" / "export.json").read_text())
    assert report["verify"]["identical"] >= 0.995
    # A float checkpoint is refused with a clear message.
    assert main(["export", str(tmp_path / "q" / "float" / "last.pt"), "-o", str(tmp_path / "e2")]) == 2
    assert "quantisation mode 'float'" in capsys.readouterr().err


def test_generate_writes_verilog_and_reports(tmp_path, capsys):
    assert main(["generate", "--board", "pynq_z2", "--pe", "4x4", "--no-synth", "-o", str(tmp_path / "g")]) == 0
    assert (tmp_path / "g" / "rtl" / "hwconv_pynq_z2_w4a8_4x4_100mhz.v").is_file()
    assert main(["generate", "--board", "pynq_z2", "--pe", "7", "-o", str(tmp_path / "h")]) == 2
    assert "expected IxO" in capsys.readouterr().err
