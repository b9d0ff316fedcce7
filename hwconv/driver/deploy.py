"""`hwconv deploy`: a self-contained folder for a board, copied there over SSH.

The folder (built locally, then uploaded):

    bitfile/<stem>.bit, <stem>.hwh   from `hwconv build` (absent without Vivado: said so, see below)
    <program>.hwc, engine.json       the program and the engine config it was built for
    hwconv/                          the code the board runs: spec, golden model, compiler cost
                                     model, driver (numpy only; pynq for the PYNQ backend)
    run_engine.py                    runner CLI (--backend pynq|golden, --image, --throughput)
    hwconv_engine.ipynb              the same as a Jupyter notebook (PYNQ serves Jupyter)
    sample_image.npy                 a test picture at the program's input size
    MANIFEST.json                    every file with its SHA-256, the board, what is missing

Copying: `ssh`/`scp` subprocesses with key authentication only (BatchMode, no passwords or
keyboard-interactive), StrictHostKeyChecking=yes against the known_hosts given (an unknown or
changed host key fails the deploy). The folder goes to a fresh temporary directory beside the
target, and only a complete upload is renamed into place (the previous one is removed after).
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..fileio import atomic_write_bytes, atomic_write_text
from ..spec.program import Program

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # .../hwconv
VENDORED = {  # the closure of what the runner imports, numpy and pynq aside
    "": ["__init__.py", "fileio.py"],
    "spec": ["__init__.py", "config.py", "errors.py", "isa.py", "params.py", "program.py", "registers.py",
             "validate.py"],
    "golden": ["__init__.py", "engine.py", "memory.py", "ops.py"],
    "compiler": ["__init__.py", "builder.py", "cost.py"],
    "driver": ["__init__.py", "backend.py", "decode.py", "engine.py", "golden_backend.py", "preprocess.py",
               "pynq_backend.py"],
}
RUNNER = "run_engine.py"
NOTEBOOK = "hwconv_engine.ipynb"


class DeployError(RuntimeError):
    """The deploy folder cannot be built or copied; the message says which step and why."""


@dataclass
class DeployFolder:
    path: Path
    program: str
    bitstream: str | None
    missing: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256


def _sample_image(size: tuple[int, int]) -> np.ndarray:
    """A deterministic picture: a gradient with a few bright blocks (enough to exercise detect)."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 255 // max(1, w - 1)), (yy * 255 // max(1, h - 1)), np.full_like(xx, 64)], -1)
    rng = np.random.default_rng(0)
    for _ in range(4):
        y, x = rng.integers(0, h * 3 // 4), rng.integers(0, w * 3 // 4)
        img[y:y + h // 6, x:x + w // 6] = rng.integers(150, 256, 3)
    return img.astype(np.uint8)


def _notebook(program_name: str, has_bitstream: bool) -> dict:
    def code(src: str) -> dict:
        return {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
                "source": src.strip("\n").splitlines(keepends=True)}

    def md(src: str) -> dict:
        return {"cell_type": "markdown", "metadata": {}, "source": src.strip("\n").splitlines(keepends=True)}

    backend = "pynq" if has_bitstream else "golden"
    cells = [
        md(f"""# hwconv engine: {program_name}
Runs the detector program on the FPGA engine through PYNQ (or on the golden model when this folder
has no bitstream). Every import below is the `hwconv/` copy in this folder."""),
        code("""
import sys, pathlib
sys.path.insert(0, str(pathlib.Path().resolve()))
import numpy as np
from run_engine import open_driver, read_image
from hwconv.spec import Program"""),
        code(f"""
program = Program.load("{program_name}")
BACKEND = "{backend}"   # "pynq" on the board with bitfile/, "golden" anywhere
engine = open_driver(BACKEND, program, None)
engine.load(program)
engine.identify()"""),
        code("""
image = read_image(pathlib.Path("sample_image.npy"))   # or any .png/.jpg
det = engine.detect(image, score_threshold=0.3)
for box, score, label in zip(det["boxes"], det["scores"], det["labels"]):
    print(label, round(float(score), 2), box.round(1))
det["stats"].to_dict()"""),
        code("""
try:
    import matplotlib.pyplot as plt, matplotlib.patches as patches
    fig, ax = plt.subplots(figsize=(6, 6)); ax.imshow(image)
    for (x1, y1, x2, y2) in det["boxes"]:
        ax.add_patch(patches.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="red"))
    plt.show()
except ImportError:
    print("matplotlib not installed: boxes printed above")"""),
        code("engine.throughput_test(20)"),
        code("engine.close()"),
    ]
    return {"cells": cells, "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                                        "name": "python3"},
                                         "language_info": {"name": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


def find_bitstream(build_dir: Path | None, stem: str) -> tuple[Path, Path] | None:
    if build_dir is None:
        return None
    bit, hwh = build_dir / "bitfile" / f"{stem}.bit", build_dir / "bitfile" / f"{stem}.hwh"
    return (bit, hwh) if bit.is_file() and hwh.is_file() else None


def build_folder(out: Path, program_path: Path, board, *, build_dir: Path | None = None) -> DeployFolder:
    """Write the deploy folder at `out` (replaced if it exists); see the module docstring."""
    program = Program.load(program_path)
    stem = board.artifact_stem(program.config)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        bits = find_bitstream(build_dir, stem)
        missing = []
        if bits:
            (staging / "bitfile").mkdir()
            for f in bits:
                shutil.copy2(f, staging / "bitfile" / f.name)
        else:
            where = (build_dir / "bitfile") if build_dir else Path("<build dir>/bitfile")
            missing = [f"{where}/{stem}.bit", f"{where}/{stem}.hwh"]
        shutil.copy2(program_path, staging / program_path.name)
        atomic_write_text(staging / "engine.json", program.config.to_json())
        for sub, names in VENDORED.items():
            dst = staging / "hwconv" / sub
            dst.mkdir(parents=True, exist_ok=True)
            for name in names:
                shutil.copy2(PACKAGE_ROOT / sub / name, dst / name)
        shutil.copy2(Path(__file__).with_name("runner_template.py"), staging / RUNNER)
        t = program.inputs[0].ref
        np.save(staging / "sample_image.npy", _sample_image((t.height, t.width)), allow_pickle=False)
        atomic_write_text(staging / NOTEBOOK, json.dumps(_notebook(program_path.name, bool(bits)), indent=1) + "\n")
        files = {str(p.relative_to(staging)): hashlib.sha256(p.read_bytes()).hexdigest()
                 for p in sorted(staging.rglob("*")) if p.is_file()}
        manifest = {"board": board.name, "engine": program.config.stem, "program": program_path.name,
                    "bitstream": bits[0].name if bits else None, "missing": missing, "files": files}
        atomic_write_bytes(staging / "MANIFEST.json", (json.dumps(manifest, indent=2) + "\n").encode())
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return DeployFolder(out, program_path.name, bits[0].name if bits else None, missing, files)


# ------------------------------------------------------------------------------------------ SSH

@dataclass(frozen=True)
class SshTarget:
    host: str
    user: str | None = None
    port: int = 22
    identity: Path | None = None
    known_hosts: Path | None = None
    timeout_s: int = 20

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def options(self) -> list[str]:
        opts = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "PasswordAuthentication=no",
                "-o", "KbdInteractiveAuthentication=no", "-o", "PreferredAuthentications=publickey",
                "-o", f"ConnectTimeout={self.timeout_s}"]
        if self.known_hosts is not None:
            opts += ["-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null"]
        if self.identity is not None:
            opts += ["-i", str(self.identity), "-o", "IdentitiesOnly=yes"]
        return opts

    def ssh(self, remote_command: str, *, timeout_s: float = 600) -> subprocess.CompletedProcess:
        cmd = ["ssh", *self.options(), "-p", str(self.port), self.destination, remote_command]
        return _run(cmd, "ssh", timeout_s)

    def scp(self, local: Path, remote: str, *, timeout_s: float = 600) -> None:
        cmd = ["scp", "-q", "-r", "-p", *self.options(), "-P", str(self.port), str(local),
               f"{self.destination}:{remote}"]
        _run(cmd, "scp", timeout_s)


def _run(cmd: list[str], what: str, timeout_s: float) -> subprocess.CompletedProcess:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except FileNotFoundError:
        raise DeployError(f"{what}: the {cmd[0]} program is not installed (apt-get install openssh-client)") from None
    except subprocess.TimeoutExpired:
        raise DeployError(f"{what}: no answer within {timeout_s} s") from None
    if r.returncode != 0:
        err = r.stderr.strip().splitlines()
        hint = ""
        text = r.stderr
        if "Host key verification failed" in text or "No ED25519 host key is known" in text or "REMOTE HOST IDENTIFICATION HAS CHANGED" in text:
            hint = " (the host key is not in the known_hosts file given: add it with ssh-keyscan after checking it)"
        elif "Permission denied" in text:
            hint = " (key authentication failed: pass --identity KEY whose public key is in the board's authorized_keys)"
        raise DeployError(f"{what} failed (exit {r.returncode}): {err[-1] if err else 'no message'}{hint}")
    return r


def upload(folder: Path, target: SshTarget, remote_dir: str) -> str:
    """Copy `folder` to `remote_dir` on the target atomically; returns remote_dir."""
    if not remote_dir or remote_dir.rstrip("/") in ("", ".", "~"):
        raise DeployError(f"--dir {remote_dir!r}: name a folder to deploy into, not the home directory itself")
    remote_dir = remote_dir.rstrip("/")
    parent = str(Path(remote_dir).parent)
    q = shlex.quote
    tmp = target.ssh(f"mkdir -p -- {q(parent)} && mktemp -d {q(parent)}/.hwconv-upload.XXXXXX").stdout.strip()
    if not tmp or "\n" in tmp:
        raise DeployError(f"ssh: could not create a temporary folder in {parent!r} (got {tmp!r})")
    try:
        target.scp(folder, f"{tmp}/")
        inner = f"{tmp}/{folder.name}"
        old = f"{tmp}/previous"
        target.ssh(f"test -f {q(inner)}/MANIFEST.json && "
                   f"if [ -e {q(remote_dir)} ]; then mv -- {q(remote_dir)} {q(old)}; fi && "
                   f"mv -- {q(inner)} {q(remote_dir)} && rm -rf -- {q(tmp)}")
    except DeployError:
        target.ssh(f"rm -rf -- {q(tmp)}")
        raise
    return remote_dir
