"""What one build makes and where: board, engine config, artifact stem, folders, jobs.

Output folder (FINN-like; `hwconv generate` owns rtl/ and the lint/synthesis reports):

    <out>/rtl/<stem>.v               the engine (hwconv generate)
    <out>/vivado/build.tcl           the Vivado flow: sources the scripts below in order
    <out>/vivado/settings.tcl        stem, part, board part, VLNV, clock, jobs, folders
    <out>/vivado/package_ip.tcl      rtl/<stem>.v -> IP <ENGINE_VLNV> in vivado/ip_repo/
    <out>/vivado/block_design.tcl    PS + engine + SmartConnects + reset + interrupt + address map
    <out>/vivado/implement.tcl       synthesis, implementation, bitstream, reports, export
    <out>/bitfile/<stem>.bit, .hwh    what PYNQ loads (only ever a complete pair)
    <out>/reports/vivado*.txt, vivado.log
    <out>/driver/, <out>/deploy/     filled by the driver and deploy steps
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..boards.catalog import Board, BoardError
from ..spec.config import EngineConfig
from ..spec.errors import SpecError

SUBDIRS = ("rtl", "reports", "bitfile", "driver", "deploy", "vivado")
BLOCK_DESIGN = "hwconv_bd"          # block design name; its wrapper is the implementation top
PROJECT = "hwconv"                  # Vivado project name under vivado/project/
PARTIAL_BITFILE = "bitfile.partial"  # export staging folder, renamed to bitfile/ when complete


@dataclass(frozen=True)
class BuildPlan:
    board: Board
    config: EngineConfig
    out_dir: Path
    jobs: int

    @property
    def stem(self) -> str:
        return self.board.artifact_stem(self.config)

    @property
    def vivado_dir(self) -> Path:
        return self.out_dir / "vivado"

    @property
    def bitfile_dir(self) -> Path:
        return self.out_dir / "bitfile"

    @property
    def bit(self) -> Path:
        return self.bitfile_dir / f"{self.stem}.bit"

    @property
    def hwh(self) -> Path:
        return self.bitfile_dir / f"{self.stem}.hwh"

    @property
    def log(self) -> Path:
        return self.out_dir / "reports" / "vivado.log"


def default_jobs() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def make_plan(board: Board, config: EngineConfig, out_dir: str | Path, jobs: int | None = None) -> BuildPlan:
    """Check that `board` can be built for (SpecError/BoardError naming what is missing)."""
    if board.board_part is None:
        # Without a board part Vivado has no PS preset: no DDR timing, no MIO, nothing boots.
        raise BoardError(f"{board.source}: missing field 'board_part': building a bitstream needs "
                         f"the Vivado board part, whose preset configures the {board.ps} PS "
                         f"(DDR, MIO, clocks)")
    if jobs is None:
        jobs = default_jobs()
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise SpecError(f"--jobs must be a positive integer, got {jobs!r}")
    return BuildPlan(board, config, Path(out_dir), jobs)
