"""hwconv verify: random multi-layer programs, coverage bins, minimisation, and a fixed-seed slice
of the regression on the Verilator engine.

Without a simulator: programs are legal and a pure function of their seed; the layers hit the
bins they aim at; consecutive seeds sweep every legal bin; a failing program is shrunk (the
"engine" here is the golden model with a dilation clamp one too low, so the minimiser's
search runs in seconds). With Verilator (`engine` marker): two programs under and without
backpressure, bit-exact against golden.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from hwconv.boards import load_board
from hwconv.golden import ops
from hwconv.sim.compare import compare_arenas, golden_arena
from hwconv.sim.verify import minimise as minimise_mod
from hwconv.sim.verify.coverage import (AXES, Coverage, LayerRecord, all_bins, classify_layers,
                                        legal_bins, unreachable)
from hwconv.sim.verify.generate import bin_order, generate, target_bins
from hwconv.sim.verify.run import Outcome
from hwconv.sim.verify.spec import ProgramSpec, build
from hwconv.spec import EngineConfig

U96 = EngineConfig()
PYNQ = load_board("pynq_z2").default_engine_config()


@pytest.mark.parametrize("config", [U96, PYNQ], ids=["ultra96v2", "pynq_z2"])
def test_programs_are_legal_and_a_function_of_their_seed(config):
    for seed in range(2):
        spec = generate(config, seed, 12)
        again = generate(config, seed, 12)
        assert spec.to_dict() == again.to_dict()
        program, inputs = build(config, spec)         # Program.validate ran inside
        assert len(program.layers) == len(spec.layers) >= 12
        p2, i2 = build(config, ProgramSpec.from_dict(json.loads(json.dumps(spec.to_dict()))))
        assert p2.to_bytes() == program.to_bytes()
        assert all(np.array_equal(inputs[k], i2[k]) for k in inputs)
    assert spec.to_dict() != generate(config, 0, 12).to_dict()


@pytest.mark.parametrize("config", [U96, PYNQ], ids=["ultra96v2", "pynq_z2"])
def test_layers_hit_the_bins_they_aim_at(config):
    seeds, layers = range(4), 24
    for seed in seeds:
        spec = generate(config, seed, layers)
        program, inputs = build(config, spec)
        records = classify_layers(program, golden_arena(program, inputs), spec.backpressure > 0)
        assert all(r.bin[-1] == seed % 2 for r in records), "odd seeds run under backpressure"
        targets = iter(target_bins(seed, layers))
        for L, r in zip(spec.layers, records):
            if L.op == "conv" and L.kernel == 1 and L.clamp and L.out.channels == 1 \
                    and r.bin[0] == "conv" and L is not spec.layers[-1]:
                nxt = spec.layers[spec.layers.index(L) + 1]
                if nxt.op == "deform" and nxt.in1 == L.out:
                    continue              # an offset predictor added before a deformable layer
            # Every axis is the generator's choice, a predicted dilation map's class too (its
            # clamp bounds the map's maximum), so a full run hits every bin it aims at.
            assert r.bin == next(targets), f"seed {seed}: {L}"


def test_consecutive_seeds_sweep_every_legal_bin():
    layers = 50
    per_bp = {bp: len(bins) for bp, bins in bin_order().items()}
    assert sum(per_bp.values()) == len(legal_bins())
    programs = 2 * max(-(-n // layers) for n in per_bp.values())
    aimed = {b for s in range(programs) for b in target_bins(s, layers)}
    assert aimed == set(legal_bins())


def test_unreachable_bins_are_named_with_the_spec_rule():
    assert len(all_bins()) == np.prod([len(v) for v in AXES.values()])
    assert unreachable(("dwconv", 1, 1, "none", "u>u", "whole>own", 0, 0)).startswith("dwconv kernels")
    assert unreachable(("maxpool", 3, 2, "none", "u>s", "whole>own", 0, 0)) is not None
    assert unreachable(("conv", 3, 4, "past_clamp", "u>u", "whole>own", 0, 0)) is not None
    assert unreachable(("deform", 3, 1, "past_clamp", "s>u", "slice>interleaved", 1, 1)) is None
    cov = Coverage()
    b = ("deform", 3, 1, "past_clamp", "s>u", "slice>interleaved", 1, 1)
    cov.add(LayerRecord(b, 8, "other", ("line",), True))
    s = cov.summary()
    assert s["bins_hit"] == 1 and s["legal_bins"] == len(legal_bins())
    assert list(b) not in s["bins_never_hit"] and len(s["bins_never_hit"]) == len(legal_bins()) - 1
    assert s["secondary"]["buffer_limit"] == {"line": 1}


@pytest.mark.parametrize("limit, target", [
    ("line", ("deform", 3, 1, "within", "u>u", "whole>own", 0, 0)),   # 15 rows: the line buffer
    ("row", ("dwconv", 3, 1, "none", "u>u", "whole>own", 0, 0)),
    ("weight", ("conv", 3, 1, "none", "s>u", "whole>own", 0, 0))])
def test_a_layer_grown_to_a_buffer_limit_sits_there(limit, target):
    from hwconv.sim.verify.generate import _Generator

    g = _Generator(U96, 3)
    layers = g._at_limit(target, limit)
    assert layers is not None
    g.spec.layers = layers
    program, inputs = build(U96, g.spec)
    (r,) = classify_layers(program, golden_arena(program, inputs), False)
    assert limit in r.limits and r.bin == target


def _mutant_runner(config):
    """run_specs stand-in: the 'RTL' is the golden model with the dilation clamped one too low."""
    real = ops.deform_depthwise

    def mutant(x, w, dilation, max_dilation):
        return real(x, w, np.minimum(dilation, max_dilation - 1), max_dilation - 1)

    def run_specs(cfg, specs, job, **kw):
        outs = []
        for name, spec in specs:
            program, inputs = build(cfg, spec)
            want = golden_arena(program, inputs)
            ops.deform_depthwise = mutant
            try:
                got = golden_arena(program, inputs)
            finally:
                ops.deform_depthwise = real
            cmp = compare_arenas(program, got, want)
            outs.append(Outcome(name, spec.seed, len(program.layers), cmp.match,
                                "" if cmp.match else cmp.describe()))
        return outs
    return run_specs


def test_a_failing_program_is_minimised_and_written(monkeypatch, tmp_path):
    runner = _mutant_runner(U96)
    monkeypatch.setattr(minimise_mod, "run_specs", runner)
    failing = None
    for seed in range(20):
        spec = generate(U96, seed, 20)
        (out,) = runner(U96, [("p", spec)], tmp_path)
        if not out.ok:
            failing = (spec, out)
            break
    assert failing is not None, "the clamp mutant must be caught within 20 seeds"
    spec, out = failing
    small, small_out = minimise_mod.minimise(U96, spec, out, tmp_path / "work")
    assert not small_out.ok
    program, _ = build(U96, small)
    assert len(program.layers) == 1 and program.layer_names[0].endswith("deform")
    assert minimise_mod.size_of(U96, small) < minimise_mod.size_of(U96, spec)
    d = program.layers[0]
    assert d.in0.height * d.in0.width * d.in0.channels <= 256, "shapes shrink"
    paths = minimise_mod.write_failure(U96, tmp_path / "f", spec, out, small, small_out,
                                       f"hwconv verify --seed {spec.seed} --programs 1")
    names = {p.name for p in paths}
    assert {"original.hwc", "minimised.hwc", "report.txt"} <= names
    report = (tmp_path / "f" / "report.txt").read_text()
    assert "first mismatching layer" in report and "DEFORM_DW" in report


def test_reports_of_side_by_side_runs_merge(tmp_path):
    from hwconv.sim.verify.report import merge_data, report_data
    from hwconv.sim.verify.run import RunSummary

    def summary(seed, bins):
        cov = Coverage()
        for b in bins:
            cov.add(LayerRecord(b, 4, "<P", (), False))
        out = Outcome(f"seed{seed}", seed, len(bins), True, cycles=100)
        return RunSummary(U96, seed, 1, len(bins), [out], cov, 10.0 + seed, 1.0, 1)

    b1, b2 = legal_bins()[:2]
    data = merge_data([report_data(summary(0, [b1, b2])), report_data(summary(1, [b1]))])
    hits = {tuple(b["bin"].values()): b["hits"] for b in data["bins"]}
    assert hits[b1] == 2 and hits[b2] == 1 and data["layers"] == 3 and data["programs"] == 2
    assert data["coverage"]["bins_hit"] == 2 and data["wall_seconds"] == 11.0
    assert data["coverage"]["axes"]["op"][b1[0]] >= 2 and data["seeds_run"] == "0; 1"
    # A program whose pool was killed before it ran is reported apart, not as a mismatch.
    stopped = report_data(summary(2, [b1]))
    stopped["failures"] = [{"seed": 3, "layers": 0, "why": "worker failed: BrokenProcessPool()"}]
    stopped.update(programs=2, mismatching_programs=1, seeds_run="2..3")
    data = merge_data([stopped])
    assert data["failures"] == [] and data["not_run"] == [3] and data["programs"] == 1
    assert data["mismatching_programs"] == 0 and data["seeds_run"] == "2"


def test_cli_refuses_bad_options(capsys, tmp_path):
    from hwconv.sim.verify.cli import main

    a_file = tmp_path / "report"
    a_file.write_text("kept")
    assert main(["--programs", "1", "-o", str(a_file)]) == 2    # before any simulation
    assert "-o" in capsys.readouterr().err and a_file.read_text() == "kept"

    assert main(["--board", "no_such_board"]) == 2
    assert "unknown board" in capsys.readouterr().err
    assert main(["--layers", "5000"]) == 2
    assert "--layers 5000" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["--programs", "0"])
    assert exc.value.code == 2


# -- the fixed-seed slice on the Verilator engine ----------------------------------------------
@pytest.mark.engine
def test_fixed_seed_slice_on_verilator_matches_golden(tmp_path):
    from hwconv.sim.verify.run import verify
    from hwconv.toolchain import verilator_env

    if not verilator_env():
        pytest.skip("verilator not installed")
    s = verify(U96, seed=0, programs=2, layers=12, workers=2, batch=1, out_dir=tmp_path)
    assert not s.failures, [f"seed {o.seed}: {o.why}" for o in s.failures]
    assert s.layers >= 24 and s.coverage.layers == s.layers
    assert {o.seed for o in s.outcomes} == {0, 1}
    assert s.coverage.summary()["axes"]["backpressure"] == {
        "0": sum(o.layers for o in s.outcomes if o.seed == 0),
        "1": sum(o.layers for o in s.outcomes if o.seed == 1)}
