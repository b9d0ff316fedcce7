"""hwconv.quant training: CenterNet loss, checkpoints (weights_only, resume), COCO evaluation, DDP."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from hwconv.quant import train as train_mod
from hwconv.quant.checkpoint import (
    CheckpointError, get_quant_mode, load_checkpoint, model_from_checkpoint, read_checkpoint, save_checkpoint,
)
from hwconv.quant.data import load_dataset
from hwconv.quant.data.centernet import encode_batch
from hwconv.quant.evaluate import draw_detections, evaluate, evaluate_outputs
from hwconv.quant.losses import centernet_loss
from hwconv.quant.models import build_detector
from hwconv.quant.train import InMemoryDataset, train

IMAGES = 64


@pytest.fixture(scope="module")
def train_set() -> InMemoryDataset:
    return InMemoryDataset(load_dataset("synthetic", "train", num_images=IMAGES))


@pytest.fixture(scope="module")
def val_set() -> InMemoryDataset:
    return InMemoryDataset(load_dataset("synthetic", "val", num_images=16))


def _tiny(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_detector("tiny")


# ---------------------------------------------------------------- progress log lines

def test_log_lines_say_elapsed_and_time_left_at_the_pace_so_far(capsys):
    now = [100.0]
    log = train_mod._LogLines(every_s=30.0, clock=lambda: now[0])
    task = log.add_task("float", total=40)
    log.update(task, description="float epoch 1/4")
    for _ in range(10):                     # 10 steps of 3 s: the first line is due after 30 s
        now[0] += 3.0
        log.update(task, advance=1, info="loss 1.000")
    now[0] += 3.0
    log.update(task, advance=0, description="float epoch 2/4")
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["float epoch 1/4: started",
                     "float epoch 1/4: step 10/40 loss 1.000 (0m30s elapsed, about 1m30s left)",
                     "float epoch 2/4: started (0m33s elapsed, about 1m39s left)"]
    assert train_mod._duration(3725) == "1h02m05s" and train_mod._duration(59.6) == "1m00s"


# ---------------------------------------------------------------- loss

def _perfect_outputs(enc: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Head outputs that match the targets: saturated logits at the peaks, exact wh/reg there."""
    b, _, h, w = enc["heatmap"].shape
    hm = torch.where(enc["heatmap"].eq(1), 30.0, -30.0)
    wh, reg = torch.zeros(b, 2, h * w), torch.zeros(b, 2, h * w)
    for i in range(b):
        m = enc["mask"][i].bool()
        wh[i][:, enc["ind"][i][m]] = enc["wh"][i][m].T
        reg[i][:, enc["ind"][i][m]] = enc["reg"][i][m].T
    return {"hm": hm, "wh": wh.view(b, 2, h, w), "reg": reg.view(b, 2, h, w)}


def test_loss_is_zero_for_perfect_predictions_and_large_for_wrong_ones(train_set):
    targets = [train_set[i][1] for i in range(4)]
    enc = encode_batch(targets, 10, (128, 128))
    perfect = _perfect_outputs(enc)
    good = centernet_loss(perfect, enc)
    assert all(float(v) < 1e-3 for v in good.values()), good

    shifted = dict(perfect, hm=perfect["hm"].roll(5, dims=-1))  # peaks 5 cells off
    assert float(centernet_loss(shifted, enc)["hm"]) > 5.0
    wrong_size = dict(perfect, wh=perfect["wh"] * 2)
    assert float(centernet_loss(wrong_size, enc)["wh"]) > 1.0
    uncertain = dict(perfect, hm=torch.zeros_like(perfect["hm"]))  # p = 0.5 everywhere
    assert float(centernet_loss(uncertain, enc)["loss"]) > 10.0


def test_loss_without_objects_is_finite():
    enc = encode_batch([{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}], 3, (32, 32))
    out = {"hm": torch.zeros(1, 3, 8, 8, requires_grad=True), "wh": torch.zeros(1, 2, 8, 8),
           "reg": torch.zeros(1, 2, 8, 8)}
    loss = centernet_loss(out, enc)["loss"]
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(out["hm"].grad).all()


# ---------------------------------------------------------------- training

@pytest.mark.slow  # minutes on 2 busy cores; `make test-slow`
def test_float_training_reduces_the_loss_and_writes_checkpoints_and_log(train_set, val_set, tmp_path):
    model = _tiny()
    result = train(model, train_set, epochs=12, batch_size=16, lr=3e-3, out_dir=tmp_path, seed=0,
                   val_set=val_set, progress=False)
    losses = [h["loss"] for h in result["history"]]
    assert losses[-1] < 0.5 * losses[0], losses
    assert result["quant_mode"] == "float" and get_quant_mode(model) == "float"
    assert result["calibration_steps_left"] > 0  # no activation statistics were collected in float
    log = json.loads((tmp_path / "log.json").read_text())
    assert [h["epoch"] for h in log["history"]] == list(range(1, 13))
    assert all("val_AP50" in h for h in log["history"])
    assert read_checkpoint(tmp_path / "last.pt")["epoch"] == 12
    assert read_checkpoint(tmp_path / "best.pt")["epoch"] == result["best"]["epoch"]


@pytest.mark.slow  # minutes on 2 busy cores; `make test-slow`
def test_qat_after_float_calibrates_the_activation_scales(train_set, tmp_path):
    model = _tiny()
    train(model, train_set, epochs=1, batch_size=16, lr=1e-3, out_dir=tmp_path / "f", seed=0, progress=False)
    result = train(model, train_set, epochs=1, batch_size=16, lr=1e-4, out_dir=tmp_path / "q", seed=0,
                   progress=False, qat=True)
    assert result["quant_mode"] == "qat" and result["calibration_steps_left"] == 300 + 1 - 4
    with torch.no_grad():
        model.eval()
        y = model(train_set[0][0][None])["hm"]
    scale = float(model.hm[3].act_quant.scale())  # the head's int8 output quantiser
    assert torch.allclose(y / scale, torch.round(y / scale), atol=1e-3)  # outputs on the int8 grid


class _Crash(Exception):
    pass


class _CrashAfter(InMemoryDataset):
    """Raises after `n` sample reads: a training run killed mid-epoch."""

    def __init__(self, source: InMemoryDataset, n: int) -> None:
        self.class_names, self.samples, self.left = source.class_names, source.samples, n

    def load(self, index: int):
        self.left -= 1
        if self.left < 0:
            raise _Crash
        return super().load(index)


def test_resume_mid_calibration_equals_an_uninterrupted_run(train_set, tmp_path):
    kw = dict(epochs=3, batch_size=16, lr=2e-3, seed=3, progress=False, qat=True, fold_bn_epochs=1)
    full = _tiny(1)
    ref = train(full, train_set, out_dir=tmp_path / "full", **kw)

    with pytest.raises(_Crash):  # dies in epoch 3, after last.pt of epoch 2 was written
        train(_tiny(1), _CrashAfter(train_set, 2 * IMAGES + 5), out_dir=tmp_path / "cut", **kw)
    assert read_checkpoint(tmp_path / "cut" / "last.pt")["epoch"] == 2
    resumed = _tiny(7)  # another initialisation: everything must come from the checkpoint
    out = train(resumed, train_set, out_dir=tmp_path / "cut", resume=tmp_path / "cut" / "last.pt", **kw)

    assert [h["loss"] for h in out["history"]] == [h["loss"] for h in ref["history"]]
    assert [h["bn_folded"] for h in out["history"]] == [False, False, True]  # the last epoch ran folded
    assert read_checkpoint(tmp_path / "cut" / "last.pt")["bn_folded"] and model_from_checkpoint(
        tmp_path / "cut" / "last.pt")[0].stem.folded
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_checkpoint_round_trip_of_an_uncalibrated_model(tmp_path):
    model = _tiny()  # never trained: activation quantisers hold no scale in their state_dict
    x = torch.rand(2, 3, 128, 128)
    path = save_checkpoint(tmp_path / "m.pt", model, epoch=0, metrics={"AP50": np.float32(0.5)})
    loaded, ckpt = model_from_checkpoint(path)
    assert ckpt["metrics"]["AP50"] == 0.5 and ckpt["overrides"] == {}
    model.eval()
    with torch.no_grad():
        a, b = model(x), loaded(x)
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(CheckpointError, match=r"m\.pt.*num_classes: checkpoint 10 != model 3"):
        load_checkpoint(path, build_detector("tiny", num_classes=3))


class Arbitrary:  # module level, so pickle can store it by reference
    def __reduce__(self):
        return (os.getcwd, ())


def test_weights_only_loading_rejects_pickled_objects_and_foreign_files(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"format": "hwconv-checkpoint", "payload": Arbitrary()}, evil)
    with pytest.raises(CheckpointError, match=r"evil\.pt is not a hwconv checkpoint.*weights_only"):
        read_checkpoint(evil)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match=r"notes\.pt is not a hwconv checkpoint"):
        read_checkpoint(text)
    other = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(CheckpointError, match=r"plain\.pt is not a hwconv checkpoint"):
        load_checkpoint(other, _tiny())


def test_resume_refuses_a_checkpoint_of_the_other_phase(train_set, tmp_path):
    model = _tiny()
    train(model, train_set, epochs=1, batch_size=32, lr=1e-3, out_dir=tmp_path, seed=0, progress=False)
    with pytest.raises(CheckpointError, match="saved in 'float' mode.*qat"):
        train(_tiny(), train_set, epochs=2, batch_size=32, lr=1e-3, out_dir=tmp_path, seed=0, progress=False,
              qat=True, resume=tmp_path / "last.pt")


# ---------------------------------------------------------------- evaluation

def _truth(dataset, i: int) -> dict[str, np.ndarray]:
    _, _, boxes, labels = dataset.annotation(i)
    return {"boxes": boxes, "labels": labels, "scores": np.ones(len(labels))}


def test_evaluate_outputs_perfect_and_shuffled(val_set, tmp_path):
    perfect = [_truth(val_set, i) for i in range(len(val_set))]
    m = evaluate_outputs(perfect, val_set)
    assert m["AP50"] == 1.0 and m["AP"] == 1.0 and m["n_images"] == len(val_set)
    assert list(m["per_class_AP50"].values()) == pytest.approx([1.0] * len(m["per_class_AP50"]))

    rng = np.random.default_rng(0)
    shuffled = [dict(d, boxes=d["boxes"][::-1] + rng.uniform(-40, 40, size=(1, 4)),
                     labels=rng.permutation(d["labels"])) for d in perfect]
    assert evaluate_outputs(shuffled, val_set)["AP50"] < 0.2

    partial = evaluate_outputs({0: perfect[0], 2: perfect[2]}, val_set)  # only images 0 and 2 count
    assert partial["AP50"] == 1.0 and partial["n_images"] == 2

    path = draw_detections(val_set[0][0], perfect[0], tmp_path / "det.png", val_set.class_names,
                           ground_truth=perfect[0])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_runs_a_model(val_set):
    m = evaluate(_tiny(), val_set, batch_size=8, max_images=4)
    assert m["n_images"] == 4 and 0.0 <= m["AP50"] <= 1.0


# ---------------------------------------------------------------- distributed

def _free_ports(n: int) -> tuple[int, ...]:
    sockets = [socket.socket() for _ in range(n)]  # held together, so the n ports differ
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return tuple(s.getsockname()[1] for s in sockets)
    finally:
        for s in sockets:
            s.close()


def _ddp_worker(rank: int, world: int, ports: tuple[int, int], out_dir: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    calls: list[str] = []
    save, log = train_mod.save_checkpoint, train_mod._write_log
    train_mod.save_checkpoint = lambda path, *a, **k: (calls.append(Path(path).name), save(path, *a, **k))[1]
    train_mod._write_log = lambda out, *a: (calls.append("log.json"), log(out, *a))[1]
    data = InMemoryDataset(load_dataset("synthetic", "train", num_images=16))
    model = _tiny(0)
    losses = []

    def run(phase: str) -> None:
        result = train(model, data, epochs=1, batch_size=4, lr=1e-3, out_dir=Path(out_dir, phase), seed=0,
                       progress=False, qat=phase == "qat")
        losses.append(result["history"][-1]["loss"])

    # float: DDP with unused (scale) parameters, in a group train() creates and tears down itself
    os.environ["MASTER_PORT"] = str(ports[0])
    run("float")
    assert not dist.is_initialized()
    # qat (calibration buffers), in the group quantize holds for both phases; its own port, since
    # the first group's store on the first port may still be closing
    os.environ["MASTER_PORT"] = str(ports[1])
    with train_mod.distributed_group():
        assert dist.is_initialized() and dist.get_world_size() == world
        run("qat")
        assert dist.is_initialized()  # train() leaves a group it did not create alone
    assert not dist.is_initialized()
    digest = float(sum(p.double().sum() for p in model.parameters()))
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps({"calls": calls, "digest": digest, "losses": losses}))


def test_two_process_gloo_ddp_rank0_alone_writes(tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_ports(2), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r1["calls"] == [] and sorted(set(r0["calls"])) == ["best.pt", "last.pt", "log.json"]
    assert r0["digest"] == r1["digest"] and r0["losses"] == r1["losses"]  # same weights, same reduced loss
    for phase in ("float", "qat"):
        ckpt = read_checkpoint(tmp_path / phase / "last.pt")
        assert ckpt["extra"]["options"]["world_size"] == 2 and ckpt["epoch"] == 1 and ckpt["quant_mode"] == phase
