"""ProgramBuilder and synthetic programs: views, arena planning, end-to-end golden runs."""

import numpy as np
import pytest

from hwconv.compiler import ProgramBuilder
from hwconv.compiler.synthetic import codenet_program, detector_config
from hwconv.golden import run_program
from hwconv.golden.ops import conv2d, deform_depthwise, requantize
from hwconv.spec import EngineConfig, Opcode, Program, SpecError

CFG = EngineConfig()


def test_concat_by_views_equals_numpy_concatenate():
    rng = np.random.default_rng(0)
    b = ProgramBuilder(CFG)
    x = b.input("x", 6, 7, 5)
    w1, w2 = rng.integers(-8, 8, (3, 1, 1, 5)), rng.integers(-8, 8, (4, 3, 3, 5))
    cat = b.buffer("cat", 6, 7, 7, signed=False)
    b.conv("a", x, w1, shift=3, out=b.view(cat, 0, 3))
    b.conv("b", x, w2, shift=5, out=b.view(cat, 3, 4))
    b.output("cat", cat)
    b.output("tail", cat)  # the same buffer twice is fine
    prog = b.build()
    img = rng.integers(0, 256, (6, 7, 5))
    got = run_program(prog, {"x": img})["cat"]
    half = lambda s: np.where(s > 0, 1 << (s - 1), 0)  # noqa: E731
    ref_a = np.clip((conv2d(img, w1, 1, 0) + half(3)) >> 3, 0, 255)
    ref_b = np.clip((conv2d(img, w2, 1, 1) + half(5)) >> 5, 0, 255)
    assert np.array_equal(got, np.concatenate([ref_a, ref_b], axis=-1))


def test_grouped_view_interleaves_quarter_runs():
    b = ProgramBuilder(CFG)
    x = b.input("x", 2, 2, 4)
    out = b.buffer("out", 2, 2, 8, signed=False)
    b.copy("left", x, out=b.view(out, 0, 4, group_channels=2, group_stride=4))
    b.copy("right", x, out=b.view(out, 2, 4, group_channels=2, group_stride=4))
    b.output("out", out)
    img = np.arange(16).reshape(2, 2, 4)
    got = run_program(b.build(), {"x": img})["out"]
    # [a0 b0 a1 b1] with a = b = x: channels 0,1 | 0,1 | 2,3 | 2,3
    assert np.array_equal(got, img[:, :, [0, 1, 0, 1, 2, 3, 2, 3]])


def test_requant_clamp_and_upsample_fused():
    b = ProgramBuilder(CFG)
    x = b.input("x", 3, 3, 1)
    y = b.conv("c", x, np.full((1, 1, 1, 1), 3), mult=1, shift=1, clamp=(0, 7), upsample=True)
    b.output("y", y)
    img = np.array([0, 1, 2, 3, 4, 5, 6, 200, 255]).reshape(3, 3, 1)
    got = run_program(b.build(), {"x": img})["y"]
    ref = np.clip(requantize(img.astype(np.int64) * 3, 0, 1, 1, 0, 7), 0, 7)
    assert np.array_equal(got, np.repeat(np.repeat(ref, 2, 0), 2, 1))
    assert got.shape == (6, 6, 1)


def test_arena_reuse_never_clobbers_live_tensors():
    """Same outputs with a planned (shared) arena and with every buffer in its own bytes."""
    img = np.random.default_rng(4).integers(0, 256, (128, 128, 3))
    shared, _ = codenet_program(CFG, "tiny", seed=2)
    private, _ = codenet_program(CFG, "tiny", seed=2, reuse_memory=False)
    assert shared.arena_bytes < private.arena_bytes
    a, b = run_program(shared, {"image": img}), run_program(private, {"image": img})
    for name in a:
        assert np.array_equal(a[name], b[name]), name


def test_synthetic_codenet_a_is_lively_and_round_trips():
    prog, macs = codenet_program(CFG, "a")
    assert 0.279e9 < macs < 0.281e9  # CoDeNet's config a: 0.280 true GMAC
    # Only what exceeds the engine's buffers is split: layer4 (weights), decoder0's deformable
    # conv (15 rows of 8 x 1024 channels) and pointwise conv (1024 -> 256 weights).
    split = sorted({n.split("[")[0] for n in prog.layer_names if "[" in n})
    assert split == ["decoder0.deform", "decoder0.deform.in", "decoder0.pw", "layer4"], split
    assert prog.extra["model"] == "a" and prog.extra["source"] == "synthetic"
    ops = {d.opcode for d in prog.layers}
    assert {Opcode.CONV, Opcode.DWCONV, Opcode.DEFORM_DW, Opcode.COPY} <= ops
    assert any(d.upsample for d in prog.layers)
    again = Program.from_bytes(prog.to_bytes(), expect=CFG)
    size = detector_config("a").input_size
    img = np.random.default_rng(1).integers(0, 256, (size, size, 3))
    outs = run_program(again, {"image": img})
    assert set(outs) == {"hm", "wh", "reg"}
    for y in outs.values():  # calibrated requant keeps activations alive to the heads
        assert y.shape[:2] == (64, 64) and y.std() > 5


def test_dilation_map_from_offset_predictor_stays_in_range():
    prog, _ = codenet_program(CFG, "tiny", seed=1)
    seen = []
    names = prog.layer_names

    def hook(i, d, y):
        if names[i].endswith(".offset"):
            seen.append(y)

    run_program(prog, {"image": np.random.default_rng(0).integers(0, 256, (128, 128, 3))}, on_layer=hook)
    assert len(seen) == 3
    for y in seen:
        assert y.min() >= 0 and y.max() <= CFG.max_dilation
    assert len(np.unique(np.concatenate([y.ravel() for y in seen]))) > 2  # the map varies per pixel


@pytest.mark.parametrize("bad, msg", [
    (lambda b, x: b.conv("c", x, np.zeros((2, 3, 3, 4), int)), "Cin=3"),
    (lambda b, x: b.dwconv("d", x, np.zeros((3, 1, 1), int)), "(3, 3, 3)"),
    (lambda b, x: b.view(x, 2, 2), "outside its 3 channels"),
    (lambda b, x: b.deform("df", x, x, np.zeros((3, 3, 3), int)), "dilation map"),
    (lambda b, x: b.conv("c", x, np.zeros((1, 1, 1, 3), int), bias=[1, 2]), "bias has 2 entries"),
])
def test_builder_rejects_bad_layers_by_name(bad, msg):
    b = ProgramBuilder(CFG)
    x = b.input("x", 4, 4, 3)
    with pytest.raises(SpecError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        bad(b, x)


def test_duplicate_layer_name_and_weight_range():
    b = ProgramBuilder(CFG)
    x = b.input("x", 4, 4, 3)
    b.conv("c", x, np.zeros((1, 1, 1, 3), int))
    with pytest.raises(SpecError, match="used twice"):
        b.conv("c", x, np.zeros((1, 1, 1, 3), int))
    b.conv("w", x, np.full((1, 1, 1, 3), 8), weight_bits=4)
    with pytest.raises(SpecError, match=r"layer 1 \(w\) weights: weight #0 = 8 outside the 4-bit range"):
        b.build()


def test_interleaved_store_is_shufflenet_channel_shuffle():
    """copy + conv into interleaved views == torch cat + channel_shuffle(groups=2)."""
    import torch

    rng = np.random.default_rng(7)
    c, h = 12, 6
    w = rng.integers(-7, 8, (h, 1, 1, h))
    b = ProgramBuilder(CFG)
    x = b.input("x", 5, 5, c)
    out = b.buffer("out", 5, 5, c, signed=False)
    b.copy("keep", b.view(x, 0, h), out=b.view(out, 0, h, group_channels=1, group_stride=2))
    b.conv("branch", b.view(x, h, h), w, shift=4, out=b.view(out, 1, h, group_channels=1, group_stride=2))
    b.output("out", out)
    img = rng.integers(0, 256, (5, 5, c))
    got = run_program(b.build(), {"x": img})["out"]

    t = torch.from_numpy(img).permute(2, 0, 1)[None].double()
    keep, work = t.chunk(2, dim=1)
    branch = torch.nn.functional.conv2d(work, torch.from_numpy(w).permute(0, 3, 1, 2).double())
    branch = torch.clamp(torch.floor((branch + 8) / 16), 0, 255)
    cat = torch.cat([keep, branch], dim=1)
    shuffled = cat.view(1, 2, h, 5, 5).transpose(1, 2).reshape(1, c, 5, 5)
    assert np.array_equal(got, shuffled[0].permute(1, 2, 0).numpy().astype(np.int64))


def _requantized(acc, shift):
    return np.clip((acc + (1 << (shift - 1))) >> shift, 0, 255)


def test_conv_too_big_for_the_weight_buffer_is_split_by_output_channels():
    """128 outputs x 64 inputs need 32 weight words per bank; a 16-word buffer takes two layers,
    each writing its channels into a view of one tensor: the same integers as one conv."""
    small = EngineConfig(weight_buffer_bytes=16 * 16 * 16)
    rng = np.random.default_rng(3)
    w = rng.integers(-7, 8, (128, 1, 1, 64))
    b = ProgramBuilder(small)
    x = b.input("x", 3, 4, 64)
    b.output("y", b.conv("big", x, w, shift=6))
    prog = b.build()
    assert prog.layer_names == ["big[0:64]", "big[64:128]"]
    img = rng.integers(0, 256, (3, 4, 64))
    assert np.array_equal(run_program(prog, {"x": img})["y"], _requantized(conv2d(img, w, 1, 0), 6))


def test_conv_split_into_an_interleaved_view_keeps_the_shuffle():
    """A split conv writing one half of a ShuffleNet concat (channels 0, 2, 4, ...) puts every
    output channel where the unsplit conv would."""
    small = EngineConfig(weight_buffer_bytes=16 * 16 * 16)
    rng = np.random.default_rng(8)
    w = rng.integers(-7, 8, (128, 1, 1, 64))
    b = ProgramBuilder(small)
    x = b.input("x", 2, 3, 64)
    cat = b.buffer("cat", 2, 3, 256, signed=False)
    b.conv("big", x, w, shift=6, out=b.view(cat, 0, 128, group_channels=1, group_stride=2))
    b.conv("other", x, w, shift=7, out=b.view(cat, 1, 128, group_channels=1, group_stride=2))
    b.output("cat", cat)
    prog = b.build()
    assert prog.layer_names == ["big[0:64]", "big[64:128]", "other[0:64]", "other[64:128]"]
    img = rng.integers(0, 256, (2, 3, 64))
    got = run_program(prog, {"x": img})["cat"]
    acc = conv2d(img, w, 1, 0)
    assert np.array_equal(got[..., 0::2], _requantized(acc, 6)) and np.array_equal(got[..., 1::2], _requantized(acc, 7))


def test_deform_too_wide_for_the_line_buffer_reads_compact_copies():
    """15 rows of a 64-channel 4-wide tensor do not fit a 2 KiB line buffer: the layer runs on
    channel groups, each reading a compact COPY of its channels; the result is the unsplit one."""
    small = EngineConfig(line_buffer_bytes=2048)
    rng = np.random.default_rng(5)
    w = rng.integers(-7, 8, (64, 3, 3))
    img = rng.integers(0, 256, (4, 4, 64))
    dil = rng.integers(0, 8, (4, 4, 1))
    b = ProgramBuilder(small)
    x, d = b.input("x", 4, 4, 64), b.input("d", 4, 4, 1)
    b.output("y", b.deform("df", x, d, w, shift=5, upsample=True))
    prog = b.build()
    names = prog.layer_names
    assert len(names) > 2 and all(n.startswith(("df[", "df.in[")) for n in names)
    assert [prog.layers[i].opcode for i, n in enumerate(names) if n.startswith("df.in[")] == \
        [Opcode.COPY] * (len(names) // 2)
    got = run_program(prog, {"x": img, "d": dil})["y"]
    ref = _requantized(deform_depthwise(img, w, dil[..., 0], 7), 5).repeat(2, 0).repeat(2, 1)
    assert np.array_equal(got, ref)


def test_benchmark_program_for_an_engine_with_fewer_dilations():
    """An engine with max_dilation 3 gets the detector with dilations bounded to 0..3 (the
    exporter refuses a model trained for more than the engine runs)."""
    from hwconv.compiler.synthetic import BackboneShape

    cfg = EngineConfig(pe_in=8, pe_out=4, weight_bits=8, max_dilation=3)
    prog, _ = codenet_program(cfg, BackboneShape(32, 4, (8, 16, 32, 64), (1, 1, 1), (32, 16, 16), 16, 2))
    offsets = [d for d, n in zip(prog.layers, prog.layer_names) if n.endswith(".offset")]
    assert len(offsets) == 3 and all((d.clamp_lo, d.clamp_hi) == (0, 3) for d in offsets)
