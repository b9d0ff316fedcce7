"""`hwconv info`'s figures beside CoDeNet's published ones (issue 10's "Must show")."""

import pytest

from hwconv.quant.info import format_stats, layer_stats, model_stats, parameter_bits, section_of
from hwconv.quant.models import build_detector
from hwconv.quant.registry import get_config


# Full-size forwards of the 512x512 configs take a while on a loaded 2-core machine.
@pytest.mark.parametrize("name", ["a", "b", pytest.param("c", marks=pytest.mark.slow),
                                  pytest.param("d", marks=pytest.mark.slow), pytest.param("e", marks=pytest.mark.slow)])
def test_thop_rule_macs_and_size_within_two_percent_of_codenet(name):
    st = model_stats(build_detector(name))
    pub = get_config(name).published
    assert abs(st["thop_gmac"] - pub["gmac"]) <= 0.02 * pub["gmac"], st["thop_gmac"]
    assert abs(st["mbytes_4bit"] - pub["mbytes"]) <= 0.02 * pub["mbytes"], st["mbytes_4bit"]
    assert abs(st["mbytes"] - pub["mbytes"]) <= 0.02 * pub["mbytes"], st["mbytes"]
    assert st["true_gmac"] < st["thop_gmac"]  # BN and bias ops outweigh the uncounted deformable taps


def test_config_a_true_macs_per_section():
    st = model_stats(build_detector("a"))
    assert round(st["true_gmac"], 4) == 0.2798 and round(st["thop_gmac"], 4) == 0.2855
    mmac = {k: round(v["macs"] / 1e6, 2) for k, v in st["sections"].items()}
    assert mmac == {"stem": 2.65, "stages": 146.9, "layer4": 30.41, "decoder": 36.18, "heads": 63.7}
    assert st["params"] == 1_588_031  # x 4 bits / 2^20 = 0.757 MB
    text = format_stats(st, layers=True)
    assert "decoder.0.deform" in text and "layer4.0" in text


def test_deformable_taps_count_as_true_macs_but_not_under_the_thop_rule():
    rows = layer_stats(build_detector("tiny"))
    deform = [r for r in rows if r.kind == "deform"]
    assert len(deform) == 3
    for r in deform:
        c, h, w = r.out_shape
        assert r.macs == c * h * w * 9 and r.thop_macs == 0
    offsets = [r for r in rows if r.kind == "offset"]
    assert [r.thop_macs - r.macs for r in offsets] == [r.out_shape[1] * r.out_shape[2] for r in offsets]  # bias


def test_sections_and_parameter_count():
    assert [section_of(n) for n in ("stem.0", "pool", "stages.1.0", "layer4.0", "decoder.2.bn", "reg.2.conv")] == \
        ["stem", "stem", "stages", "layer4", "decoder", "heads"]
    with pytest.raises(ValueError, match="belongs to no section"):
        section_of("extra.0")
    m = build_detector("tiny")
    count, bits, per_section = parameter_bits(m)
    assert count == sum(per_section.values()) and bits > 4 * count  # stem and offsets at 8 bits
