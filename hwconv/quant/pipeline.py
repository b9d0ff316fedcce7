"""`hwconv quantize` and `hwconv export`: the user-facing pipeline over train/evaluate/export."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..fileio import atomic_write_text
from ..spec import EngineConfig
from .data import load_dataset
from .data.preview import to_uint8_hwc
from .models import build_detector


def _datasets(data: str, root: str | None, image_size: int, train_images: int | None, val_images: int | None):
    kw_train: dict = {}
    kw_val: dict = {}
    if data in ("voc", "coco"):
        if not root:
            raise ValueError(f"--data {data} needs --data-root (the dataset folder)")
        kw_train = kw_val = {"root": root}
    elif data == "synthetic":
        kw_train = {"image_size": image_size, **({"num_images": train_images} if train_images else {})}
        kw_val = {"image_size": image_size, **({"num_images": val_images} if val_images else {})}
    train_split, val_split = ("train", "test") if data == "deepforest" else ("train", "val")
    return load_dataset(data, train_split, **kw_train), load_dataset(data, val_split, **kw_val)


def quantize(model: str, out: Path, *, data: str = "synthetic", data_root: str | None = None,
             epochs: int = 10, qat_epochs: int = 4, batch_size: int = 32, lr: float = 2e-3,
             qat_lr: float = 5e-4, seed: int = 0, train_images: int | None = None,
             val_images: int | None = None, overrides: dict | None = None, progress: bool = True) -> dict:
    """Float training, then W4A8 QAT of the same network; returns and writes a report."""
    from .train import InMemoryDataset, train

    torch.manual_seed(seed)
    net = build_detector(model, **(overrides or {}))
    train_set, val_set = _datasets(data, data_root, net.cfg.input_size, train_images, val_images)
    train_set, val_set = InMemoryDataset(train_set), InMemoryDataset(val_set)
    fp = train(net, train_set, epochs=epochs, batch_size=batch_size, lr=lr, out_dir=out / "float", seed=seed,
               val_set=val_set, qat=False, progress=progress)
    # The last QAT epoch trains with BN folded into the quantised weights: exactly what export deploys.
    q = train(net, train_set, epochs=qat_epochs, batch_size=batch_size, lr=qat_lr, out_dir=out / "qat",
              seed=seed, val_set=val_set, qat=True, progress=progress, fold_bn_epochs=min(1, qat_epochs))
    last = lambda r, k: r["history"][-1].get(k)  # noqa: E731
    report = {"model": net.cfg.name, "data": data, "float_AP50": last(fp, "val_AP50"), "float_AP": last(fp, "val_AP"),
              "w4a8_AP50": last(q, "val_AP50"), "w4a8_AP": last(q, "val_AP"),
              "checkpoint": str(q["last_checkpoint"]), "float_checkpoint": str(fp["last_checkpoint"]),
              "detections_png": str(write_detections_png(net, val_set, out / "detections.png"))}
    atomic_write_text(out / "quantize.json", json.dumps(report, indent=2) + "\n")
    return report


def write_detections_png(model: torch.nn.Module, dataset, path: Path, *, images: int = 4,
                         score_threshold: float = 0.3, zoom: int = 2) -> Path:
    """The first `images` images of `dataset` with `model`'s detections drawn, side by side (PNG)."""
    from .draw import draw_detections, montage, save_png, upscale
    from .evaluate import predict

    n = min(images, len(dataset))
    if n == 0:
        raise ValueError(f"{path}: no validation images to draw detections on")
    tiles = []
    for i, det in enumerate(predict(model, dataset, batch_size=n, max_images=n, score_threshold=score_threshold)):
        picture = upscale(to_uint8_hwc(dataset[i][0]), zoom)
        tiles.append(draw_detections(picture, det["boxes"] * zoom, det["scores"], det["labels"],
                                     dataset.class_names or None))
    return save_png(path, montage(tiles, columns=n))


def export(checkpoint: str, out: Path, config: EngineConfig, *, verify_images: int = 0, qonnx: bool = False,
           verify_ap: int = 0, verify_data: str = "synthetic", data_root: str | None = None,
           progress: bool = True) -> dict:
    """Checkpoint -> engine program (+ optional fake-quant vs golden check on synthetic images).

    qonnx: also write the QONNX graph (`qonnx.QONNX_FILE`) beside the program, checked against the
    fake-quant model on the `verify_images` images. verify_ap: run `verify_ap` validation images of
    `verify_data` through the golden model and the fake-quant model and compare AP50 (bench_integer).
    """
    from .checkpoint import model_from_checkpoint
    from .export import export_program
    from .verify import compare_outputs

    net, ckpt = model_from_checkpoint(checkpoint)
    if ckpt.get("quant_mode") != "qat":
        raise ValueError(f"{checkpoint}: quantisation mode {ckpt.get('quant_mode')!r}; export the W4A8 "
                         "checkpoint written by the QAT phase of `hwconv quantize` (qat/last.pt)")
    prog = export_program(net, config)
    path = out / f"{net.cfg.name}_{config.name}.hwc"
    prog.save(path)
    config.save(out / "engine.toml")
    report = {"program": str(path), "layers": len(prog.layers), "params_bytes": len(prog.params),
              "arena_bytes": prog.arena_bytes}
    images = None
    if verify_images:
        ds = load_dataset("synthetic", "val", image_size=net.cfg.input_size, num_images=verify_images)
        images = torch.stack([ds[i][0] for i in range(verify_images)])
        report["verify"] = compare_outputs(net, prog, images)
    if qonnx:
        from .qonnx import QONNX_FILE, compare_qonnx, export_qonnx_model

        report["qonnx"] = export_qonnx_model(net, out / QONNX_FILE)
        if images is not None:
            report["qonnx"]["verify"] = compare_qonnx(net, out / QONNX_FILE, images)
    if verify_ap:
        from .bench_integer import integer_vs_fakequant, validation_set

        ds = validation_set(verify_data, net.cfg.input_size, images=verify_ap, root=data_root)
        r = integer_vs_fakequant(net, prog, ds, images=verify_ap, progress=progress)
        r.pop("golden_detections")
        report["verify_ap"] = {"data": verify_data, **r}
    atomic_write_text(out / "export.json", json.dumps(report, indent=2, default=str) + "\n")
    return report
