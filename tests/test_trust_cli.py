"""The commands in this part of issue 11 (simulate, build, inspect) on bad input: one line naming
the option or file, exit 2, nothing written."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hwconv.cli import main
from hwconv.compiler import ProgramBuilder
from hwconv.spec import EngineConfig


@pytest.fixture(scope="module")
def program_path(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    b = ProgramBuilder(EngineConfig())
    x = b.input("image", 8, 8, 3, scale=1 / 255)
    b.output("y", b.conv("c1", x, rng.integers(-8, 8, (4, 1, 1, 3)), shift=4, scale=0.1))
    p = tmp_path_factory.mktemp("p") / "p.hwc"
    b.build().save(p)
    return p


def _one_line(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    for n in needles:
        assert n in err, err
    return err


def test_simulate_out_is_a_file(tmp_path, program_path, capsys):
    (tmp_path / "f").write_text("x")
    assert main(["simulate", "--program", str(program_path), "-o", str(tmp_path / "f")]) == 2
    _one_line(capsys, "hwconv simulate: error: -o ", "is a file, a folder is needed here")
    assert (tmp_path / "f").read_text() == "x"


@pytest.mark.parametrize("p", ["2", "-0.1", "nan", "x"])
def test_simulate_backpressure_checked_when_parsing(p, capsys):
    with pytest.raises(SystemExit) as ei:
        main(["simulate", "--program", "x.hwc", "--backpressure", p])
    assert ei.value.code == 2
    assert "--backpressure" in capsys.readouterr().err


def test_simulate_image_goes_through_imageio(tmp_path, program_path):
    from hwconv.sim.cli import _inputs
    from hwconv.spec import Program

    prog = Program.load(program_path)
    fifo = tmp_path / "cam"
    os.mkfifo(fifo)
    args = argparse.Namespace(image=str(fifo), program=str(program_path), random_input=None)
    with pytest.raises(ValueError, match=r"--image .*cam: image must be a regular file, this is a FIFO"):
        _inputs(prog, args)
    grey16 = np.full((8, 8), 32768, np.uint16)   # mid grey, 16-bit: must not clip to white
    Image.fromarray(grey16).save(tmp_path / "g.png")
    args.image = str(tmp_path / "g.png")
    x = _inputs(prog, args)["image"]
    assert x.dtype.kind in "iu" and 0 < int(x.max()) < 255


def test_build_out_is_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert main(["build", "--board", "ultra96v2", "-o", str(tmp_path / "f"), "--scripts-only",
                 "--no-synth", "--no-lint"]) == 2
    _one_line(capsys, "hwconv build: error: -o ", "is a file, a folder is needed here")


def test_build_out_under_a_file(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert main(["build", "--board", "ultra96v2", "-o", str(tmp_path / "f" / "sub"), "--scripts-only",
                 "--no-synth", "--no-lint"]) == 2
    _one_line(capsys, "nothing can be created under it")


@pytest.mark.parametrize("jobs", ["0", "-3", "x"])
def test_build_jobs_checked_when_parsing(jobs, capsys):
    with pytest.raises(SystemExit) as ei:
        main(["build", "--board", "ultra96v2", "--jobs", jobs])
    assert ei.value.code == 2 and "--jobs" in capsys.readouterr().err


@pytest.mark.parametrize("pe", ["16x16x16", "ax4", "0x16"])
def test_build_bad_pe_is_one_line(tmp_path, pe, capsys):
    assert main(["build", "--board", "ultra96v2", "--pe", pe, "-o", str(tmp_path / "b"), "--scripts-only",
                 "--no-synth", "--no-lint"]) == 2
    _one_line(capsys, "hwconv build: error:")
    assert not (tmp_path / "b").exists()


def test_inspect_fifo_and_folder(tmp_path, capsys):
    fifo = tmp_path / "p.hwc"
    os.mkfifo(fifo)
    assert main(["inspect", str(fifo)]) == 2
    _one_line(capsys, "this is a FIFO")
    assert main(["inspect", str(tmp_path)]) == 2
    _one_line(capsys, "this is a folder")
