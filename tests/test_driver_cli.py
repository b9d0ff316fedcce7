"""`hwconv run`, `hwconv validate`, `hwconv deploy` (local folder) through the CLI entry point."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from hwconv.cli import main
from hwconv.spec import EngineConfig


@pytest.fixture(scope="module")
def program_path(tmp_path_factory):
    import torch

    from hwconv.quant.export import export_program
    from hwconv.quant.models import build_detector

    torch.manual_seed(3)
    m = build_detector("tiny")
    m.train()
    with torch.no_grad():
        m(torch.rand(2, 3, m.cfg.input_size, m.cfg.input_size))
    path = tmp_path_factory.mktemp("p") / "tiny.hwc"
    export_program(m.eval(), EngineConfig()).save(path)
    return path


def test_run_draws_detections(tmp_path, program_path, capsys):
    img = (np.random.default_rng(0).random((120, 90, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "in.png")
    assert main(["run", "--backend", "golden", "--program", str(program_path), "--image", str(tmp_path / "in.png"),
                 "--score-threshold", "0.05", "-o", str(tmp_path / "out.png")]) == 0
    out = capsys.readouterr().out
    # the clock is min(board clock, estimated Fmax) since b236177, so the figure is not pinned here
    assert "golden:" in out and re.search(r"engine: \d+ cycles at \d+\.\d\d MHz", out) and "model: ideal cycles" in out
    n = int(out.split("golden: ")[1].split(" detection")[0])
    assert n > 0, out
    from hwconv.driver.engine import EngineDriver
    from hwconv.driver.backends.golden import GoldenBackend
    from hwconv.quant.draw import draw_detections

    with EngineDriver(GoldenBackend(EngineConfig())) as d:  # what the picture must show
        d.load(program_path)
        det = d.detect(img, score_threshold=0.05)
    assert len(det["scores"]) == n
    want = draw_detections(img, det["boxes"], det["scores"], det["labels"])
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), want)


def test_validate_reports_ap(program_path, capsys):
    assert main(["validate", "--backend", "golden", "--program", str(program_path), "--data", "synthetic",
                 "--max-images", "3", "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert m["n_images"] == 3 and m["backend"] == "golden" and "AP50" in m and "AP" in m


def test_pynq_backend_says_what_is_missing_and_sim_is_not_a_backend(tmp_path, program_path, capsys):
    img = tmp_path / "x.npy"
    np.save(img, np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(SystemExit) as exc:  # the RTL runs programs through `hwconv simulate`
        main(["run", "--backend", "sim", "--program", str(program_path), "--image", str(img)])
    assert exc.value.code == 2 and "invalid choice: 'sim'" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--backend pynq needs --bitfile"):
        main(["run", "--backend", "pynq", "--program", str(program_path), "--image", str(img)])


def test_deploy_without_host_builds_the_folder(tmp_path, program_path, capsys):
    assert main(["deploy", "--board", "ultra96v2", "--program", str(program_path), "-o", str(tmp_path / "pkg"),
                 "--build-dir", str(tmp_path / "nobuild")]) == 0
    out = capsys.readouterr().out
    assert "NO BITSTREAM" in out and "--backend golden" in out and "not copied" in out
    assert (tmp_path / "pkg" / "run_engine.py").is_file()
