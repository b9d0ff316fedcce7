"""Checkpoints as untrusted input (issue 11 items 3 and 5): the stored config is bounded before a
model is built, every part the loader reads is checked, and fuzzed files fail only as
CheckpointError. Bounded time: a few seconds per test."""

from __future__ import annotations

import io
import os
import pickle
import tracemalloc
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hwconv.quant import checkpoint as ck
from hwconv.quant.checkpoint import CheckpointError, model_from_checkpoint, read_checkpoint, save_checkpoint
from hwconv.quant.models import build_detector

# Building even the tiny model takes ~0.3 s on the shared CPUs: examples are few, each a full load.
FUZZ = settings(max_examples=8, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[Path, dict]:
    torch.manual_seed(0)
    m = build_detector("tiny")
    m.train()
    with torch.no_grad():
        m(torch.rand(1, 3, 128, 128))
    path = save_checkpoint(tmp_path_factory.mktemp("ck") / "tiny.pt", m.eval(), epoch=1)
    return path, torch.load(path, weights_only=True)


def _write(tmp_path: Path, ckpt: dict, name: str = "x.pt") -> Path:
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    p = tmp_path / name
    p.write_bytes(buf.getvalue())
    return p


def test_good_checkpoint_loads(saved):
    model, ckpt = model_from_checkpoint(saved[0])
    assert ckpt["config"]["name"] == "tiny"


def test_width_100000_refused_before_the_model_is_built(tmp_path, saved, monkeypatch):
    ckpt = dict(saved[1])
    ckpt["config"] = {**ckpt["config"], "widths": [16, 32, 64, 100000]}
    p = _write(tmp_path, ckpt)
    monkeypatch.setattr(ck, "build_detector", lambda *a, **k: pytest.fail("model built before the check"))
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match=r"x.pt: config\.widths = .*must be integer\(s\) in \[1, 4096\]"):
            model_from_checkpoint(p)
        assert tracemalloc.get_traced_memory()[1] < 50 * 1024 * 1024
    finally:
        tracemalloc.stop()
    ckpt["config"] = {**saved[1]["config"], "head_conv": 4096, "decoder": [4096, 4096, 4096]}
    with pytest.raises(CheckpointError, match=r"config describes a model of about [\d,]+ parameters, more than"):
        model_from_checkpoint(_write(tmp_path, ckpt))


@pytest.mark.parametrize("drop,match", [("config", "has no 'config'"), ("quant_state", "has no 'quant_state'"),
                                        ("model", "has no 'model'"), ("quant_mode", "has no 'quant_mode'")])
def test_missing_parts_named(tmp_path, saved, drop, match):
    ckpt = {k: v for k, v in saved[1].items() if k != drop}
    with pytest.raises(CheckpointError, match=match):
        model_from_checkpoint(_write(tmp_path, ckpt))


def test_wrong_shapes_and_nan_weights(tmp_path, saved):
    ckpt = dict(saved[1])
    model = dict(ckpt["model"])
    key = next(k for k, v in model.items() if v.ndim == 4)
    model[key] = torch.zeros(3, 3, 3, 3)
    ckpt["model"] = model
    with pytest.raises(CheckpointError, match=rf"{key} has shape \(3, 3, 3, 3\), the model's is"):
        model_from_checkpoint(_write(tmp_path, ckpt))
    model = dict(saved[1]["model"])
    model[key] = model[key].clone()
    model[key].view(-1)[0] = float("nan")
    ckpt["model"] = model
    with pytest.raises(CheckpointError, match=rf"{key} holds NaN or infinite values"):
        model_from_checkpoint(_write(tmp_path, ckpt))


@pytest.mark.parametrize("field,value", [("variant", "nope"), ("sampling", "x"), ("weight_bits", 3),
                                         ("stem_weight_bits", 2), ("max_dilation", 0), ("head", "x"),
                                         ("num_classes", 3), ("input_size", 10**9), ("widths", "abc")])
def test_config_fields_the_builder_refuses(tmp_path, saved, field, value):
    ckpt = {**saved[1], "config": {**saved[1]["config"], field: value}}
    with pytest.raises(CheckpointError, match="x.pt"):
        model_from_checkpoint(_write(tmp_path, ckpt))


def test_bad_quant_state(tmp_path, saved):
    ckpt = dict(saved[1])
    ckpt["quant_state"] = {"nope.scaling": {"counter": 1, "buffer": torch.zeros(1), "value": torch.zeros(1)}}
    with pytest.raises(CheckpointError, match="quant_state names 'nope.scaling', not a quantiser scale"):
        model_from_checkpoint(_write(tmp_path, ckpt))
    ckpt["quant_state"] = {"x": {"counter": "1"}}
    with pytest.raises(CheckpointError, match=r"quant_state\['x'\] must hold counter"):
        model_from_checkpoint(_write(tmp_path, ckpt))


def test_fifo_and_pickles_refused(tmp_path):
    fifo = tmp_path / "f.pt"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match="f.pt: checkpoint must be a regular file, this is a FIFO"):
        read_checkpoint(fifo)
    (tmp_path / "evil.pt").write_bytes(pickle.dumps(os.system))
    with pytest.raises(CheckpointError, match="evil.pt is not a hwconv checkpoint"):
        read_checkpoint(tmp_path / "evil.pt")


# ------------------------------------------------------------------------------ fuzz (must show)

_json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                         st.text(max_size=8))
_json_value = st.recursive(_json_scalar, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c,
                                                                                               max_size=4),
                           max_leaves=12)


@FUZZ
@given(field=st.sampled_from(["name", "input_size", "widths", "repeats", "decoder", "head_conv", "num_classes",
                              "variant", "sampling", "max_dilation", "weight_bits", "layer4", "head", "stem",
                              "published", "bogus"]),
       value=_json_value)
def test_fuzz_config_fields(tmp_path, saved, field, value):
    ckpt = dict(saved[1])
    ckpt["config"] = {**ckpt["config"], field: value}
    try:
        model_from_checkpoint(_write(tmp_path, ckpt))
    except CheckpointError:
        pass


@FUZZ
@given(part=st.sampled_from(["config", "model", "quant_state", "quant_mode", "bn_folded", "config_name",
                             "version", "format"]),
       value=_json_value)
def test_fuzz_parts(tmp_path, saved, part, value):
    ckpt = {**saved[1], part: value}
    try:
        model_from_checkpoint(_write(tmp_path, ckpt))
    except CheckpointError:
        pass


@settings(FUZZ, max_examples=40)
@given(data=st.data())
def test_fuzz_file_bytes(tmp_path, saved, data):
    raw = bytearray(saved[0].read_bytes())
    cut = data.draw(st.integers(0, len(raw)))
    flips = data.draw(st.lists(st.integers(0, len(raw) - 1), max_size=4))
    for i in flips:
        raw[i] ^= 0xFF
    p = tmp_path / "fz.pt"
    p.write_bytes(bytes(raw[:cut]) if data.draw(st.booleans()) else bytes(raw))
    try:
        read_checkpoint(p)   # torch.load (weights_only) + every structural check; the model build is
    except CheckpointError:  # fuzzed by the tests above
        pass
