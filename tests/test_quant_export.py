"""Detectors, model statistics and export of a Brevitas detector to an engine program."""

import pytest
import torch

from hwconv.quant.export import export_program
from hwconv.quant.info import model_stats
from hwconv.quant.models import CONFIGS, build_detector
from hwconv.quant.verify import compare_outputs
from hwconv.spec import EngineConfig, Opcode, Program, SpecError


def _calibrated(name="tiny", seed=0, **overrides):
    torch.manual_seed(seed)
    m = build_detector(name, **overrides)
    m.train()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # train-mode forwards set BN statistics and activation scales
        for _ in range(3):
            m(torch.rand(4, 3, m.cfg.input_size, m.cfg.input_size, generator=g))
    return m.eval()


def test_every_config_builds_and_counts():
    st = model_stats(build_detector("tiny"))
    assert st["true_gmac"] > st["gmac"] > 0 and st["mbytes"] > 0 and st["weight_mbytes"] > 0
    # CoDeNet's released network: layer4 to 1024, 1024 -> 256 -> 128 -> 64 decoder, 1x1/dw3x3/1x1
    # heads; the plain CenterNet heads (3x3 conv, 64 channels) add 0.45 GMAC at 64x64.
    assert abs(model_stats(build_detector("a"))["true_gmac"] - 0.280) < 0.001
    assert abs(model_stats(build_detector("a", head="centernet"))["true_gmac"] - 0.6754) < 0.001
    assert set(CONFIGS) >= {"a", "b", "c", "d", "e", "tiny"}


def test_unknown_config_is_named():
    with pytest.raises(ValueError, match="unknown detector config 'z'"):
        build_detector("z")


def test_export_tiny_is_a_valid_program_that_round_trips():
    m = _calibrated()
    prog = export_program(m)
    again = Program.from_bytes(prog.to_bytes(), expect=EngineConfig())
    ops = [d.opcode for d in again.layers]
    assert ops.count(Opcode.DEFORM_DW) == 3 and Opcode.COPY in ops
    assert [t.name for t in again.outputs] == ["hm", "wh", "reg"]
    stem = again.layers[0]
    assert stem.weight_bits == 8 and stem.stride == 4
    # 4-bit everywhere except the stem and the (tiny) dilation predictors, which stay 8-bit.
    for d, name in zip(again.layers[1:], again.layer_names[1:]):
        if d.opcode in (Opcode.CONV, Opcode.DWCONV, Opcode.DEFORM_DW):
            assert d.weight_bits == (8 if name.endswith(".offset") else 4), name


@pytest.mark.parametrize("seed", [0, 2])
def test_integer_program_equals_fake_quant_model(seed):
    """Golden-model integers vs Brevitas fake-quant integers on the same images.

    In eval mode the model runs folded (BN in the weights before quantisation, integer bias at
    s_in*s_w), which is exactly what export writes. What may still differ by one LSB: Brevitas
    rounds activations half-to-even where the contract rounds half-up, float32 sums in the
    fake-quant conv, the 24-bit requant multiplier, and the offset predictor's float bias.
    """
    m = _calibrated(seed=seed)
    prog = export_program(m)
    images = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(5))
    r = compare_outputs(m, prog, images)
    assert r["identical"] >= 0.995, r
    for name, s in r["outputs"].items():
        assert s["max_diff"] <= 1, (name, s)


def test_export_refuses_what_the_engine_cannot_run():
    m = _calibrated(sampling="bilinear")
    with pytest.raises(SpecError, match=r"decoder0: deformable variant 'square_depthwise' with 'bilinear'"):
        export_program(m)
    m = _calibrated(max_dilation=9)
    with pytest.raises(SpecError, match="trained with max dilation 9, the engine supports 7"):
        export_program(m)
    assert export_program(m, EngineConfig(max_dilation=9)).config.max_dilation == 9


def test_export_maps_layer4_and_both_head_styles():
    prog = export_program(_calibrated())
    names = prog.layer_names
    assert "layer4" in names and names.index("layer4") < names.index("decoder0.offset")
    assert [n for n in names if n.startswith("head.hm")] == ["head.hm.pw", "head.hm.dw", "head.hm.out"]
    hm_dw = prog.layers[names.index("head.hm.dw")]
    assert hm_dw.opcode == Opcode.DWCONV and hm_dw.out.channels == 32
    plain = export_program(_calibrated(head="centernet"))
    assert [n for n in plain.layer_names if n.startswith("head.hm")] == ["head.hm.conv", "head.hm.out"]


def test_plain_heads_program_equals_fake_quant_model():
    m = _calibrated(head="centernet", seed=1)
    r = compare_outputs(m, export_program(m), torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(6)))
    assert r["identical"] >= 0.995, r
