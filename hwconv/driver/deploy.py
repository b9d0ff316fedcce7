"""`hwconv deploy`: a self-contained folder for a board, copied there over SSH.

The folder (built locally, then uploaded):

    bitfile/<stem>.bit, <stem>.hwh   from `hwconv build` (absent without Vivado: said so, see below)
    <program>.hwc, engine.json       the program and the engine config it was built for
    hwconv/                          the code the board runs: spec, golden model, compiler cost
                                     model, driver (numpy only; pynq for the PYNQ backend)
    run_engine.py                    runner CLI (--backend pynq|golden, --image, --throughput)
    hwconv_engine.ipynb              the same as a Jupyter notebook (PYNQ serves Jupyter)
    sample_image.npy                 a test picture at the program's input size
    MANIFEST.json                    "format": "hwconv-deploy", every file with its SHA-256, the
                                     board, the engine and its hash, what is missing

What deploy may delete: only a folder it created, recognised by its MANIFEST.json, and only if
nothing but the files that manifest lists is in it (plus the __pycache__/ and
.ipynb_checkpoints/ folders that running the package makes). Any other existing folder, locally
(-o) or on the board (--dir), is refused by name and left as it is.

The engine: the program must be built for the engine the board runs, which is the engine of
`hwconv build`'s output (<build dir>/rtl/engine_config.toml, when built for this board), else
the board's default engine (its [engine] table). A program for another engine is refused: its
bitstream would not exist and the engine would refuse it with CONFIG_MISMATCH.

Copying: `ssh`/`scp` subprocesses with key authentication only (BatchMode, no passwords or
keyboard-interactive), StrictHostKeyChecking=yes against the known_hosts given (an unknown host
key fails the deploy; a changed one fails with ssh's warning shown). Every remote argument is
shell-quoted; a host or user that starts with '-' is refused (ssh would read it as an option).
The folder goes to a fresh temporary directory beside the target, and only a complete upload is
renamed into place (the previous deploy folder is removed after).
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..fileio import (InputFileError, atomic_write_bytes, atomic_write_text, check_output_path,
                      check_regular_file, loads_json, make_temp_dir, read_capped)
from ..spec.config import EngineConfig
from ..spec.errors import printable
from ..spec.program import Program

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # .../hwconv
VENDORED = {  # the closure of what the runner imports, numpy and pynq aside
    "": ["__init__.py", "fileio.py", "imageio.py"],
    "spec": ["__init__.py", "config.py", "errors.py", "isa.py", "memory.py", "params.py", "program.py",
             "registers.py", "validate.py"],
    "golden": ["__init__.py", "engine.py", "ops.py"],
    "compiler": ["__init__.py", "builder.py", "cost.py"],
    "driver": ["__init__.py", "decode.py", "engine.py", "preprocess.py", "protocol.py"],
    "driver/backends": ["__init__.py", "golden.py", "pynq.py"],
}
RUNNER = "run_engine.py"
NOTEBOOK = "hwconv_engine.ipynb"
MANIFEST = "MANIFEST.json"
MANIFEST_FORMAT = "hwconv-deploy"
MANIFEST_MAX_BYTES = 4 * 1024 * 1024
RUN_LITTER = ("__pycache__", ".ipynb_checkpoints")  # made by running the package: not ours, not theirs


class DeployError(RuntimeError):
    """The deploy folder cannot be built or copied; the message says which step and why."""


class DeployRefused(DeployError, ValueError):
    """Bad input to deploy (a folder it did not make, a program for another engine, a bad option)."""


@dataclass
class DeployFolder:
    path: Path
    program: str
    bitstream: str | None
    missing: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # relative path -> sha256


# ------------------------------------------------------------------------------ what deploy made

def manifest_files(text: bytes | str, source: str) -> set[str] | None:
    """The files a deploy MANIFEST.json lists, or None if the text is not one hwconv deploy wrote."""
    try:
        m = loads_json(text, source=source, max_depth=8)
    except ValueError:
        return None
    if not isinstance(m, dict) or not isinstance(m.get("files"), dict):
        return None
    legacy = {"board", "engine", "program", "files"} <= set(m)  # written before "format" existed
    if m.get("format") != MANIFEST_FORMAT and not legacy:
        return None
    return set(m["files"]) | {MANIFEST}


def foreign_files(listed: set[str], present: list[str]) -> list[str]:
    """Files in a deploy folder that its manifest does not list (run litter aside)."""
    out = []
    for rel in present:
        rel = rel[2:] if rel.startswith("./") else rel
        if rel in listed or any(part in RUN_LITTER for part in Path(rel).parts):
            continue
        out.append(rel)
    return sorted(out)


def check_replaceable(folder: Path, option: str) -> None:
    """Refuse, naming `option` and the path, to replace `folder` unless deploy made it (see module
    docstring). A folder that does not exist is fine."""
    if not folder.exists() and not folder.is_symlink():
        return
    if folder.is_symlink() or not folder.is_dir():
        raise DeployRefused(f"{option} {folder}: exists and is not a folder hwconv deploy made; "
                            "choose another path")
    try:
        text = read_capped(folder / MANIFEST, limit=MANIFEST_MAX_BYTES, what="deploy manifest")
    except InputFileError:
        text = None
    listed = manifest_files(text, str(folder / MANIFEST)) if text is not None else None
    if listed is None:
        raise DeployRefused(f"{option} {folder}: exists and is not a hwconv deploy folder (no {MANIFEST} "
                            "written by hwconv deploy): deploy replaces only folders it made; choose a new "
                            "folder, or empty this one yourself")
    present = [str(p.relative_to(folder)) for p in folder.rglob("*") if not p.is_dir() or p.is_symlink()]
    extra = foreign_files(listed, present)
    if extra:
        raise DeployRefused(f"{option} {folder}: holds {len(extra)} file(s) hwconv deploy did not write "
                            f"({', '.join(printable(e) for e in extra[:5])}{', ...' if len(extra) > 5 else ''}); "
                            "move them out first, deploy never deletes them")


# ------------------------------------------------------------------------------ which engine

def board_engine(board, build_dir: Path | None, engine_file: Path | None = None) -> tuple[EngineConfig, str]:
    """The engine the board runs and where that was read: --engine FILE, else what `hwconv build`
    generated for this board in build_dir, else the board's default engine."""
    if engine_file is not None:
        return EngineConfig.load(engine_file), str(engine_file)
    built = build_dir / "rtl" / "engine_config.toml" if build_dir is not None else None
    if built is not None and built.is_file():
        try:
            data = tomllib.loads(read_capped(built, limit=1 << 20, what="engine config").decode())
        except (InputFileError, tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as exc:
            raise DeployRefused(f"{built}: cannot read the built engine's config: {exc}") from None
        target = data.get("target")
        if isinstance(target, dict) and target.get("board") == board.name:
            return EngineConfig.from_dict(data.get("engine"), source=str(built)), str(built)
    return board.default_engine_config(), f"the {board.name} board's default engine"


def check_program_engine(program: Program, program_path: Path, board, engine: EngineConfig, source: str) -> None:
    if program.config.config_hash != engine.config_hash:
        raise DeployRefused(
            f"--program {program_path}: built for engine {program.config.stem} (hash "
            f"0x{program.config.config_hash:08x}), but {board.name} runs {engine.stem} (hash "
            f"0x{engine.config_hash:08x}, from {source}); re-export the model for that engine "
            f"(hwconv export --engine FILE), or build the engine the program was made for "
            f"(hwconv build --board {board.name} --engine FILE) and deploy with its --build-dir")


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
        md(f"""# hwconv engine: {printable(program_name).replace('`', "'")}
Runs the detector program on the FPGA engine through PYNQ (or on the golden model when this folder
has no bitstream). Every import below is the `hwconv/` copy in this folder."""),
        code("""
import sys, pathlib
sys.path.insert(0, str(pathlib.Path().resolve()))
import numpy as np
from run_engine import open_driver, read_image
from hwconv.spec import Program"""),
        code(f"""
program = Program.load({program_name!r})
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
        code("engine.throughput_test(20 if BACKEND == \"pynq\" else 3)   # the golden model is slow on a board's CPU"),
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


def build_folder(out: Path, program_path: Path, board, *, build_dir: Path | None = None,
                 engine_file: Path | None = None, option: str = "-o") -> DeployFolder:
    """Write the deploy folder at `out` (see the module docstring for what it may replace)."""
    out, program_path = Path(out), Path(program_path)
    check_output_path(out, option=option, kind="dir")
    check_replaceable(out, option)
    program = Program.load(program_path)
    engine, engine_source = board_engine(board, build_dir, engine_file)
    check_program_engine(program, program_path, board, engine, engine_source)
    stem = board.artifact_stem(program.config)
    staging = make_temp_dir(out.parent.resolve(), f".{out.name}.")
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
        manifest = {"format": MANIFEST_FORMAT, "version": 1, "board": board.name, "engine": program.config.stem,
                    "engine_hash": f"0x{program.config.config_hash:08x}", "program": program_path.name,
                    "bitstream": bits[0].name if bits else None, "missing": missing, "files": files}
        atomic_write_bytes(staging / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
        _replace_dir(staging, out, option)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return DeployFolder(out, program_path.name, bits[0].name if bits else None, missing, files)


def _replace_dir(new: Path, out: Path, option: str) -> None:
    """Move `new` to `out`; a previous deploy folder there is moved aside first, then removed."""
    old = None
    if out.exists():
        check_replaceable(out, option)  # again: it may have changed while the folder was built
        old = new.parent / f"{new.name}.previous"
        out.rename(old)
    try:
        new.rename(out)
    except BaseException:
        if old is not None:
            old.rename(out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------------------ SSH

def check_ssh_word(value: str | None, option: str) -> None:
    """A --host/--user that ssh would read as an option (-oProxyCommand=...) or that holds
    whitespace/control characters is refused."""
    if value is None:
        return
    if not value or value.startswith("-") or any(c.isspace() or not c.isprintable() for c in value):
        raise DeployRefused(f"{option} {printable(value)!s}: must be a plain name, not empty, without spaces "
                            "and not starting with '-' (ssh would read it as an option)")


def check_key_file(path: Path | None, option: str) -> None:
    if path is None:
        return
    try:
        check_regular_file(path, what=f"{option} file")
    except InputFileError as exc:
        raise DeployRefused(f"{option} {exc}") from None
    if '"' in str(path):
        raise DeployRefused(f"{option} {path}: a path with a double quote cannot be passed to ssh")


@dataclass(frozen=True)
class SshTarget:
    host: str
    user: str | None = None
    port: int = 22
    identity: Path | None = None
    known_hosts: Path | None = None
    timeout_s: int = 20

    def __post_init__(self) -> None:
        check_ssh_word(self.host, "--host")
        check_ssh_word(self.user, "--user")
        if not isinstance(self.port, int) or not 1 <= self.port <= 65535:
            raise DeployRefused(f"--port {self.port}: must be in 1..65535")

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def check_files(self) -> None:
        """Name a missing --identity or --known-hosts before anything connects."""
        check_key_file(self.identity, "--identity")
        check_key_file(self.known_hosts, "--known-hosts")

    def options(self) -> list[str]:
        opts = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "PasswordAuthentication=no",
                "-o", "KbdInteractiveAuthentication=no", "-o", "PreferredAuthentications=publickey",
                "-o", f"ConnectTimeout={self.timeout_s}"]
        if self.known_hosts is not None:
            # quoted: ssh splits an unquoted UserKnownHostsFile value at spaces into several files
            opts += ["-o", f'UserKnownHostsFile="{self.known_hosts}"', "-o", "GlobalKnownHostsFile=/dev/null"]
        if self.identity is not None:
            opts += ["-i", str(self.identity), "-o", "IdentitiesOnly=yes"]
        return opts

    def ssh(self, remote_command: str, *, timeout_s: float = 600, stdin: bytes | None = None) -> "SshResult":
        # "--" ends ssh's options: the destination can never be read as one
        cmd = ["ssh", *self.options(), "-p", str(self.port), "--", self.destination, remote_command]
        return _run(cmd, "ssh", timeout_s, stdin, self)


@dataclass
class SshResult:
    returncode: int
    stdout: str
    stdout_bytes: bytes
    stderr: str


def _run(cmd: list[str], what: str, timeout_s: float, stdin: bytes | None = None,
         target: SshTarget | None = None) -> SshResult:
    try:
        r = subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout_s)
    except FileNotFoundError:
        raise DeployError(f"{what}: the {cmd[0]} program is not installed (apt-get install openssh-client)") from None
    except subprocess.TimeoutExpired:
        raise DeployError(f"{what}: no answer within {timeout_s} s") from None
    err_text = r.stderr.decode("utf-8", "replace")
    if r.returncode != 0:
        raise DeployError(_ssh_failure(what, r.returncode, err_text, target))
    return SshResult(r.returncode, r.stdout.decode("utf-8", "replace"), r.stdout, err_text)


def _ssh_failure(what: str, code: int, text: str, target: SshTarget | None) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip() and not set(ln.strip()) <= {"@"}]
    kh = target.known_hosts if target is not None and target.known_hosts is not None else "~/.ssh/known_hosts"
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in text or "Host key for" in text and "has changed" in text:
        # Not a missing key: the board answered with another key than the one recorded. Show ssh's
        # own warning (fingerprint, offending line) and do not suggest simply adding the key.
        shown = [ln for ln in lines if "Permanently added" not in ln][:8]
        return (f"{what}: WARNING: the host key of {target.host if target else 'the board'} has CHANGED since "
                f"it was recorded in {kh}; not connecting. Someone may be intercepting the connection, or the "
                f"board was reinstalled: check the new key on the board itself before replacing the old line "
                f"(ssh-keygen -R). ssh says: " + " | ".join(printable(ln, 200) for ln in shown))
    last = printable(lines[-1], 300) if lines else "no message"
    if "Host key verification failed" in text or "host key is known" in text:
        hint = f" (the board's host key is not in {kh}: add it with ssh-keyscan after checking it)"
    elif "Permission denied" in text:
        hint = " (key authentication failed: pass --identity KEY whose public key is in the board's authorized_keys)"
    else:
        hint = ""
    return f"{what} failed (exit {code}): {last}{hint}"


# ------------------------------------------------------------------------------ upload

REMOTE_STATE = r"""d={d}
if [ -L "$d" ] || {{ [ -e "$d" ] && [ ! -d "$d" ]; }}; then echo NOTDIR
elif [ ! -e "$d" ]; then echo ABSENT
elif [ -f "$d/MANIFEST.json" ]; then echo MANIFEST; head -c {cap} "$d/MANIFEST.json"; printf '\000'
  cd "$d" && find . ! -type d -print0
else echo NOMANIFEST; fi"""


def normalize_remote_dir(remote_dir: str) -> str:
    """--dir as the remote shell should see it: '~/x' is x in the home folder (quoting would stop
    the shell expanding ~), the home folder itself and '~user' forms are refused."""
    d = remote_dir.strip()
    if d.startswith("~/"):
        d = d[2:]
    d = d.rstrip("/")
    if d in ("", ".", "~") or d.startswith("~"):
        raise DeployRefused(f"--dir {remote_dir!r}: name a folder to deploy into (relative to the home folder "
                            "or absolute), not the home folder itself or ~user")
    if any(not c.isprintable() for c in d):
        raise DeployRefused(f"--dir {printable(remote_dir)}: control characters in a folder name")
    if ".." in d.split("/"):
        raise DeployRefused(f"--dir {remote_dir!r}: '..' is not allowed; give the folder's own path")
    return d


def check_remote_replaceable(target: SshTarget, remote_dir: str) -> None:
    """Refuse to replace a remote folder deploy did not make (the same rule as check_replaceable)."""
    where = f"--dir {remote_dir} on {target.destination}"
    r = target.ssh(REMOTE_STATE.format(d=shlex.quote(remote_dir), cap=MANIFEST_MAX_BYTES + 1))
    state, _, rest = r.stdout_bytes.partition(b"\n")
    state = state.decode("ascii", "replace").strip()
    if state == "ABSENT":
        return
    if state == "NOTDIR":
        raise DeployRefused(f"{where}: exists and is not a folder; choose another --dir")
    if state == "MANIFEST":
        text, _, listing = rest.partition(b"\0")
        listed = manifest_files(text, f"{remote_dir}/{MANIFEST}") if len(text) <= MANIFEST_MAX_BYTES else None
        if listed is not None:
            present = [p.decode("utf-8", "surrogateescape") for p in listing.split(b"\0") if p]
            extra = foreign_files(listed, present)
            if not extra:
                return
            raise DeployRefused(f"{where}: holds {len(extra)} file(s) hwconv deploy did not write "
                                f"({', '.join(printable(e) for e in extra[:5])}{', ...' if len(extra) > 5 else ''}); "
                                "move them out first, deploy never deletes them")
    elif state != "NOMANIFEST":
        raise DeployError(f"{where}: unexpected answer from the board: {printable(r.stdout[:200])}")
    raise DeployRefused(f"{where}: exists and is not a hwconv deploy folder (no {MANIFEST} written by hwconv "
                        "deploy): deploy replaces only folders it made; choose another --dir")


def _tar(folder: Path, arcname: str) -> bytes:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(folder, arcname=arcname)
    return buf.getvalue()


def upload(folder: Path, target: SshTarget, remote_dir: str) -> str:
    """Copy `folder` to `remote_dir` on the target atomically; returns remote_dir as used.

    A remote folder that is there already is replaced only if deploy made it (its manifest), and
    only after the new one is completely on the board."""
    remote_dir = normalize_remote_dir(remote_dir)
    target.check_files()
    check_remote_replaceable(target, remote_dir)
    parent = os.path.dirname(remote_dir) or "."
    q = shlex.quote
    tmp = target.ssh(f"mkdir -p -- {q(parent)} && mktemp -d {q(parent + '/.hwconv-upload.XXXXXX')}").stdout.strip()
    if not tmp or "\n" in tmp:
        raise DeployError(f"ssh: could not create a temporary folder in {parent!r} (got {printable(tmp)!r})")
    try:
        target.ssh(f"tar -x -f - -C {q(tmp)}", stdin=_tar(folder, "package"))
        inner, old = f"{tmp}/package", f"{tmp}/previous"
        # The folder is checked again just before the swap: only a deploy folder is moved aside
        # (then removed with tmp); anything else stops the swap and is left as it is.
        check_remote_replaceable(target, remote_dir)
        target.ssh(f"test -f {q(inner)}/MANIFEST.json && "
                   f"if [ -e {q(remote_dir)} ]; then test -f {q(remote_dir)}/MANIFEST.json && "
                   f"mv -- {q(remote_dir)} {q(old)}; fi && "
                   f"mv -- {q(inner)} {q(remote_dir)} && rm -rf -- {q(tmp)}")
    except DeployError:
        try:
            target.ssh(f"rm -rf -- {q(tmp)}")
        except DeployError:
            pass
        raise
    return remote_dir


def remote_commands(remote_dir: str, remote_python: str) -> tuple[str, str]:
    """(the hint printed for the user, the smoke test command): every word shell-quoted."""
    q = shlex.quote
    try:
        py = " ".join(q(w) for w in shlex.split(remote_python))
    except ValueError as exc:
        raise DeployRefused(f"--remote-python {remote_python!r}: {exc}") from None
    if not py:
        raise DeployRefused("--remote-python: empty")
    hint = f"cd {q(remote_dir)} && sudo python3 run_engine.py"
    smoke = f"cd {q(remote_dir)} && {py} run_engine.py --backend golden --json"
    return hint, smoke
