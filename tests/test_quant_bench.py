"""The quantisation benchmark commands (bench_train, bench_ablation, bench_deepforest): end to end
with tiny budgets, well-formed outputs, budget planning, orientation augmentation, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import ablation as bench_ablation, deepforest as bench_deepforest, train as bench_train
from benchmarks.train import FirstImages, _fit_one_epoch, _plan_cost, _plan_epochs
from hwconv.quant.data import load_dataset

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_phase(p: dict) -> None:
    assert 0.0 <= p["AP50"] <= 1.0 and 0.0 <= p["AP"] <= p["AP50"]
    assert p["epochs"] >= 1 and p["images_seen"] >= 1 and len(p["curve"]) == p["epochs"]
    assert p["stopped_early"] or "val_AP50" in p["curve"][-1]  # a completed plan validates its last epoch


def test_bench_train_end_to_end_writes_its_figures(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench_train.main([str(out), "--minutes", "0.25", "--train-images", "48", "--val-images", "8",
                             "--procs", "1", "--eval-every", "2", "--quiet", "--work-dir", str(tmp_path / "w")]) == 0
    r = json.loads(out.read_text())
    for phase in ("float", "qat"):
        _check_phase(r[phase])
    assert r["float_AP50"] == r["float"]["AP50"] and r["w4a8_AP50"] == r["qat"]["AP50"]
    assert r["delta_AP50_points"] == pytest.approx(100 * (r["float_AP50"] - r["w4a8_AP50"]), abs=0.01)
    assert set(r["goal"]) == {"float_AP50>=0.80", "w4a8_within_2_points"}
    assert r["recipe"]["lr"] == 5e-3 and r["procs"] == 1
    assert r["wall_s"] > 0 and r["budget_s"] == 15.0  # wall time is reported, not asserted: it depends on the load
    assert (tmp_path / "w" / "qat" / "last.pt").exists()
    assert "W4A8 : AP50" in capsys.readouterr().out


def test_bench_train_rejects_bad_options(capsys):
    with pytest.raises(SystemExit):
        bench_train.main(["x.json", "--minutes", "0"])
    with pytest.raises(SystemExit):
        bench_train.main(["x.json", "--float-share", "1.5"])
    assert "float_share" in capsys.readouterr().err


def test_epoch_plan_counts_folded_epochs_and_never_plans_zero():
    # 10 steps/epoch at 1 s, no eval: 35 s fit 3 epochs; a folded last epoch at 2 s/step fits only 2.
    assert _plan_epochs(35.0, 1.0, 10, 0.0, 1) == 3
    assert _plan_epochs(35.0, 1.0, 10, 0.0, 1, folded_epochs=1, folded_step_s=2.0) == 2
    assert _plan_cost(2, 1.0, 10, 0.0, 1, 1, 2.0) == 30.0
    assert _plan_epochs(1.0, 1.0, 10, 0.0, 1) == 1


def test_a_too_long_single_epoch_is_cut_to_whole_batches():
    ds = load_dataset("synthetic", "val", num_images=40)
    assert _fit_one_epoch(ds, 10.0, 5.0, 8) is ds
    short = _fit_one_epoch(ds, 5.0, 10.0, 8)  # half the time: 20 images, whole batches of 8 -> 16
    assert isinstance(short, FirstImages) and len(short) == 16
    assert short.annotation(3)[2].tolist() == ds.annotation(3)[2].tolist()
    assert len(_fit_one_epoch(ds, 0.0, 10.0, 8)) == 8  # at least one batch
    with pytest.raises(IndexError):
        short[16]


def test_ablation_end_to_end_resumes_and_reports(tmp_path, capsys):
    args = [str(tmp_path), "--minutes-per-run", "0.1", "--variants", "square_depthwise", "--samplings", "integer",
            "--train-images", "32", "--val-images", "8", "--batch-size", "8", "--device", "cpu", "--threads", "1",
            "--quiet"]
    assert bench_ablation.main(args) == 0
    run = json.loads((tmp_path / "runs" / "square_depthwise_integer.json").read_text())
    assert run["engine_mode"] and run["variant"] == "square_depthwise" and run["device"].startswith("cpu")
    assert run["gmac"] > 0 and run["float_epochs"] >= 1 and run["qat_epochs"] >= 1
    report = json.loads((tmp_path / "ablation.json").read_text())["runs"]
    assert [(r["variant"], r["sampling"]) for r in report] == [("square_depthwise", "integer")]
    table = (tmp_path / "ablation.md").read_text()
    assert "| **square_depthwise** | integer |" in table and f"{run['float_AP50']:.3f}" in table
    assert (tmp_path / "ablation.png").read_bytes().startswith(PNG_MAGIC)
    capsys.readouterr()
    assert bench_ablation.main(args) == 0  # the run file exists: nothing is retrained
    assert "/1]" not in capsys.readouterr().out


def test_ablation_report_names_a_malformed_run_file(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "full_integer.json").write_text('{"variant": "full"}')
    with pytest.raises(ValueError, match="full_integer.json"):
        bench_ablation.main([str(tmp_path), "--report-only"])
    (tmp_path / "runs" / "full_integer.json").unlink()
    with pytest.raises(ValueError, match="no run results"):
        bench_ablation.main([str(tmp_path), "--report-only"])


def test_ablation_rejects_an_unknown_variant(capsys):
    with pytest.raises(SystemExit):
        bench_ablation.main(["out", "--variants", "full,squiggly"])
    assert "squiggly" in capsys.readouterr().err


def test_orientations_move_boxes_with_the_pixels():
    size = 16
    image = np.zeros((size, size, 3), np.uint8)
    image[2:5, 9:15] = 255  # rows 2..4, columns 9..14: box x1=9, y1=2, x2=15, y2=5
    box = np.float32([[9, 2, 15, 5]])
    seen = set()
    for k in range(8):
        rotated, b = bench_deepforest.orient(image, box, k)
        ys, xs = np.nonzero(rotated[..., 0])
        assert b.tolist() == [[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], k
        seen.add(tuple(b[0].tolist()))
    assert len(seen) == 8  # all eight orientations differ for this off-centre, non-square box
    with pytest.raises(ValueError, match="square"):
        bench_deepforest.orient(np.zeros((4, 5, 3), np.uint8), box, 1)


def test_all_orientations_dataset_has_eight_samples_per_tile():
    base = load_dataset("synthetic", "val", num_images=2)
    aug = bench_deepforest.AllOrientations(base)
    assert len(aug) == 16 and aug.class_names == base.class_names
    image, boxes, labels = aug.load(8)  # tile 1, as it is
    ref = base.sample(1)
    assert np.array_equal(image, ref[0]) and np.array_equal(boxes, ref[1]) and np.array_equal(labels, ref[2])
    assert aug.annotation(9)[2].shape == ref[1].shape


@pytest.mark.slow  # config a on CPU: about a minute on 2 busy cores
def test_deepforest_end_to_end_writes_its_figures(tmp_path):
    assert bench_deepforest.main([str(tmp_path), "--minutes", "0.3", "--train-overlap", "0", "--no-augment",
                                  "--batch-size", "2", "--device", "cpu", "--threads", "1", "--quiet"]) == 0
    r = json.loads((tmp_path / "deepforest.json").read_text())
    assert r["config"] == "a" and r["num_classes"] == 1 and r["test_crowns"] > 0 and r["train_tiles"] > 0
    for phase in ("float", "qat"):
        _check_phase(r[phase])
    assert "| float |" in (tmp_path / "deepforest.md").read_text()
    assert (tmp_path / "deepforest_detections.png").read_bytes().startswith(PNG_MAGIC)
