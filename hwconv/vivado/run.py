"""Running the Vivado flow: `vivado -mode batch -source build.tcl` in <out>/vivado/.

Vivado's output is streamed into reports/vivado.log as it comes (a live log: `tail -f` it), its
`HWCONV-STEP i/n what` lines drive a progress bar, and a failed run raises BuildError quoting
the log's first ERROR line. Whatever a failed run leaves in bitfile/ or its staging folder is
removed: bitfile/ holds a complete .bit/.hwh pair from a successful run, or nothing.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import time
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .plan import PARTIAL_BITFILE, BuildPlan
from .project import STEPS

_STEP = re.compile(r"^HWCONV-STEP (\d+)/(\d+) (.*)$")
_DONE = re.compile(r"^HWCONV-DONE ")
_ERROR = re.compile(r"^ERROR:")
_OUR_ERROR = re.compile(r"^ERROR: \[hwconv\] ")


class BuildError(RuntimeError):
    """Vivado failed, or finished without leaving the .bit and .hwh."""


@dataclass(frozen=True)
class BuildResult:
    bit: Path
    hwh: Path
    log: Path
    seconds: float


def batch_argv(vivado: str = "vivado", *, log: str | None = "../reports/vivado.log") -> list[str]:
    """The Vivado command line, run from <out>/vivado/; `log=None` when the caller keeps the log."""
    argv = [vivado, "-mode", "batch", "-source", "build.tcl"]
    return argv + (["-log", log] if log else ["-nolog"]) + ["-journal", "vivado.jou"]


def manual_command(plan: BuildPlan) -> str:
    """What to type where Vivado is installed (settings64.sh sourced)."""
    return f"cd {shlex.quote(str(plan.vivado_dir))} && {shlex.join(batch_argv())}"


def clear_bitfile(plan: BuildPlan) -> bool:
    """Empty bitfile/ and drop a staging folder; True if a previous bitstream was removed.

    Called before every build: rtl/ has just been regenerated, so an older pair no longer matches
    it, and after a failed run.
    """
    had_bitstream = plan.bitfile_dir.is_dir() and any(plan.bitfile_dir.iterdir())
    shutil.rmtree(plan.out_dir / PARTIAL_BITFILE, ignore_errors=True)
    shutil.rmtree(plan.bitfile_dir, ignore_errors=True)
    plan.bitfile_dir.mkdir(parents=True, exist_ok=True)
    return had_bitstream


def run_vivado(plan: BuildPlan, vivado: str, *, progress: bool = True) -> BuildResult:
    """Run build.tcl with `vivado` (the scripts must be written); BuildError if it fails."""
    plan.log.parent.mkdir(parents=True, exist_ok=True)
    first_error = our_error = None
    finished = False
    tail: deque[str] = deque(maxlen=5)
    start = time.monotonic()
    try:
        with open(plan.log, "w", encoding="utf-8") as log, _progress(progress) as bar:
            task = bar.add_task("starting Vivado", total=STEPS) if bar else None
            proc = subprocess.Popen(batch_argv(vivado, log=None), cwd=plan.vivado_dir, text=True,
                                    errors="replace", stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            try:
                assert proc.stdout is not None
                for line in proc.stdout:
                    log.write(line)
                    log.flush()
                    line = line.rstrip("\n")
                    if line.strip():
                        tail.append(line)
                    if _ERROR.match(line):
                        first_error = first_error or line
                        if _OUR_ERROR.match(line):
                            our_error = our_error or line
                    elif _DONE.match(line):
                        finished = True
                    elif (step := _STEP.match(line)) and bar is not None:
                        n, total, what = int(step[1]), int(step[2]), step[3]
                        bar.update(task, completed=n - 1, total=total, description=what)
                returncode = proc.wait()
            except BaseException:        # Ctrl-C: Vivado and its runs go too
                _stop(proc)
                raise
            if bar is not None and finished and returncode == 0:
                bar.update(task, completed=STEPS, description="done")
    except BaseException:
        clear_bitfile(plan)
        raise
    seconds = time.monotonic() - start
    if returncode != 0 or not finished or not (plan.bit.is_file() and plan.hwh.is_file()):
        clear_bitfile(plan)
        raise BuildError(_failure(plan, returncode, finished, first_error, our_error, tail))
    return BuildResult(plan.bit, plan.hwh, plan.log, seconds)


def _failure(plan: BuildPlan, returncode: int, finished: bool, first_error: str | None,
             our_error: str | None, tail: deque[str]) -> str:
    if first_error:
        why = first_error
        if our_error and our_error != first_error:
            why += f" (then {our_error})"
    elif returncode != 0:
        why = f"Vivado exited with status {returncode} and no ERROR line; its last line: " \
              f"{tail[-1] if tail else '(none)'}"
    elif not finished:
        why = "Vivado exited before the end of build.tcl"
    else:
        why = f"Vivado finished but {plan.bit.name} and {plan.hwh.name} are not both in {plan.bitfile_dir}"
    return f"Vivado build of {plan.stem} failed: {why}; full log: {plan.log}"


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def _progress(enabled: bool) -> Any:
    """A rich progress bar on stderr, or a stand-in that yields None."""
    if not enabled:
        return nullcontext(None)
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                               TimeElapsedColumn)

    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), console=Console(stderr=True))
