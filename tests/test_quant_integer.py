"""Integer path (exported program on the golden model) vs fake-quant path: elements and AP.

The figures on a trained model come from `python -m benchmarks.integer` (slow test below,
and docs/results/integer_vs_fakequant.md); the fast tests check the plumbing on a calibrated
untrained tiny model and make the comparison fail where it must.
"""

import json

import numpy as np
import pytest
import torch

from hwconv.cli import main
from benchmarks import integer as bench
from hwconv.quant import integer_ap as iap
from hwconv.quant import verify
from hwconv.quant.checkpoint import save_checkpoint
from hwconv.quant.export import export_program
from hwconv.quant.models import build_detector


def _calibrated(seed=0):
    torch.manual_seed(seed)
    m = build_detector("tiny")
    m.train()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _ in range(3):
            m(torch.rand(4, 3, 128, 128, generator=g))
    return m.eval()


@pytest.fixture(scope="module")
def model_and_program():
    m = _calibrated()
    return m, export_program(m)


@pytest.fixture(scope="module")
def val_set():
    return iap.validation_set("synthetic", 128, images=3)


def test_dequantised_integers_are_the_fake_quant_values(model_and_program, val_set):
    """Where the integers agree, the golden path decodes exactly the fake-quant numbers."""
    m, prog = model_and_program
    image = val_set[0][0]
    with torch.no_grad():
        fq = {k: v[0] for k, v in m(image[None]).items()}
    again = verify.dequantise(verify.fake_quant_integers(fq, prog), prog)
    for k in fq:
        assert torch.equal(again[k], fq[k]), k


def test_element_stats_counts():
    s = verify.ElementStats()
    s.add({"a": np.array([[[0, 1, 2, 3]]])}, {"a": np.array([[[0, 2, 2, 6]]])})
    s.add({"a": np.array([[[5]]])}, {"a": np.array([[[5]]])})
    got = s.summary()
    assert got["outputs"]["a"] == {"equal": 3, "total": 5, "max_diff": 3, "diff_1": 1, "diff_gt1": 1, "identical": 0.6}
    assert got["identical"] == 0.6
    with pytest.raises(ValueError, match="output 'a': shapes"):
        s.add({"a": np.zeros((1, 1, 2))}, {"a": np.zeros((1, 2, 1))})


def test_integer_vs_fakequant_on_validation_images(model_and_program, val_set):
    m, prog = model_and_program
    r = iap.integer_vs_fakequant(m, prog, val_set, progress=False)
    assert r["images"] == 3 and set(r["outputs"]) == {"hm", "wh", "reg"}
    assert r["identical"] >= 0.999, r  # vs the float64 reference
    assert r["float32"]["identical"] >= 0.99, r
    assert len(r["golden_detections"]) == 3
    for path in ("fake_quant", "fake_quant_float32", "integer"):
        assert set(r[path]) == {"AP50", "AP"}
    assert r["golden_s_per_image"] > 0


def test_identical_integers_give_identical_detections_and_ap(model_and_program, val_set, monkeypatch):
    """Feed the float64 fake-quant integers in as the 'golden' outputs: every element matches, the
    decoded detections are the same tensors, and the AP difference is exactly 0."""
    m, prog = model_and_program
    with torch.no_grad():
        fq = verify.float64_copy(m)(torch.stack([val_set[i][0] for i in range(3)]).double())
    queue = [verify.fake_quant_integers({k: v[i] for k, v in fq.items()}, prog) for i in range(3)]
    monkeypatch.setattr(iap, "golden_integers", lambda program, image: queue.pop(0))
    r = iap.integer_vs_fakequant(m, prog, val_set, progress=False)
    assert r["identical"] == 1.0 and r["delta_AP50_points"] == 0 and r["delta_AP_points"] == 0
    for a, b in zip(r["fake_quant_detections"], r["golden_detections"]):
        for k in ("boxes", "scores", "labels"):
            assert torch.equal(a[k], b[k]), k
    assert len(r["golden_detections"]) == 3


def test_float64_reference_leaves_the_model_alone(model_and_program, val_set):
    m, prog = model_and_program
    m64 = verify.float64_copy(m)
    assert next(m64.parameters()).dtype == torch.float64 and next(m.parameters()).dtype == torch.float32
    r64 = verify.compare_outputs(m, prog, val_set[0][0][None])
    r32 = verify.compare_outputs(m, prog, val_set[0][0][None], float64=False)
    assert r64["identical"] >= 0.999 and r32["identical"] >= 0.99


def test_a_broken_integer_path_is_reported(model_and_program, val_set, monkeypatch):
    m, prog = model_and_program
    real = verify.golden_integers

    def silent_heatmap(program, image):  # the hm output stuck at its minimum: no peaks
        out = real(program, image)
        out["hm"] = np.full_like(out["hm"], -128)
        return out

    monkeypatch.setattr(iap, "golden_integers", silent_heatmap)
    r = iap.integer_vs_fakequant(m, prog, val_set, progress=False)
    assert r["outputs"]["hm"]["identical"] < 0.5 and r["outputs"]["hm"]["max_diff"] > 1
    floor = torch.sigmoid(torch.tensor(-128 * prog.tensor("hm").scale))
    assert all(bool((d["scores"] <= floor + 1e-6).all()) for d in r["golden_detections"])
    assert not iap.meets_targets(r)


def test_meets_targets_thresholds():
    ok = {"identical": 0.9995, "delta_AP50_points": -0.2}
    assert iap.meets_targets(ok)
    assert not iap.meets_targets({**ok, "identical": 0.9989})
    assert not iap.meets_targets({**ok, "delta_AP50_points": 0.25})
    assert not iap.meets_targets({**ok, "delta_AP50_points": None})


def test_bad_input_is_named(model_and_program):
    m, prog = model_and_program
    with pytest.raises(ValueError, match="--data voc needs --data-root"):
        iap.validation_set("voc", 128, images=2)
    four_classes = iap.validation_set("synthetic", 128, images=1)
    four_classes.class_names = ("a", "b", "c", "d")
    with pytest.raises(ValueError, match="the dataset has 4 classes, the detector 'tiny' predicts 10"):
        iap.integer_vs_fakequant(m, prog, four_classes, progress=False)


def test_bench_command_and_export_option_on_a_checkpoint(tmp_path, capsys):
    ckpt = save_checkpoint(tmp_path / "w4a8.pt", _calibrated(seed=4), epoch=1)
    out = tmp_path / "bench"
    code = bench.main([str(out), "--checkpoint", str(ckpt), "--val-images", "2", "--quiet"])
    r = json.loads((out / "bench_integer.json").read_text())
    assert code == (0 if r["meets_targets"] else 1)
    assert r["images"] == 2 and r["training"] is None and r["checkpoint"] == str(ckpt)
    md = (out / "integer_vs_fakequant.md").read_text()
    assert "| hm |" in md and "| integer (program on the golden model) |" in md and "float32" in md
    assert (out / "golden_detections.png").stat().st_size > 0 and list(out.glob("*.hwc"))
    capsys.readouterr()

    assert main(["export", str(ckpt), "-o", str(tmp_path / "export"), "--verify", "0", "--verify-ap", "2"]) == 0
    text = capsys.readouterr().out
    assert "golden vs fake-quant on 2 synthetic images:" in text and "AP50 integer" in text
    report = json.loads((tmp_path / "export" / "export.json").read_text())
    assert report["verify_ap"]["images"] == 2 and "golden_detections" not in report["verify_ap"]


def test_bench_refuses_a_float_checkpoint(tmp_path, capsys):
    from hwconv.quant.checkpoint import set_quant_mode

    m = _calibrated()
    set_quant_mode(m, "float")
    ckpt = save_checkpoint(tmp_path / "float.pt", m, epoch=1)
    assert bench.main([str(tmp_path / "b"), "--checkpoint", str(ckpt), "--quiet"]) == 2
    assert "quantisation mode 'float'" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_trains_briefly_and_integer_path_matches(tmp_path):
    """The whole command without a checkpoint: ~1 minute of training, then the comparison."""
    code = bench.main([str(tmp_path), "--train-minutes", "1", "--train-images", "400", "--val-images", "50", "--quiet"])
    r = json.loads((tmp_path / "bench_integer.json").read_text())
    assert r["training"]["phases"]["qat"]["epochs"] >= 2
    assert r["identical"] >= 0.999, r
    assert code == (0 if r["meets_targets"] else 1)
