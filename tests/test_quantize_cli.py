"""`hwconv quantize` as a user runs it on their own VOC folder (issue 14), and what it reports is
what `hwconv validate` measures on the exported program (issue 16).

One short run (seconds of training) on a generated VOC folder of 500x375 JPEGs whose only class
is a custom name, started from a torchvision-format ShuffleNetV2 state dict made here; then
export, validate on the golden backend, --resume of both phases and --init's key mapping.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from hwconv.cli import main
from hwconv.quant.checkpoint import read_checkpoint
from hwconv.quant.data import load_dataset
from hwconv.quant.data.voc_writer import write_voc
from hwconv.quant.models import build_detector
from hwconv.quant.pretrained import InitError, load_init

RUN = ["--epochs", "1", "--qat-epochs", "1", "--batch-size", "8"]


def torchvision_shufflenet(widths: tuple[int, ...], repeats: tuple[int, ...], seed: int = 0) -> dict:
    """A state dict with torchvision's ShuffleNetV2 names and shapes for these stage widths:
    conv1, stage2-4 of InvertedResidual units (branch1 on the stride-2 unit), conv5, fc."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def conv(name, shape):  # He-initialised, like a trained network's scale
        fan_in = shape[1] * shape[2] * shape[3]
        sd[f"{name}.weight"] = torch.randn(*shape, generator=g) * (2.0 / fan_in) ** 0.5

    def bn(name, c):
        sd[f"{name}.weight"] = 1 + 0.1 * torch.randn(c, generator=g)
        sd[f"{name}.bias"] = 0.1 * torch.randn(c, generator=g)
        sd[f"{name}.running_mean"] = 0.1 * torch.randn(c, generator=g)
        sd[f"{name}.running_var"] = 1 + 0.1 * torch.rand(c, generator=g)
        sd[f"{name}.num_batches_tracked"] = torch.tensor(7)

    conv("conv1.0", (widths[0], 3, 3, 3))
    bn("conv1.1", widths[0])
    for s, (cin, cout, rep) in enumerate(zip(widths[:-1], widths[1:], repeats), start=2):
        bf = cout // 2
        for u in range(rep + 1):
            p = f"stage{s}.{u}"
            if u == 0:
                conv(f"{p}.branch1.0", (cin, 1, 3, 3))
                bn(f"{p}.branch1.1", cin)
                conv(f"{p}.branch1.2", (bf, cin, 1, 1))
                bn(f"{p}.branch1.3", bf)
            conv(f"{p}.branch2.0", (bf, cin if u == 0 else bf, 1, 1))
            bn(f"{p}.branch2.1", bf)
            conv(f"{p}.branch2.3", (bf, 1, 3, 3))
            bn(f"{p}.branch2.4", bf)
            conv(f"{p}.branch2.5", (bf, bf, 1, 1))
            bn(f"{p}.branch2.6", bf)
    conv("conv5.0", (1024, widths[-1], 1, 1))
    bn("conv5.1", 1024)
    sd["fc.weight"] = torch.randn(1000, 1024, generator=g)
    sd["fc.bias"] = torch.zeros(1000)
    return sd


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("voc")
    for split, n in (("train", 8), ("val", 4)):
        digits = load_dataset("synthetic", split, image_size=256, num_images=n, num_classes=1)
        write_voc(digits, root, split, size=(500, 375), class_names=["widget"])
    return root


@pytest.fixture(scope="module")
def imagenet_file(tmp_path_factory) -> Path:
    cfg = build_detector("tiny").cfg
    path = tmp_path_factory.mktemp("tv") / "shufflenetv2_imagenet.pth"
    torch.save(torchvision_shufflenet(cfg.widths, cfg.repeats), path)
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory, voc_root, imagenet_file):
    """quantize -> export -> validate, through the CLI; returns the paths and parsed outputs."""
    out = tmp_path_factory.mktemp("run")
    capture = {}
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["quantize", "--data", "voc", "--data-root", str(voc_root), "--init", str(imagenet_file),
                     *RUN, "-o", str(out / "q")]) == 0
        capture["quantize"] = buf.getvalue()
        assert main(["export", str(out / "q" / "qat" / "last.pt"), "-o", str(out / "e"), "--verify", "1"]) == 0
        program = next((out / "e").glob("*.hwc"))
        buf.truncate(0)
        buf.seek(0)
        assert main(["validate", "--backend", "golden", "--program", str(program), "--data", "voc",
                     "--data-root", str(voc_root), "--json"]) == 0
        capture["validate"] = json.loads(buf.getvalue())
    return {"out": out, "program": program, "report": json.loads((out / "q" / "quantize.json").read_text()),
            **capture}


def test_voc_500x375_with_a_custom_class_trains_exports_and_records_what_it_was_trained_for(run):
    r = run["report"]
    assert r["class_names"] == ["widget"] and r["input_size"] == 128 and r["data"] == "voc"
    assert r["val_split"] == "val" and r["val_images"] == 4 and r["augment"] is True
    assert "(4 images at input 128x128" in run["quantize"]
    # stdout is not a terminal here: progress comes as log lines, not a progress bar.
    assert "float epoch 1/1: started" in run["quantize"] and "qat epoch 1/1: started" in run["quantize"]
    assert "float epoch 1/1: loss" in run["quantize"] and "qat epoch 1/1: loss" in run["quantize"]
    from hwconv.spec import Program

    prog = Program.load(run["program"])
    assert prog.extra["class_names"] == ["widget"]
    assert prog.extra["preprocess"]["input_size"] == [128, 128]
    assert prog.extra["trained"]["val_split"] == "val" and prog.extra["trained"]["data"] == "voc"


def test_validate_reproduces_the_ap_quantize_reported(run, voc_root):
    """Same images, preprocessing, decoding and coordinates: the W4A8 AP50 of quantize's last QAT
    evaluation and of validate on the golden model agree within 0.005, and so does each detection."""
    v, r = run["validate"], run["report"]
    assert v["n_images"] == r["val_images"] == 4 and v["input_size"] == [128, 128] and v["split"] == "val"
    assert (v["AP50"] is None) == (r["w4a8_AP50"] is None)
    if v["AP50"] is not None:
        assert abs(v["AP50"] - r["w4a8_AP50"]) <= 0.005, (v["AP50"], r["w4a8_AP50"])
    from hwconv.driver.engine import EngineDriver
    from hwconv.driver.backends.golden import GoldenBackend
    from hwconv.quant.checkpoint import model_from_checkpoint
    from hwconv.quant.data import open_split
    from hwconv.quant.data.prepare import PreparedSet
    from hwconv.quant.evaluate import predict, to_image_coordinates
    from hwconv.spec import Program

    net, _ = model_from_checkpoint(run["out"] / "q" / "qat" / "last.pt")
    source = open_split("voc", "val", root=voc_root, classes=("widget",))
    prepared = PreparedSet(source, 128)
    model_dets = to_image_coordinates(predict(net, prepared, batch_size=4), prepared)
    prog = Program.load(run["program"])
    with EngineDriver(GoldenBackend(prog.config)) as engine:
        engine.load(prog)
        for i, want in enumerate(model_dets):
            image = source.load(i)[0]
            assert image.shape == (375, 500, 3)
            got = engine.detect(image, score_threshold=0.01)
            assert len(got["scores"]) == len(want["scores"]) > 0
            assert np.allclose(got["scores"], want["scores"], rtol=0, atol=1e-6)
            assert np.array_equal(got["labels"], want["labels"])
            assert np.allclose(got["boxes"], want["boxes"], rtol=0, atol=1e-3)
            assert got["boxes"][:, 2].max() <= 500 and got["boxes"][:, 3].max() <= 375


def test_init_from_a_torchvision_state_dict_reports_what_it_loaded(run, imagenet_file):
    assert "(torchvision ShuffleNetV2): loaded" in run["quantize"]
    init = run["report"]["init"]
    assert init["kind"] == "torchvision ShuffleNetV2"
    assert set(init["not_loaded"]) >= {"fc.weight", "fc.bias"}
    # What was loaded is exactly the file's values, under the mapped names.
    net = build_detector("tiny")
    tv = torch.load(imagenet_file, weights_only=True)
    rep = load_init(net, imagenet_file)
    sd = net.state_dict()
    assert torch.equal(sd["stem.0.weight"], tv["conv1.0.weight"])
    assert torch.equal(sd["stages.0.0.branch1.0.0.weight"], tv["stage2.0.branch1.0.weight"])
    assert torch.equal(sd["stages.0.0.branch1.1.1.running_var"], tv["stage2.0.branch1.3.running_var"])
    assert torch.equal(sd["stages.2.1.branch2.2.0.weight"], tv["stage4.1.branch2.5.weight"])
    from hwconv.quant.pretrained import torchvision_key

    backbone = {torchvision_key(k) for k in tv if k.startswith(("conv1.", "stage"))}
    assert backbone <= set(rep["loaded"]) and len(backbone) == 150  # stem + 3 stages of tiny, every tensor
    assert len(rep["loaded"]) + len(rep["not_loaded"]) == len(tv)


def test_init_from_a_float_hwconv_checkpoint_and_refusals(run, tmp_path):
    float_ckpt = run["out"] / "q" / "float" / "last.pt"
    net = build_detector("tiny", num_classes=1)
    rep = load_init(net, float_ckpt)
    assert rep["kind"] == "hwconv checkpoint" and not rep["not_loaded"]
    assert torch.equal(net.state_dict()["hm.2.conv.weight"], read_checkpoint(float_ckpt)["model"]["hm.2.conv.weight"])
    with pytest.raises(InitError, match="a 'qat' checkpoint"):
        load_init(net, run["out"] / "q" / "qat" / "last.pt")
    junk = tmp_path / "junk.pth"
    junk.write_text("not torch")
    with pytest.raises(InitError, match="junk.pth"):
        load_init(net, junk)
    torch.save({"unrelated.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(InitError, match="none of its 1 tensors fits"):
        load_init(net, tmp_path / "other.pth")


@pytest.mark.slow  # two more training runs (minutes on 2 shared cores)
def test_resume_continues_the_qat_phase_then_the_float_phase(run, voc_root, tmp_path):
    q = run["out"] / "q"
    work = tmp_path / "q"
    shutil.copytree(q, work)
    float_before = (work / "float" / "last.pt").read_bytes()
    with pytest.warns(UserWarning, match="changed options"):
        assert main(["quantize", "--data", "voc", "--data-root", str(voc_root), "--resume", "--epochs", "1",
                     "--qat-epochs", "2", "--batch-size", "8", "-o", str(work)]) == 0
    assert (work / "float" / "last.pt").read_bytes() == float_before  # the float phase was not rerun
    qat = read_checkpoint(work / "qat" / "last.pt")
    assert [h["epoch"] for h in qat["extra"]["history"]] == [1, 2]
    assert qat["extra"]["class_names"] == ["widget"]
    # Without a QAT checkpoint, --resume continues the float phase, then runs QAT.
    shutil.rmtree(work / "qat")
    with pytest.warns(UserWarning, match="changed options"):
        assert main(["quantize", "--data", "voc", "--data-root", str(voc_root), "--resume", "--epochs", "2",
                     "--qat-epochs", "1", "--batch-size", "8", "-o", str(work)]) == 0
    fl = read_checkpoint(work / "float" / "last.pt")
    assert [h["epoch"] for h in fl["extra"]["history"]] == [1, 2]
    assert [h["epoch"] for h in read_checkpoint(work / "qat" / "last.pt")["extra"]["history"]] == [1]


def test_trained_vs_deployed_is_the_demo_check(run):
    from hwconv.quant.pipeline import trained_vs_deployed

    r = trained_vs_deployed(run["out"] / "q" / "quantize.json", run["program"])
    assert r["images"] == r["quantize_images"] == 4 and r["input_size"] == [128, 128]
    assert r["validate_AP50"] == run["validate"]["AP50"] and r["quantize_AP50"] == run["report"]["w4a8_AP50"]
    assert r["difference"] is None or abs(r["difference"]) <= 0.005
    assert r["equal_within_0.005"] is (r["difference"] is not None)
