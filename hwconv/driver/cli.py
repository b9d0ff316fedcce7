"""`hwconv deploy`, `hwconv run`, `hwconv validate`: the driver's commands (registered in hwconv.cli)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

BACKENDS = ("golden", "pynq", "sim")


def open_driver(backend: str, program, *, bitfile: str | None = None):
    """An EngineDriver for `program` on the named backend, or SystemExit with what is missing."""
    from .engine import EngineDriver

    if backend == "golden":
        from .golden_backend import GoldenBackend

        return EngineDriver(GoldenBackend(program.config))
    if backend == "pynq":
        try:
            import pynq  # noqa: F401
        except ImportError:
            raise SystemExit("hwconv: --backend pynq needs the pynq package (a PYNQ board image has it)") from None
        if not bitfile:
            raise SystemExit("hwconv: --backend pynq needs --bitfile <stem>.bit (with <stem>.hwh beside it)")
        from .pynq_backend import open_engine

        try:
            return open_engine(bitfile, config=program.config)
        except RuntimeError as exc:  # pynq off a board: "No Devices Found"
            raise SystemExit(f"hwconv: --backend pynq: {exc} (run this on the board, or use --backend golden)") from None
    try:
        from ..sim import backend as sim_backend  # noqa: F401
        from ..sim.runner import NOT_YET, engine_runs_programs
    except ImportError as exc:
        raise SystemExit(f"hwconv: --backend sim is unavailable: {exc}") from None
    if not engine_runs_programs():
        raise SystemExit(f"hwconv: --backend sim: {NOT_YET}; use --backend golden for the same results")
    raise SystemExit("hwconv: --backend sim runs inside a cocotb simulation: use the simulation tests "
                     "(tests/test_sim_*.py) until hwconv.sim offers a command-line entry point")


def _load_program(path: str):
    from ..spec import Program

    return Program.load(path)


def cmd_run(args) -> int:
    from .preprocess import as_rgb_uint8

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
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    try:
        from PIL import Image

        return np.asarray(Image.open(path).convert("RGB"))
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ValueError(f"{path}: not an image Pillow can read ({exc})") from None


def cmd_validate(args) -> int:
    from rich.progress import Progress

    from ..quant.data import load_dataset
    from ..quant.evaluate import evaluate_outputs
    from .preprocess import as_rgb_uint8

    program = _load_program(args.program)
    size = program.inputs[0].ref.height
    kw: dict = {}
    if args.data in ("voc", "coco"):
        if not args.data_root:
            raise ValueError(f"--data {args.data} needs --data-root (the dataset folder)")
        kw["root"] = args.data_root
    elif args.data == "synthetic":
        kw["image_size"] = size
    split = args.split or {"synthetic": "val", "deepforest": "test", "voc": "val", "coco": "val2017"}[args.data]
    dataset = load_dataset(args.data, split, **kw)
    n = min(args.max_images or len(dataset), len(dataset))
    detections = []
    with open_driver(args.backend, program, bitfile=args.bitfile) as engine, Progress(transient=True) as bar:
        engine.load(program)
        task = bar.add_task(f"{args.backend}: {args.data}/{split}", total=n)
        for i in range(n):
            img = dataset[i][0].permute(1, 2, 0).numpy()
            det = engine.detect(as_rgb_uint8(np.clip(np.floor(img * 255 + 0.5), 0, 255).astype(np.uint8)),
                                score_threshold=args.score_threshold)
            detections.append({k: det[k] for k in ("boxes", "scores", "labels")})
            bar.advance(task)
    metrics = evaluate_outputs(detections, dataset)
    metrics.update({"backend": args.backend, "data": args.data, "split": split, "program": args.program})
    if args.json:
        print(json.dumps(metrics, indent=2))
        return 0
    fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    print(f"{args.backend} on {args.data}/{split} ({n} images): AP {fmt(metrics['AP'])}, AP50 {fmt(metrics['AP50'])}")
    for name, ap in metrics["per_class_AP50"].items():
        print(f"  {name}: AP50 {ap:.4f}")
    return 0


def register(add) -> None:
    sp = add("run", cmd_run, "detect objects in an image with a program on a backend; draw them")
    sp.add_argument("--backend", choices=BACKENDS, default="golden")
    sp.add_argument("--program", required=True)
    sp.add_argument("--image", required=True, help=".png/.jpg (Pillow) or .npy (H, W, 3) uint8")
    sp.add_argument("--bitfile", help="pynq: the <stem>.bit (with <stem>.hwh beside it)")
    sp.add_argument("--score-threshold", type=float, default=0.3)
    sp.add_argument("-o", "--out", help="write the image with the detections drawn (.png)")

    sp = add("validate", cmd_validate, "AP and AP50 of a program on a dataset, run on a backend")
    sp.add_argument("--backend", choices=BACKENDS, default="golden")
    sp.add_argument("--program", required=True)
    sp.add_argument("--data", default="synthetic", choices=["synthetic", "deepforest", "voc", "coco"])
    sp.add_argument("--data-root", help="dataset folder for voc/coco")
    sp.add_argument("--split", help="default: val (synthetic, voc), test (deepforest), val2017 (coco)")
    sp.add_argument("--max-images", type=int)
    sp.add_argument("--bitfile", help="pynq: the <stem>.bit")
    sp.add_argument("--score-threshold", type=float, default=0.01)
    sp.add_argument("--json", action="store_true")

