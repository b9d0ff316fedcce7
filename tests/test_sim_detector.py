"""An exported detector (tiny config, 64x64 input) on the RTL: the engine's arena equals the golden
model's bit for bit, and its output integers and decoded detections equal the PyTorch model's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hwconv.driver.decode import decode_outputs
from hwconv.spec.memory import read_tensor
from hwconv.quant.export import export_program
from hwconv.quant.models import build_detector
from hwconv.quant.verify import fake_quant_integers, quantize_image
from hwconv.sim.simulate import simulate_program
from hwconv.toolchain import verilator_env

pytestmark = [
    pytest.mark.engine,
    pytest.mark.skipif(not verilator_env(), reason="verilator not installed"),
]


def _calibrated_tiny(size: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = build_detector("tiny", input_size=size)
    m.train()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # train-mode forwards set BN statistics and activation scales
        for _ in range(3):
            m(torch.rand(4, 3, size, size, generator=g))
    return m.eval()


def test_exported_tiny_detector_on_the_rtl_equals_pytorch(tmp_path):
    model = _calibrated_tiny(64)
    program = export_program(model)
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(3))
    report = simulate_program(program, {"image": quantize_image(image, program)}, tmp_path, sim="verilator")
    assert report.passed, report.data["comparison"]

    arena = np.frombuffer((tmp_path / "job" / "arena.bin").read_bytes(), dtype=np.uint8)
    rtl = {t.name: read_tensor(arena, t.ref, t.signed).astype(np.int64) for t in program.outputs}
    with torch.no_grad():
        fq = model(image[None])
    want = fake_quant_integers({k: v[0] for k, v in fq.items()}, program)
    for name in want:
        assert np.array_equal(rtl[name], want[name]), name

    got_det = decode_outputs(program, rtl, score_threshold=0.0, k=20)
    want_det = decode_outputs(program, want, score_threshold=0.0, k=20)
    assert len(got_det["scores"]) == 20
    for key in ("boxes", "scores", "labels"):
        assert np.array_equal(got_det[key], want_det[key]), key
    assert report.data["cycles"] > 0 and report.data["utilisation"] > 0
