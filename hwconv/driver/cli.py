"""`hwconv deploy`, `hwconv run`, `hwconv validate`: the driver's commands (registered in hwconv.cli)."""

from __future__ import annotations

import json
import sys
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


def cmd_deploy(args) -> int:
    from ..boards import load_board
    from .deploy import DeployError, SshTarget, build_folder, upload

    board = load_board(args.board)
    program = Path(args.program)
    out = Path(args.out or f"out/deploy/{board.name}")
    folder = build_folder(out, program, board, build_dir=Path(args.build_dir) if args.build_dir else None)
    print(f"deploy folder {folder.path}: {len(folder.files)} files, program {folder.program}")
    if folder.bitstream:
        print(f"  bitstream: bitfile/{folder.bitstream} (+ .hwh)")
    else:
        print(f"  NO BITSTREAM: {', '.join(folder.missing)} not found. `hwconv build --board {board.name}` "
              "makes them where Vivado is installed. Without them the package runs with --backend golden "
              "(bit-exact detections, model cycle figures); the PYNQ backend needs the .bit/.hwh.")
    if not args.host:
        print("  not copied: pass --host to copy it to a board")
        return 0
    target = SshTarget(args.host, args.user, args.port, Path(args.identity) if args.identity else None,
                       Path(args.known_hosts) if args.known_hosts else None)
    try:
        remote = upload(folder.path, target, args.dir or f"hwconv/{board.name}")
    except DeployError as exc:
        print(f"hwconv deploy: error: {exc}", file=sys.stderr)
        return 2
    print(f"copied to {target.destination}:{remote}")
    print(f"  on the board: cd {remote} && sudo python3 run_engine.py      (or open hwconv_engine.ipynb in Jupyter)")
    if args.smoke_test:
        r = target.ssh(f"cd {remote} && {args.remote_python} run_engine.py --backend golden --json")
        result = json.loads(r.stdout)
        print(f"  smoke test (golden backend on the board): {len(result['detections'])} detection(s), "
              f"{result['host_ms']:.0f} ms")
    return 0


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
    sp = add("deploy", cmd_deploy, "build a board package (bitstream, program, driver, runner, notebook) "
                                   "and copy it over SSH (key auth, strict host keys)")
    sp.add_argument("--board", required=True, help="catalog name or board .toml")
    sp.add_argument("--program", required=True, help="the .hwc program (hwconv export)")
    sp.add_argument("--host", help="board address; without it the folder is only built")
    sp.add_argument("--user", help="SSH user (PYNQ images: xilinx)")
    sp.add_argument("--port", type=int, default=22)
    sp.add_argument("--identity", help="private key file (ssh -i)")
    sp.add_argument("--known-hosts", help="known_hosts file holding the board's host key (default: ssh's)")
    sp.add_argument("--dir", help="folder on the board (default: hwconv/<board>, in the user's home)")
    sp.add_argument("--build-dir", default="out/build", help="hwconv build's output (bitfile/ inside)")
    sp.add_argument("-o", "--out", help="local deploy folder (default: out/deploy/<board>)")
    sp.add_argument("--smoke-test", action="store_true", help="run the runner on the board (golden backend)")
    sp.add_argument("--remote-python", default="python3", help="python on the board for --smoke-test")

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

