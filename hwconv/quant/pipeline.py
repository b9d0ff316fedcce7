"""`hwconv quantize` and `hwconv export`: the user-facing pipeline over train/evaluate/export.

What is trained is what is measured: the data go through the deployment preprocessing
(data.prepare.PreparedSet over hwconv.driver.preprocess), the exported program records the input
size, class names and preprocessing it was trained with, and the AP that quantize reports is the
one `hwconv validate` computes on the golden model or the board (`trained_vs_deployed` checks it).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from ..fileio import atomic_write_text, check_output_path, read_json
from ..spec import EngineConfig
from .data import DEFAULT_SPLITS, open_split
from .data.prepare import Augment, PreparedSet
from .data.preview import to_uint8_hwc
from .models import build_detector

STRIDE = 32  # the backbone's total downsampling: an input side must be a multiple of it


def resolve_device(device: str) -> torch.device:
    """--device auto|cpu|cuda -> a torch device; cuda without one is a clear error."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device {device!r}: choose auto, cpu or cuda")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch sees no CUDA device (torch.cuda.is_available() is False; "
                         "this torch build or machine has none)")
    if device == "cuda":
        # Under torchrun each process takes its own GPU (LOCAL_RANK), not all of them GPU 0.
        rank = os.environ.get("LOCAL_RANK", "0")
        index = int(rank) if rank.isdigit() else 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"--device cuda: LOCAL_RANK={rank} but torch sees "
                             f"{torch.cuda.device_count()} GPU(s)")
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device(device)


def check_out_dir(out: Path, option: str = "-o") -> None:
    """An output folder must be a folder (or not exist yet) under a writable existing parent:
    hwconv.fileio.check_output_path, the one definition of that rule."""
    check_output_path(out, option=option, kind="dir")


def prepare_data(data: str, root: str | None, size: int, *, classes: tuple[str, ...] | None = None,
                 train_images: int | None = None, val_images: int | None = None, augment: bool = False,
                 seed: int = 0, train_split: str | None = None, val_split: str | None = None,
                 progress: Callable[[str], Any] | None = None) -> tuple[PreparedSet, PreparedSet, dict]:
    """Both splits read, checked and letterboxed to `size` before any training. Class names come
    from `classes`, else from the training split (VOC: its names; COCO: its categories); the
    validation split must have the same. Returns (train, val, {"data", "train_split", "val_split"})."""
    train_src = open_split(data, train_split, role="train", root=root, image_size=size,
                           num_images=train_images, classes=classes)
    names = tuple(train_src.class_names)
    val_src = open_split(data, val_split, role="val", root=root, image_size=size, num_images=val_images,
                         classes=names)
    splits = {"data": data, "train_split": train_split or DEFAULT_SPLITS[data][0],
              "val_split": val_split or DEFAULT_SPLITS[data][1]}
    if len(train_src) == 0 or len(val_src) == 0:
        empty = splits["train_split"] if len(train_src) == 0 else splits["val_split"]
        raise ValueError(f"{data}/{empty}: the split has no images")
    say = progress or (lambda text: None)
    say(f"reading {data}/{splits['train_split']} ({len(train_src)} images) and {data}/{splits['val_split']} "
        f"({len(val_src)} images), letterboxed to {size}x{size}")
    train_set = PreparedSet(train_src, size, augment=Augment(seed=seed) if augment else None)
    val_set = PreparedSet(val_src, size)
    return train_set, val_set, splits


def _resume_checkpoint(out: Path) -> tuple[str, Path]:
    """("qat" | "float", path) of the phase to continue in `out`."""
    for phase in ("qat", "float"):
        path = out / phase / "last.pt"
        if path.is_file():
            return phase, path
    raise ValueError(f"--resume: no checkpoint to continue in {out} (looked for {out}/qat/last.pt and "
                     f"{out}/float/last.pt)")


def quantize(model: str, out: Path, *, data: str = "synthetic", data_root: str | None = None,
             epochs: int = 10, qat_epochs: int = 4, batch_size: int = 32, lr: float = 2e-3,
             qat_lr: float = 5e-4, seed: int = 0, train_images: int | None = None,
             val_images: int | None = None, overrides: dict | None = None, progress: bool = True,
             classes: tuple[str, ...] | None = None, input_size: int | None = None, device: str = "auto",
             resume: bool = False, init: str | None = None, augment: bool | None = None,
             train_split: str | None = None, val_split: str | None = None,
             say: Callable[[str], Any] | None = print) -> dict:
    """Float training, then W4A8 QAT of the same network; returns and writes a report.

    Checks every option and both data splits before it creates anything. `resume`: continue the
    run in `out` (its QAT phase if qat/last.pt exists, else its float phase). `init`: a float hwconv
    checkpoint or a torchvision ShuffleNetV2 state dict (pretrained.load_init). `augment`: CenterNet's
    training augmentation (default: on for VOC and COCO)."""
    from .checkpoint import config_from_dict, read_checkpoint
    from .train import distributed_group, train

    say = say if progress and say is not None else (lambda text: None)
    out = Path(out)
    check_out_dir(out)
    dev = resolve_device(device)
    if resume and init:
        raise ValueError("--resume and --init exclude each other: a resumed run continues its own weights")
    phase, resume_path, saved = None, None, None
    if resume:
        phase, resume_path = _resume_checkpoint(out)
        saved = read_checkpoint(resume_path)
        cfg = config_from_dict(saved["config"])
        saved_names = tuple(saved["extra"].get("class_names") or ())
        if classes is not None and saved_names and tuple(classes) != saved_names:
            raise ValueError(f"--resume: {resume_path} was trained for classes {saved_names}, --classes "
                             f"says {tuple(classes)}")
        classes = classes or saved_names or None
        if input_size is not None and input_size != cfg.input_size:
            raise ValueError(f"--resume: {resume_path} was trained at --input-size {cfg.input_size}, not {input_size}")
    if input_size is not None and (input_size < STRIDE or input_size % STRIDE):
        raise ValueError(f"--input-size {input_size}: must be a positive multiple of {STRIDE}")
    augment = data in ("voc", "coco") if augment is None else augment

    torch.manual_seed(seed)
    probe = build_detector(model) if not resume else None
    size = cfg.input_size if resume else (input_size or probe.cfg.input_size)
    train_set, val_set, splits = prepare_data(
        data, data_root, size, classes=classes, train_images=train_images, val_images=val_images,
        augment=augment, seed=seed, train_split=train_split, val_split=val_split, progress=say)
    names = tuple(train_set.class_names)
    if resume:
        net = build_detector(cfg)
        if cfg.num_classes != len(names):
            raise ValueError(f"--resume: {resume_path} predicts {cfg.num_classes} classes, the data has {len(names)}")
    else:
        torch.manual_seed(seed)
        net = build_detector(model, num_classes=len(names), input_size=size, **(overrides or {}))
    init_report = None
    if init:
        from .pretrained import load_init

        init_report = load_init(net, init)
        say(f"--init {init} ({init_report['kind']}): loaded {len(init_report['loaded'])} of the detector's "
            f"{init_report['model_tensors']} tensors; not loaded: {len(init_report['not_loaded'])}"
            + "".join(f"\n  {k}: {why}" for k, why in list(init_report["not_loaded"].items())[:10])
            + ("\n  ..." if len(init_report["not_loaded"]) > 10 else ""))
    net.to(dev)
    say(f"training {net.cfg.name} ({len(names)} classes: {', '.join(names[:10])}{', ...' if len(names) > 10 else ''}) "
        f"at {size}x{size} on {dev}; {len(train_set)} training, {len(val_set)} validation images"
        + (", augmented" if augment else ""))

    provenance = {**splits, "data_root": None if data_root is None else str(Path(data_root).absolute()),
                  "input_size": size}
    with distributed_group():  # one group for both phases (see train.distributed_group)
        if phase == "qat":
            float_history = read_checkpoint(out / "float" / "last.pt")["extra"]["history"] \
                if (out / "float" / "last.pt").is_file() else []
            fp = {"history": float_history, "last_checkpoint": str(out / "float" / "last.pt")}
        else:
            fp = train(net, train_set, epochs=epochs, batch_size=batch_size, lr=lr, out_dir=out / "float",
                       seed=seed, val_set=val_set, qat=False, progress=progress,
                       resume=resume_path if phase == "float" else None, provenance=provenance)
        # The last QAT epoch trains with BN folded into the quantised weights: exactly what export deploys.
        q = train(net, train_set, epochs=qat_epochs, batch_size=batch_size, lr=qat_lr, out_dir=out / "qat",
                  seed=seed, val_set=val_set, qat=True, progress=progress, fold_bn_epochs=min(1, qat_epochs),
                  resume=resume_path if phase == "qat" else None, provenance=provenance)
    last = lambda r, k: r["history"][-1].get(k) if r["history"] else None  # noqa: E731
    report = {"model": net.cfg.name, **provenance, "class_names": list(names), "input_size": size,
              "val_images": len(val_set), "device": str(dev), "augment": augment,
              "float_AP50": last(fp, "val_AP50"), "float_AP": last(fp, "val_AP"),
              "w4a8_AP50": last(q, "val_AP50"), "w4a8_AP": last(q, "val_AP"),
              "checkpoint": str(q["last_checkpoint"]), "float_checkpoint": str(fp["last_checkpoint"]),
              "init": None if init_report is None else {k: v for k, v in init_report.items() if k != "loaded"}
              | {"loaded": len(init_report["loaded"])},
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


def load_for_export(checkpoint: str):
    """(model, checkpoint dict) of a W4A8 checkpoint, or one line naming what is wrong with it."""
    from .checkpoint import CheckpointError, model_from_checkpoint, read_checkpoint

    ckpt = read_checkpoint(checkpoint)
    for key in ("config", "model", "quant_state"):
        if not isinstance(ckpt.get(key), dict):
            raise CheckpointError(f"{checkpoint}: the checkpoint has no {key!r} section; export the W4A8 "
                                  "checkpoint written by `hwconv quantize` (qat/last.pt)")
    if ckpt.get("quant_mode") != "qat":
        raise CheckpointError(f"{checkpoint}: quantisation mode {ckpt.get('quant_mode')!r}; export the W4A8 "
                              "checkpoint written by the QAT phase of `hwconv quantize` (qat/last.pt)")
    for name, t in ckpt["model"].items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not torch.isfinite(t).all():
            raise CheckpointError(f"{checkpoint}: tensor {name} holds NaN or infinite values")
    try:
        net, ckpt = model_from_checkpoint(checkpoint)
    except (RuntimeError, KeyError, TypeError, AttributeError) as exc:  # shapes that do not fit the config
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if "size mismatch" in str(exc):
            first = next(line.strip() for line in str(exc).splitlines() if "size mismatch" in line)
        raise CheckpointError(f"{checkpoint}: weights do not fit its detector config ({first})") from None
    return net, ckpt


def export(checkpoint: str, out: Path, config: EngineConfig, *, verify_images: int = 0, qonnx: bool = False,
           verify_ap: int = 0, verify_data: str | None = None, data_root: str | None = None,
           progress: bool = True, verify_split: str | None = None) -> dict:
    """Checkpoint -> engine program (+ optional fake-quant vs golden check on synthetic images).

    Checks options, then loads and checks the checkpoint, exports and runs every verification in
    memory, and only then writes the outputs (program, engine.toml, optional QONNX, export.json)
    as a set: a failure leaves `out` as it was. The program's metadata records what it was trained
    for: class names, data set, input size and preprocessing (extra["class_names"], ["trained"],
    ["preprocess"]).
    qonnx: also write the QONNX graph (`qonnx.QONNX_FILE`) beside the program, checked against the
    fake-quant model on the `verify_images` images. verify_ap: run `verify_ap` validation images of
    `verify_data` (default: the data the checkpoint was trained on) through the golden model and
    the fake-quant model and compare AP50 (integer_ap), in the original images' coordinates.
    """
    from ..driver.preprocess import describe
    from .export import export_program
    from .verify import compare_outputs

    if verify_images < 0 or verify_ap < 0:
        raise ValueError(f"--verify / --verify-ap must be >= 0, got {verify_images} / {verify_ap}")
    out = Path(out)
    check_out_dir(out)
    net, ckpt = load_for_export(checkpoint)
    trained = ckpt.get("extra", {}).get("trained") or {}
    names = ckpt.get("extra", {}).get("class_names")
    verify_data = verify_data or trained.get("data") or "synthetic"
    if verify_ap and verify_data in ("voc", "coco") and not (data_root or trained.get("data_root")):
        raise ValueError(f"--verify-ap with --verify-data {verify_data} needs --data-root (the dataset folder)")
    prog = export_program(net, config)
    size = net.cfg.input_size
    prog.extra.update({"class_names": list(names) if names else [str(i) for i in range(net.cfg.num_classes)],
                       "preprocess": describe(size, size), "trained": trained})
    report: dict[str, Any] = {"layers": len(prog.layers), "params_bytes": len(prog.params),
                              "arena_bytes": prog.arena_bytes}
    images = None
    if verify_images:
        from .data import load_dataset

        ds = load_dataset("synthetic", "val", image_size=size, num_images=verify_images)
        images = torch.stack([ds[i][0] for i in range(verify_images)])
        report["verify"] = compare_outputs(net, prog, images)
    if verify_ap:
        from .integer_ap import integer_vs_fakequant, validation_set

        ds = validation_set(verify_data, size, images=verify_ap, root=data_root or trained.get("data_root"),
                            split=verify_split or (trained.get("val_split") if verify_data == trained.get("data")
                                                   else None),
                            classes=tuple(names) if names and verify_data in ("voc", "coco") else None)
        r = integer_vs_fakequant(net, prog, ds, images=verify_ap, progress=progress)
        r.pop("golden_detections")
        r.pop("fake_quant_detections", None)
        report["verify_ap"] = {"data": verify_data, **r}
    with tempfile.TemporaryDirectory(prefix=".export.", dir=_existing_parent(out)) as tmp:
        staged = Path(tmp)
        path_name = f"{net.cfg.name}_{config.name}.hwc"
        prog.save(staged / path_name)
        config.save(staged / "engine.toml")
        if qonnx:
            from .qonnx import QONNX_FILE, compare_qonnx, export_qonnx_model

            report["qonnx"] = export_qonnx_model(net, staged / QONNX_FILE)
            if images is not None:
                report["qonnx"]["verify"] = compare_qonnx(net, staged / QONNX_FILE, images)
            report["qonnx"]["path"] = str(out / QONNX_FILE)
        report = {"program": str(out / path_name), **report}
        atomic_write_text(staged / "export.json", json.dumps(report, indent=2, default=str) + "\n")
        out.mkdir(parents=True, exist_ok=True)
        for f in sorted(staged.iterdir()):  # the report last: its presence means the set is complete
            if f.name != "export.json":
                shutil.move(str(f), out / f.name)
        shutil.move(str(staged / "export.json"), out / "export.json")
    return report


def _existing_parent(path: Path) -> Path:
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return path


QUANTIZE_REPORT_MAX_BYTES = 16 * 1024 * 1024  # quantize.json is a few KB


def trained_vs_deployed(quantize_report: str | Path, program: str | Path, *, max_images: int | None = None,
                        backend: str = "golden") -> dict:
    """The AP50 `hwconv quantize` reported (its quantize.json) next to the AP50 `hwconv validate`
    computes for the exported program on the same split, and their difference (issue 16). For the
    demo's report: {"quantize_AP50", "validate_AP50", "difference", "images", "input_size", ...}."""
    from ..driver.cli import validate_program

    q = read_json(quantize_report, limit=QUANTIZE_REPORT_MAX_BYTES, what="quantize report")
    missing = [k for k in ("data", "val_split", "w4a8_AP50") if not isinstance(q, dict) or k not in q]
    if missing:
        raise ValueError(f"{quantize_report}: not a quantize.json report, field {missing[0]!r} is missing")
    v = validate_program(str(program), data=q["data"], data_root=q.get("data_root"), split=q["val_split"],
                         backend=backend, max_images=max_images)
    diff = None if q["w4a8_AP50"] is None or v["AP50"] is None else v["AP50"] - q["w4a8_AP50"]
    return {"quantize_AP50": q["w4a8_AP50"], "validate_AP50": v["AP50"], "difference": diff,
            "images": v["n_images"], "quantize_images": q.get("val_images"), "input_size": v["input_size"],
            "data": q["data"], "split": q["val_split"], "equal_within_0.005": diff is not None and abs(diff) <= 0.005}
