"""One network definition: every registered config, lowered by the exporter, is the PyTorch model
layer by layer (kinds, shapes, MACs); the registry; the head styles."""

import re

import pytest
import torch

from hwconv.compiler.cost import layer_macs
from hwconv.compiler.synthetic import BackboneShape, codenet_program, detector_config
from hwconv.quant.info import layer_stats, section_of
from hwconv.quant.models import CoDeNetHead, Head, build_detector
from hwconv.quant.registry import CONFIGS, DEFAULT_MODEL, MODEL_NAMES, DetectorConfig, get_config
from hwconv.spec import EngineConfig, Opcode

CFG = EngineConfig()
# Configs d and e widen layer4 to 2153 channels: the default engine's max_channels is 2048.
WIDE = EngineConfig(max_channels=4096)
SMALL = 64  # every config at 64x64: the heads at 16x16, layer4 at 2x2
_KIND = {Opcode.CONV: "conv", Opcode.DWCONV: "dwconv", Opcode.DEFORM_DW: "deform", Opcode.MAXPOOL: "maxpool"}
_SECTION = (("stem", "stem"), ("stage", "stages"), ("layer4", "layer4"), ("decoder", "decoder"), ("head.", "heads"))


def _section(program_name: str) -> str:
    return next(sec for prefix, sec in _SECTION if program_name.startswith(prefix))


def _program_layers(prog):
    """The program's layers with split pieces merged (name[lo:hi] -> name) and data movement
    (COPY: shuffle pass-through, compact copies) dropped: one entry per PyTorch layer."""
    merged = {}
    for d, name in zip(prog.layers, prog.layer_names):
        if d.opcode == Opcode.COPY:
            continue
        base = re.sub(r"\[\d+:\d+\]$", "", name)
        ho, wo = d.compute_hw
        if base not in merged:
            merged[base] = dict(kind=_KIND[d.opcode], cin=0, cout=0, in_hw=(d.in0.height, d.in0.width),
                                out_hw=(ho, wo), k=d.kernel, s=d.stride, macs=0, pieces=0)
        e = merged[base]
        e["cout"] += d.out.channels
        e["cin"] = e["cin"] + d.in0.channels if d.opcode == Opcode.DEFORM_DW else d.in0.channels
        e["macs"] += layer_macs(d)
        e["pieces"] += 1
    return merged


# The 2x-wide configs take about a minute each to build and lower on a loaded 2-core machine.
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if CONFIGS[n].layer4 > 2048 else n
                                  for n in MODEL_NAMES])
def test_lowered_program_is_the_pytorch_model_layer_by_layer(name):
    det = get_config(name).with_(input_size=SMALL)
    prog, macs = codenet_program(WIDE if det.layer4 > CFG.max_channels else CFG, det, calibrate=False)
    torch.manual_seed(0)
    rows = layer_stats(build_detector(det))
    lowered = _program_layers(prog)
    assert len(lowered) == len(rows), (list(lowered), [r.name for r in rows])
    for (pname, p), r in zip(lowered.items(), rows):
        where = f"{name}: program {pname} vs model {r.name}"
        kind = "conv" if r.kind == "offset" else r.kind
        assert p["kind"] == kind, where
        assert _section(pname) == r.section == section_of(r.name), where
        assert (p["cin"], *p["in_hw"]) == r.in_shape, where
        assert (p["cout"], *p["out_hw"]) == r.out_shape, where
        assert (p["k"], p["s"]) == (r.kernel, r.stride), where
        assert p["macs"] == r.macs, where
    assert macs == sum(r.macs for r in rows) == sum(p["macs"] for p in lowered.values())
    assert [t.name for t in prog.outputs] == ["hm", "wh", "reg"]


def test_config_a_is_codenets_released_network():
    a = get_config("a")
    assert (a.widths, a.repeats, a.layer4, a.decoder, a.head_conv, a.head) == \
        ((24, 116, 232, 464), (3, 7, 3), 1024, (256, 128, 64), 64, "codenet")
    assert (a.stem, a.stem_weight_bits, a.weight_bits) == ("s4", 8, 4)
    assert get_config("b").stem == get_config("e").stem == "s2pool"
    assert get_config("d").layer4 == get_config("e").layer4 == 2153
    assert DEFAULT_MODEL == "a" and MODEL_NAMES == tuple(CONFIGS)
    m = build_detector("a")
    assert isinstance(m.hm, CoDeNetHead) and m.layer4[0].out_channels == 1024
    assert [blk.deform.in_channels for blk in m.decoder] == [1024, 256, 128]
    assert float(m.hm[2].conv.bias[0]) == pytest.approx(-2.19)  # CenterNet's prior on the heatmap


def test_plain_centernet_heads_are_a_named_option():
    m = build_detector("tiny", head="centernet")
    assert isinstance(m.hm, Head) and m.hm[0].conv.kernel_size == (3, 3)
    with pytest.raises(ValueError, match="head 'plain'; expected one of codenet, centernet"):
        build_detector("tiny", head="plain")
    with pytest.raises(ValueError, match="unknown option.*heads"):
        build_detector("tiny", heads="codenet")


def test_build_detector_takes_a_data_sets_class_count_for_every_config():
    for name in MODEL_NAMES:
        m = build_detector(name, num_classes=3, input_size=64)
        assert m.hm[2].conv.out_channels == 3 and m.cfg.input_size == 64


def test_configs_saved_before_layer4_rebuild_as_they_were():
    """A checkpoint's stored config from before layer4/head existed lacks both fields: the
    dataclass defaults are that network (no layer4, plain heads)."""
    old = DetectorConfig("tiny", 128, (16, 32, 64, 128), "s4", (1, 1, 1), (64, 32, 32), 32, 10)
    m = build_detector(old)
    assert m.layer4 is None and isinstance(m.hm, Head)


def test_backbone_shape_is_a_codenet_structured_config():
    shape = BackboneShape(32, 4, (8, 16, 32, 64), (1, 1, 1), (32, 16, 16), 16, 2)
    det = detector_config(shape)
    assert (det.layer4, det.head, det.input_size, det.num_classes) == (128, "codenet", 32, 2)
    assert detector_config("tiny") is get_config("tiny")
    with pytest.raises(ValueError, match="unknown detector config 'z'"):
        detector_config("z")


def test_a_layer_the_engine_cannot_run_is_named_with_its_limit():
    from hwconv.quant.export import export_program
    from hwconv.spec import SpecError

    with pytest.raises(SpecError, match=r"\(decoder0.offset\): in0.channels=2153 exceeds the engine's max_channels=2048"):
        export_program(build_detector("d", input_size=SMALL), CFG)
