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


# ------------------------------------------------------------------ scales travel with the activations

def _calibrated_tiny(**overrides):
    torch.manual_seed(0)
    m = build_detector("tiny", input_size=SMALL, **overrides)
    m.train()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(2):
            m(torch.rand(2, 3, SMALL, SMALL, generator=g))
    return m.eval()


def test_layers_read_their_input_scale_from_their_input():
    """Every folding layer folds with the scale its input carries (a Brevitas QuantTensor): the
    producer's quantiser, found by following the data, not by wiring. No module hides another
    behind a list."""
    m = _calibrated_tiny()
    scales = m.input_scales()
    scale = lambda q: float(q.act_quant.scale())  # noqa: E731
    assert float(scales["stem"]) == scale(m.input_quant)
    stage2 = m.stages[0]
    assert float(scales["stages.0.0.branch1.0"]) == float(scales["stages.0.0.branch2.0"]) == scale(m.stem.act)
    assert float(scales["stages.0.1.branch2.0"]) == scale(stage2[0].branch2[2].act)  # the stage's quantiser
    assert float(scales["hm.0"]) == scale(m.decoder[-1].act)
    for name, mod in m.named_modules():  # this project's modules (Brevitas' proxies keep their own lists)
        if not type(mod).__module__.startswith("hwconv."):
            continue
        for attr, v in vars(mod).items():
            assert not (isinstance(v, (list, tuple)) and any(isinstance(e, torch.nn.Module) for e in v)), (name, attr)
    with torch.no_grad():
        x = m.quantize_input(torch.rand(1, 3, SMALL, SMALL))
        y = m.stem(x)
    assert float(x.scale) == scale(m.input_quant) and float(y.scale) == scale(m.stem.act)


def test_a_concat_of_two_scales_is_refused_where_it_happens():
    """The engine concatenates by writing both halves into one buffer with one scale: a unit whose
    halves end in different quantisers fails at its concat, in the model and in the exporter, naming it."""
    from hwconv.quant.export import export_program
    from hwconv.quant.quantizers import QTReLU
    from hwconv.spec import SpecError

    m = _calibrated_tiny()
    unit = m.stages[0][1]
    own = QTReLU()
    own.load_state_dict(unit.branch2[2].act.state_dict())
    (impl,) = [s for s in own.modules() if hasattr(s, "collect_stats_steps")]
    impl.counter = impl.collect_stats_steps + 1
    with torch.no_grad():
        impl.value.mul_(1.5)
    unit.branch2[2][2] = own
    with pytest.raises(SpecError, match=r"^stages\.0\.1: concat of activations at scales .* one quantiser"):
        with torch.no_grad():
            m(torch.rand(1, 3, SMALL, SMALL))
    with pytest.raises(SpecError, match=r"^stage2\.1: concat of activations at scales"):
        export_program(m)


def test_modes_are_per_model_and_float_mode_runs_unfolded():
    """unfolded(model) / float_requant(model) change that model only, and only inside the block;
    with activation quantisation off the inputs carry no scale and every layer runs conv -> BN,
    with no context manager."""
    from hwconv.quant.checkpoint import set_quant_mode
    from hwconv.quant.models import float_requant, unfolded

    a, b = _calibrated_tiny(), _calibrated_tiny()
    calls = {k: 0 for k in ("a.conv", "b.conv", "a.act", "b.act")}

    def count(key):
        return lambda *_: calls.__setitem__(key, calls[key] + 1)

    for key, m in (("a", a), ("b", b)):
        m.stem[0].register_forward_hook(count(f"{key}.conv"))  # runs unfolded only
        m.stem[2].register_forward_hook(count(f"{key}.act"))   # runs unless the exact path requantises
    x = torch.rand(1, 3, SMALL, SMALL, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        exact = a(x)
        assert calls == {"a.conv": 0, "b.conv": 0, "a.act": 0, "b.act": 0}
        with unfolded(a):
            a(x), b(x)
        assert calls == {"a.conv": 1, "b.conv": 0, "a.act": 1, "b.act": 0}
        with float_requant(a):
            a(x), b(x)
        assert calls == {"a.conv": 1, "b.conv": 0, "a.act": 2, "b.act": 0}
        assert all(torch.equal(v, exact[k]) for k, v in a(x).items())
        assert calls == {"a.conv": 1, "b.conv": 0, "a.act": 2, "b.act": 0}  # restored: exact again
    set_quant_mode(a, "float")
    with torch.no_grad():
        plain = a(x)
        assert calls["a.conv"] == 2
        with unfolded(a):
            assert all(torch.equal(v, plain[k]) for k, v in a(x).items())
