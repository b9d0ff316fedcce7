"""Bad input to quantize, export, run and validate (issue 11 items in the quantisation and driver
commands): one line naming what is wrong, exit code 2, nothing written."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hwconv.cli import main
from hwconv.quant.checkpoint import save_checkpoint, set_quant_mode
from hwconv.quant.data import VOC_CLASSES, load_dataset
from hwconv.quant.data.voc_writer import write_voc
from hwconv.quant.export import export_program
from hwconv.quant.models import build_detector
from hwconv.spec import EngineConfig


def _fails(argv: list[str], capsys, *needles: str) -> str:
    """The command exits 2 with one error line containing every needle (argparse or hwconv's)."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's parse-time refusal
        code = exc.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    line = err.splitlines()[-1]
    assert "Traceback" not in err and all(n in line for n in needles), err
    return line


@pytest.fixture(scope="module")
def tiny_program(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    m = build_detector("tiny")
    m.train()
    with torch.no_grad():
        m(torch.rand(2, 3, 128, 128))
    path = tmp_path_factory.mktemp("p") / "tiny.hwc"
    export_program(m.eval(), EngineConfig()).save(path)
    return path


@pytest.fixture(scope="module")
def voc20(tmp_path_factory) -> Path:
    """A two-image VOC folder in 300x200 pictures; objects named from the 20 VOC classes."""
    root = tmp_path_factory.mktemp("voc20")
    write_voc(load_dataset("synthetic", "val", num_images=2), root, "val", size=(300, 200),
              class_names=VOC_CLASSES[:10])
    return root


@pytest.fixture(scope="module")
def qat_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    m = build_detector("tiny")
    set_quant_mode(m, "qat")
    path = tmp_path_factory.mktemp("ck") / "last.pt"
    save_checkpoint(path, m, epoch=1)
    return path


# ---------------------------------------------------------------- numeric options at parse time

@pytest.mark.parametrize("argv, option", [
    (["quantize", "--epochs", "-1"], "--epochs"),
    (["quantize", "--qat-epochs", "0"], "--qat-epochs"),
    (["quantize", "--batch-size", "0"], "--batch-size"),
    (["quantize", "--lr", "nan"], "--lr"),
    (["quantize", "--input-size", "100"], "--input-size"),
    (["quantize", "--classes", "cat,,dog"], "--classes"),
    (["quantize", "--classes", "cat,cat"], "--classes"),
    (["export", "x.pt", "--verify", "-1"], "--verify"),
    (["export", "x.pt", "--verify-ap", "-3"], "--verify-ap"),
    (["validate", "--program", "p.hwc", "--max-images", "0"], "--max-images"),
    (["validate", "--program", "p.hwc", "--score-threshold", "2"], "--score-threshold"),
    (["run", "--program", "p.hwc", "--image", "i.png", "--score-threshold", "-0.5"], "--score-threshold"),
])
def test_numeric_options_are_refused_while_parsing(argv, option, capsys, tmp_path):
    _fails(argv + ["-o", str(tmp_path / "o")] if argv[0] in ("quantize", "export") else argv, capsys, option)
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- quantize writes nothing on failure

def test_quantize_bad_data_leaves_no_folder(tmp_path, capsys, voc20):
    out = tmp_path / "run"
    _fails(["quantize", "--data", "voc", "--data-root", str(tmp_path / "nope"), "-o", str(out)], capsys,
           "split list missing")
    assert not out.exists()
    # The validation split is checked before training: a val object outside --classes is refused.
    _fails(["quantize", "--data", "voc", "--data-root", str(voc20), "--train-split", "val",
            "--classes", "cat,dog", "-o", str(out)], capsys, "not a known category")
    assert not out.exists()


def test_training_that_fails_before_its_first_checkpoint_leaves_no_folder(tmp_path, monkeypatch):
    from hwconv.quant import train as train_mod
    from hwconv.quant.data.prepare import PreparedSet

    def boom(*args, **kw):
        raise FloatingPointError("epoch 1 step 0: loss is nan")

    monkeypatch.setattr(train_mod, "_run_epoch", boom)
    data = PreparedSet(load_dataset("synthetic", "train", num_images=2), 128)
    with pytest.raises(FloatingPointError):
        train_mod.train(build_detector("tiny"), data, epochs=1, batch_size=2, lr=1e-3, out_dir=tmp_path / "float",
                        seed=0, progress=False)
    assert not (tmp_path / "float").exists()


def test_quantize_out_must_be_a_folder(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    _fails(["quantize", "-o", str(f)], capsys, "-o", "is a file")
    _fails(["quantize", "-o", str(f / "sub")], capsys, "is a file")
    assert f.read_text() == "x"


def test_quantize_cuda_without_a_gpu_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _fails(["quantize", "--device", "cuda", "-o", str(tmp_path / "r")], capsys, "--device cuda")
    assert not (tmp_path / "r").exists()


def test_quantize_resume_without_a_run_is_one_line(tmp_path, capsys):
    _fails(["quantize", "--resume", "-o", str(tmp_path / "r")], capsys, "--resume", "no checkpoint")


# ---------------------------------------------------------------- export

def _edited(qat_checkpoint: Path, tmp_path: Path, edit) -> Path:
    ckpt = torch.load(qat_checkpoint, weights_only=True)
    edit(ckpt)
    path = tmp_path / "edited.pt"
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize("edit, needle", [
    (lambda c: c.pop("config"), "'config'"),
    (lambda c: c.pop("quant_state"), "'quant_state'"),
    (lambda c: c["model"]["hm.2.conv.weight"].fill_(float("nan")), "hm.2.conv.weight holds NaN"),
    (lambda c: c["model"].__setitem__("hm.2.conv.weight", torch.zeros(3, 32, 1, 1)), "do not fit"),
    (lambda c: c.__setitem__("quant_mode", "float"), "quantisation mode 'float'"),
])
def test_export_of_a_broken_checkpoint_is_one_line_and_writes_nothing(edit, needle, qat_checkpoint, tmp_path,
                                                                      capsys):
    bad = _edited(qat_checkpoint, tmp_path, edit)
    out = tmp_path / "exp"
    _fails(["export", str(bad), "-o", str(out), "--verify", "0"], capsys, str(bad), needle)
    assert not out.exists()


def test_export_checks_verify_ap_options_before_writing(qat_checkpoint, tmp_path, capsys):
    out = tmp_path / "exp"
    _fails(["export", str(qat_checkpoint), "-o", str(out), "--verify", "0", "--verify-ap", "2",
            "--verify-data", "voc"], capsys, "--verify-ap", "--data-root")
    assert not out.exists()
    f = tmp_path / "file"
    f.write_text("x")
    _fails(["export", str(qat_checkpoint), "-o", str(f), "--verify", "0"], capsys, "is a file")


# ---------------------------------------------------------------- validate

def test_validate_refuses_a_program_with_other_classes(tiny_program, voc20, capsys):
    _fails(["validate", "--program", str(tiny_program), "--data", "voc", "--data-root", str(voc20),
            "--classes", ",".join(VOC_CLASSES)], capsys, "20 classes", "predicts 10")


def test_validate_refuses_coco_without_categories(tiny_program, tmp_path, capsys):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "val2017").mkdir()
    Image.new("RGB", (40, 30)).save(tmp_path / "val2017" / "a.jpg")
    (tmp_path / "annotations" / "instances_val2017.json").write_text(
        '{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [], "categories": []}')
    _fails(["validate", "--program", str(tiny_program), "--data", "coco", "--data-root", str(tmp_path)], capsys,
           "instances_val2017.json", "'categories' is empty")


# ---------------------------------------------------------------- run: images and -o

def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose IHDR claims width x height, with one tiny IDAT: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_run_refuses_bombs_fifos_and_non_png_output(tiny_program, tmp_path, capsys):
    bomb = tmp_path / "bomb.png"
    _png_header_only(bomb, 12000, 12000)
    _fails(["run", "--program", str(tiny_program), "--image", str(bomb)], capsys, "12000x12000")
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    _fails(["run", "--program", str(tiny_program), "--image", str(fifo)], capsys,
           "--image", "fifo.png: image must be a regular file, this is a FIFO")
    img = tmp_path / "in.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(img)
    _fails(["run", "--program", str(tiny_program), "--image", str(img), "-o", str(tmp_path / "x.jpg")], capsys,
           "x.jpg", ".png")
    assert not (tmp_path / "x.jpg").exists()


def test_run_refuses_a_bad_png_output_before_running(tiny_program, tmp_path, capsys):
    img = tmp_path / "in.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(img)
    (tmp_path / "dir.png").mkdir()
    _fails(["run", "--program", str(tiny_program), "--image", str(img), "-o", str(tmp_path / "dir.png")], capsys,
           "-o", "dir.png: is a folder")
    (tmp_path / "file").write_text("x")
    _fails(["run", "--program", str(tiny_program), "--image", str(img), "-o", str(tmp_path / "file" / "o.png")],
           capsys, "-o", "is a file, so nothing can be created under it")
    _fails(["run", "--program", str(tiny_program), "--image", str(tmp_path / "none.png")], capsys,
           "--image", "none.png: cannot read image")


def test_validate_refuses_a_decompression_bomb_in_the_data_set(tiny_program, tmp_path, capsys):
    from hwconv.quant.data.voc_writer import voc_xml

    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (tmp_path / d).mkdir(parents=True)
    _png_header_only(tmp_path / "JPEGImages" / "a.jpg", 12000, 12000)
    (tmp_path / "Annotations" / "a.xml").write_text(voc_xml("a.jpg", 12000, 12000, np.float32([[0, 0, 9, 9]]), ["0"]))
    (tmp_path / "ImageSets" / "Main" / "val.txt").write_text("a\n")
    _fails(["validate", "--program", str(tiny_program), "--data", "voc", "--data-root", str(tmp_path),
            "--classes", ",".join(str(i) for i in range(10))], capsys, "a.jpg", "12000x12000")


def test_trained_vs_deployed_refuses_a_bad_quantize_report(tmp_path):
    from hwconv.fileio import InputFileError
    from hwconv.quant.pipeline import trained_vs_deployed

    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(InputFileError, match="deep.json: JSON nests 100000 levels"):
        trained_vs_deployed(deep, tmp_path / "p.hwc")
    other = tmp_path / "other.json"
    other.write_text('{"data": "voc"}')
    with pytest.raises(ValueError, match="other.json: not a quantize.json report, field 'val_split' is missing"):
        trained_vs_deployed(other, tmp_path / "p.hwc")
    os.mkfifo(tmp_path / "fifo.json")
    with pytest.raises(InputFileError, match="fifo.json: quantize report must be a regular file"):
        trained_vs_deployed(tmp_path / "fifo.json", tmp_path / "p.hwc")


def test_cuda_device_follows_local_rank(monkeypatch):
    """Under torchrun each process takes GPU LOCAL_RANK (not every rank GPU 0); a rank past the
    GPUs torch sees is a one-line error."""
    import torch

    from hwconv.quant.pipeline import resolve_device

    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device("cuda") == torch.device("cuda", 1) and chosen == [1]
    monkeypatch.delenv("LOCAL_RANK")
    assert resolve_device("auto") == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_RANK", "3")
    with pytest.raises(ValueError, match="LOCAL_RANK=3 but torch sees 2 GPU"):
        resolve_device("cuda")
