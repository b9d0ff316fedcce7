"""`hwconv quantize` and `hwconv export`: the quantisation commands."""

from __future__ import annotations

from pathlib import Path

from ..spec import EngineConfig
from ..options import class_list, input_size, nonnegative_int, positive_float, positive_int
from .registry import MODEL_NAMES

DATA_CHOICES = ["synthetic", "deepforest", "voc", "coco"]


def _config(args) -> EngineConfig:
    return EngineConfig.load(args.engine) if getattr(args, "engine", None) else EngineConfig()


def register(add) -> None:
    sp = add("quantize", cmd_quantize, "train a detector in float, then W4A8 QAT; report AP50 of both")
    sp.add_argument("--model", default="tiny", choices=MODEL_NAMES)
    sp.add_argument("--data", default="synthetic", choices=DATA_CHOICES)
    sp.add_argument("--data-root", help="dataset folder for voc/coco")
    sp.add_argument("--classes", type=class_list,
                    help="comma-separated class names (VOC; default: the names in the training split; "
                         "COCO: its categories); the detector is built with that many classes")
    sp.add_argument("--input-size", type=input_size,
                    help="network input side in pixels, a multiple of 32 (default: the config's); images "
                         "of any size are letterboxed to it")
    sp.add_argument("--train-split", help="default: train (voc), train2017 (coco)")
    sp.add_argument("--val-split", help="default: val (voc), val2017 (coco); quantize reports AP on it")
    sp.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                    help="auto: cuda when torch sees a GPU, else cpu")
    sp.add_argument("--resume", action="store_true",
                    help="continue the run in -o: its QAT phase if qat/last.pt exists, else its float phase")
    sp.add_argument("--init", metavar="FILE",
                    help="start from a float hwconv checkpoint, or a ShuffleNetV2 ImageNet state dict in "
                         "torchvision's format (the backbone); reports what was loaded")
    sp.add_argument("--augment", action="store_true", default=None,
                    help="CenterNet training augmentation (default: on for voc/coco, off otherwise)")
    sp.add_argument("--no-augment", dest="augment", action="store_false")
    sp.add_argument("--variant", choices=["full", "bounded", "square", "depthwise", "square_depthwise"])
    sp.add_argument("--sampling", choices=["integer", "bilinear"])
    sp.add_argument("--weight-bits", type=int, choices=[4, 8])
    sp.add_argument("--epochs", type=positive_int, default=10, help="float epochs")
    sp.add_argument("--qat-epochs", type=positive_int, default=4)
    sp.add_argument("--batch-size", type=positive_int, default=32)
    sp.add_argument("--lr", type=positive_float, default=2e-3)
    sp.add_argument("--qat-lr", type=positive_float, default=5e-4)
    sp.add_argument("--seed", type=nonnegative_int, default=0)
    sp.add_argument("--train-images", type=positive_int, help="synthetic set size (default: the loader's)")
    sp.add_argument("--val-images", type=positive_int)
    sp.add_argument("-o", "--out", default="out/quantize")

    sp = add("export", cmd_export, "W4A8 checkpoint -> engine program (.hwc) for an engine config")
    sp.add_argument("checkpoint")
    sp.add_argument("-o", "--out", default="out/export")
    sp.add_argument("--engine", help="engine config (.toml or .json)")
    sp.add_argument("--verify", type=nonnegative_int, default=4,
                    help="compare golden vs fake-quant on N images (0: skip)")
    sp.add_argument("--qonnx", action="store_true", help="also write model.qonnx.onnx (QONNX, for FINN and "
                                                          "other tools) beside the program")
    sp.add_argument("--verify-ap", type=nonnegative_int, default=0, metavar="N",
                    help="AP50 of the golden program vs the fake-quant model on N validation images (0: skip)")
    sp.add_argument("--verify-data", choices=DATA_CHOICES,
                    help="validation set for --verify-ap (default: the one the checkpoint was trained on)")
    sp.add_argument("--data-root", help="dataset folder for --verify-data voc/coco (default: the training one)")
    sp.add_argument("--verify-split", help="split for --verify-ap (default: the training run's validation split)")


def cmd_quantize(args) -> int:
    from .pipeline import quantize

    overrides = {k: v for k, v in (("variant", args.variant), ("sampling", args.sampling),
                                   ("weight_bits", args.weight_bits)) if v is not None}
    r = quantize(args.model, Path(args.out), data=args.data, data_root=args.data_root, epochs=args.epochs,
                 qat_epochs=args.qat_epochs, batch_size=args.batch_size, lr=args.lr, qat_lr=args.qat_lr,
                 seed=args.seed, train_images=args.train_images, val_images=args.val_images, overrides=overrides,
                 classes=args.classes, input_size=args.input_size, device=args.device, resume=args.resume,
                 init=args.init, augment=args.augment, train_split=args.train_split, val_split=args.val_split)
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    print(f"float AP50 {fmt(r['float_AP50'])}, W4A8 AP50 {fmt(r['w4a8_AP50'])} on {r['data']}/{r['val_split']} "
          f"({r['val_images']} images at input {r['input_size']}x{r['input_size']}, scored in the original "
          "images' coordinates)")
    print(f"W4A8 checkpoint: {r['checkpoint']}  (next: hwconv export {r['checkpoint']} -o DIR)")
    return 0


def cmd_export(args) -> int:
    from .pipeline import export

    r = export(args.checkpoint, Path(args.out), _config(args), verify_images=args.verify, qonnx=args.qonnx,
               verify_ap=args.verify_ap, verify_data=args.verify_data, data_root=args.data_root,
               verify_split=args.verify_split)
    print(f"wrote {r['program']}: {r['layers']} layers, {r['params_bytes']} B params, {r['arena_bytes']} B arena")
    if "verify" in r:
        v = r["verify"]
        print(f"golden vs fake-quant on {args.verify} images: {100 * v['identical']:.3f} % identical output "
              "integers; max diff " + ", ".join(f"{k} {s['max_diff']}" for k, s in v["outputs"].items()))
    if "qonnx" in r:
        q = r["qonnx"]
        print(f"wrote {q['path']}: {q['nodes']} nodes (deformable layers as hwconv.quant.qonnx.DeformConv2dSquare)")
        if "verify" in q:
            print(f"QONNX (qonnx executor) vs fake-quant on {args.verify} images: {100 * q['verify']['identical']:.3f} % "
                  "identical output integers; max diff " +
                  ", ".join(f"{k} {s['max_lsb']}" for k, s in q["verify"]["outputs"].items()))
    if "verify_ap" in r:
        v = r["verify_ap"]
        fmt = lambda x: "n/a" if x is None else f"{100 * x:.2f}"  # noqa: E731
        print(f"golden vs fake-quant on {v['images']} {v['data']} images: {100 * v['identical']:.3f} % identical "
              f"output integers; AP50 integer {fmt(v['integer']['AP50'])} vs fake-quant {fmt(v['fake_quant']['AP50'])} "
              f"({v['delta_AP50_points']} points)")
    return 0
