"""`hwconv deploy`, `hwconv run`, `hwconv validate`: the driver's commands (registered in hwconv.cli)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

from ..options import class_list, positive_int, unit_interval

BACKENDS = ("golden", "pynq")  # the RTL simulation runs programs through `hwconv simulate`


def open_driver(backend: str, program, *, bitfile: str | None = None):
    """An EngineDriver for `program` on the named backend, or SystemExit with what is missing."""
    from .engine import EngineDriver

    if backend == "golden":
        from .backends.golden import GoldenBackend

        return EngineDriver(GoldenBackend(program.config))
    if backend != "pynq":
        raise ValueError(f"backend {backend!r}: one of {', '.join(BACKENDS)}")
    if importlib.util.find_spec("pynq") is None:
        raise SystemExit("hwconv: --backend pynq needs the pynq package (a PYNQ board image has it)")
    if not bitfile:
        raise SystemExit("hwconv: --backend pynq needs --bitfile <stem>.bit (with <stem>.hwh beside it)")
    from .backends.pynq import open_engine

    try:
        return open_engine(bitfile, config=program.config)
    except RuntimeError as exc:  # pynq off a board: "No Devices Found"
        raise SystemExit(f"hwconv: --backend pynq: {exc} (run this on the board, or use --backend golden)") from None


def _load_program(path: str):
    from ..spec import Program

    return Program.load(path)


def cmd_run(args) -> int:
    from .preprocess import as_rgb_uint8

    from ..fileio import check_output_path

    if args.out and Path(args.out).suffix.lower() != ".png":
        raise ValueError(f"-o {args.out}: the picture is written as PNG; name it .png")
    if args.out:
        check_output_path(args.out, option="-o")   # a folder there, or not writable: before any work
    program = _load_program(args.program)
    image = _read_image(Path(args.image))
    with open_driver(args.backend, program, bitfile=args.bitfile) as engine:
        engine.load(program)
        det = engine.detect(image, score_threshold=args.score_threshold)
    names = det["class_names"]
    st = det["stats"]
    print(f"{args.backend}: {len(det['scores'])} detection(s) in {args.image}")
    for b, s, lab in zip(det["boxes"], det["scores"], det["labels"]):
        print(f"  {names[lab] if names else int(lab)}  {s:.2f}  box {np.round(b, 1).tolist()}")
    fps = f"{st.fps:.1f} fps" if st.fps else "no cycle count"
    print(f"engine: {st.cycles} cycles at {st.clock_hz / 1e6:.2f} MHz ({fps}) [{st.counter_source}]")
    if args.out:
        from ..quant.draw import draw_detections, save_png

        pic = draw_detections(as_rgb_uint8(image), det["boxes"], det["scores"], det["labels"], class_names=names)
        save_png(args.out, pic)
        print(f"wrote {args.out}")
    return 0


def _read_image(path: Path) -> np.ndarray:
    """--image through hwconv.imageio.read_image (regular files only, pixel cap from the header,
    16-bit grey scaled); its one-line message names the file, prefixed with the option."""
    from ..imageio import ImageError, read_image

    try:
        return read_image(path)
    except ImageError as exc:
        raise ImageError(f"--image {exc}") from None


def validate_program(program_path: str, *, data: str, data_root: str | None = None, split: str | None = None,
                     backend: str = "golden", max_images: int | None = None, score_threshold: float = 0.01,
                     bitfile: str | None = None, classes: tuple[str, ...] | None = None,
                     progress: bool = False) -> dict:
    """COCO AP/AP50 of a program on a data set split, run on a backend: each original image goes
    through EngineDriver.detect (the one preprocessing, decoding and mapping back) and is scored in
    its own coordinates, as `hwconv quantize` scores the model. Refuses a data set whose classes
    are not the program's. Returns the metrics with data, split, n_images and input_size."""
    from rich.progress import Progress

    from ..quant.data import DEFAULT_SPLITS, open_split
    from ..quant.evaluate import evaluate_outputs

    program = _load_program(program_path)
    t = program.inputs[0].ref
    num_classes = program.tensor("hm").ref.channels
    names = program.extra.get("class_names")
    names = tuple(names) if isinstance(names, list) and all(isinstance(c, str) for c in names) else None
    if names is not None and len(names) != num_classes:
        raise ValueError(f"{program_path}: metadata names {len(names)} classes, the hm output has {num_classes}")
    split = split or DEFAULT_SPLITS[data][1]
    dataset = open_split(data, split, root=data_root, image_size=t.height, num_images=max_images,
                         classes=classes or (names if data == "voc" else None))
    if dataset.num_classes != num_classes:
        raise ValueError(f"{data}/{split} has {dataset.num_classes} classes, the program {program_path} predicts "
                         f"{num_classes}: score a program on the data it was trained for")
    if names is not None and tuple(dataset.class_names) != names:
        raise ValueError(f"{data}/{split}: its classes ({', '.join(dataset.class_names[:6])}, ...) are not the "
                         f"program's ({', '.join(names[:6])}, ...)")
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    if n == 0:
        raise ValueError(f"{data}/{split}: no images to score")
    detections = []
    with open_driver(backend, program, bitfile=bitfile) as engine, \
            Progress(transient=True, disable=not progress) as bar:
        engine.load(program)
        task = bar.add_task(f"{backend}: {data}/{split}", total=n)
        for i in range(n):
            det = engine.detect(dataset.load(i)[0], score_threshold=score_threshold)
            detections.append({k: det[k] for k in ("boxes", "scores", "labels")})
            bar.advance(task)
    metrics = evaluate_outputs(detections, dataset)
    metrics.update({"backend": backend, "data": data, "split": split, "program": program_path,
                    "input_size": [t.height, t.width]})
    return metrics


def cmd_validate(args) -> int:
    if args.data in ("voc", "coco") and not args.data_root:
        raise ValueError(f"--data {args.data} needs --data-root (the dataset folder)")
    metrics = validate_program(args.program, data=args.data, data_root=args.data_root, split=args.split,
                               backend=args.backend, max_images=args.max_images,
                               score_threshold=args.score_threshold, bitfile=args.bitfile, classes=args.classes,
                               progress=not args.json)
    if args.json:
        print(json.dumps(metrics, indent=2))
        return 0
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    h, w = metrics["input_size"]
    print(f"{args.backend} on {metrics['data']}/{metrics['split']}: {metrics['n_images']} images at input "
          f"{h}x{w} (letterboxed, scored in the original images' coordinates): AP {fmt(metrics['AP'])}, "
          f"AP50 {fmt(metrics['AP50'])}")
    for name, ap in metrics["per_class_AP50"].items():
        print(f"  {name}: AP50 {ap:.4f}")
    return 0


def register(add) -> None:
    sp = add("run", cmd_run, "detect objects in an image with a program on a backend; draw them")
    sp.add_argument("--backend", choices=BACKENDS, default="golden")
    sp.add_argument("--program", required=True)
    sp.add_argument("--image", required=True, help=".png/.jpg (Pillow) or .npy (H, W, 3) uint8")
    sp.add_argument("--bitfile", help="pynq: the <stem>.bit (with <stem>.hwh beside it)")
    sp.add_argument("--score-threshold", type=unit_interval, default=0.3)
    sp.add_argument("-o", "--out", help="write the image with the detections drawn (.png)")

    sp = add("validate", cmd_validate, "AP and AP50 of a program on a dataset, run on a backend")
    sp.add_argument("--backend", choices=BACKENDS, default="golden")
    sp.add_argument("--program", required=True)
    sp.add_argument("--data", default="synthetic", choices=["synthetic", "deepforest", "voc", "coco"])
    sp.add_argument("--data-root", help="dataset folder for voc/coco")
    sp.add_argument("--split", help="default: val (synthetic, voc), test (deepforest), val2017 (coco): "
                                    "the split `hwconv quantize` reports its AP on")
    sp.add_argument("--classes", type=class_list, help="VOC: comma-separated class names (default: the program's)")
    sp.add_argument("--max-images", type=positive_int)
    sp.add_argument("--bitfile", help="pynq: the <stem>.bit")
    sp.add_argument("--score-threshold", type=unit_interval, default=0.01)
    sp.add_argument("--json", action="store_true")

