"""Which clock a speed figure uses: min(board clock, estimated Fmax), and where that came from.

An fps figure is cycles x a clock, and the clock must be one the design can meet. Every figure
the tool prints takes its clock from `clock_for`:

    clk = clock_for(board, config)                    # or clock_for(config), clock_for("ultra96v2")
    mhz, source = clk                                 # unpacks as (MHz, one line saying why)
    fps = clk.mhz * 1e6 / cycles
    print(f"{fps:.1f} fps at {clk.source}")
    report["clock"] = clk.to_dict()                   # JSON reports carry the estimate

The estimate comes from, in this order: a generate run's reports/timing.json (`timing_report=`),
else the board file's [timing] table (the shipped estimate of that board's default engine, see
docs/reference/<board>/timing.txt), else there is none and the board clock is labelled unverified.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..boards.catalog import Board, list_boards, load_board
from ..spec.config import EngineConfig
from ..spec.errors import SpecError

__all__ = ["ClockError", "EngineClock", "clock_for", "clock_from_estimate", "read_timing_report"]

_MAX_REPORT_BYTES = 16 << 20   # a timing.json is a few KB; refuse anything absurd before reading


class ClockError(SpecError):
    """A timing report cannot be read, or belongs to another board or engine config."""


@dataclass(frozen=True)
class EngineClock:
    mhz: float                  # the clock speed figures use
    source: str                 # one line: which clock that is and why
    board_mhz: float            # the clock the engine is configured for (a board PL clock)
    fmax_mhz: float | None      # the timing estimate; None when there is none
    estimate: str | None        # where the estimate came from (report file, board file)

    @property
    def verified(self) -> bool:
        """True when a timing estimate backs the clock."""
        return self.fmax_mhz is not None

    @property
    def limited_by_timing(self) -> bool:
        """True when the estimate is below the board clock, so figures use the estimate."""
        return self.fmax_mhz is not None and self.fmax_mhz < self.board_mhz

    def __iter__(self) -> Iterator:
        """`mhz, source = clock_for(...)`."""
        return iter((self.mhz, self.source))

    def to_dict(self) -> dict:
        return {"mhz": self.mhz, "source": self.source, "board_mhz": self.board_mhz,
                "estimated_fmax_mhz": self.fmax_mhz, "estimate": self.estimate,
                "verified": self.verified, "limited_by_timing": self.limited_by_timing}


def clock_for(target: Board | EngineConfig | str | Path, config: EngineConfig | None = None, *,
              timing_report: str | Path | None = None) -> EngineClock:
    """The clock for `config` on `target` (a Board, a board name or file, or just an EngineConfig).

    `config` defaults to the board's default engine. With only a config, the board is found among
    the catalog boards whose default engine is exactly that config (for the shipped estimate).
    Raises ClockError when `timing_report` is unreadable or is for another board/config.
    """
    board: Board | None
    if isinstance(target, EngineConfig):
        if config is not None:
            raise TypeError("clock_for(config) takes no second config")
        board, config = None, target
    else:
        board = target if isinstance(target, Board) else load_board(target)
        config = config if config is not None else board.default_engine_config()
    board_mhz = float(config.clock_mhz)

    if timing_report is not None:
        fmax = read_timing_report(timing_report, config, board)
        return _clock(board_mhz, fmax, str(timing_report))
    board = board or _catalog_board_for(config)
    ref = board.timing if board is not None else None
    if ref is not None and ref.config_hash == f"0x{config.config_hash:08x}":
        return _clock(board_mhz, ref.fmax_mhz, f"{board.name} reference estimate, {ref.report}")
    why = "no timing estimate for this engine"
    if ref is not None:
        why = f"{board.name}'s reference estimate is for another engine config ({ref.config_hash})"
    return EngineClock(board_mhz, f"{board_mhz:g} MHz, the board clock, unverified ({why})",
                       board_mhz, None, None)


def read_timing_report(path: str | Path, config: EngineConfig, board: Board | None = None) -> float:
    """The estimated Fmax (MHz) in a generate run's reports/timing.json, checked against the
    engine config (all fields but the clock) and, when given, the board's device family."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > _MAX_REPORT_BYTES:
            raise ClockError(f"{path}: {size} bytes is too large for a timing report")
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ClockError(f"{path}: cannot read timing report: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ClockError(f"{path}: timing report is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ClockError(f"{path}: timing report must be a JSON object")
    fmax = data.get("fmax_mhz")
    if isinstance(fmax, bool) or not isinstance(fmax, (int, float)) or not math.isfinite(fmax) \
            or fmax <= 0:
        raise ClockError(f"{path}: field 'fmax_mhz' must be a positive number, got {fmax!r}")
    engine = data.get("engine_config")
    if not isinstance(engine, dict):
        raise ClockError(f"{path}: field 'engine_config' must be an object")
    mine = {k: v for k, v in config.to_dict().items() if k != "clock_mhz"}
    theirs = {k: v for k, v in engine.items() if k != "clock_mhz"}
    if mine != theirs:
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        raise ClockError(f"{path}: the report is for another engine config "
                         f"(field 'engine_config', differs in {', '.join(diff)})")
    if board is not None and data.get("family") != board.family:
        raise ClockError(f"{path}: the report is for family {data.get('family')!r}, "
                         f"{board.display_name} is {board.family!r} (field 'family')")
    return float(fmax)


def clock_from_estimate(config: EngineConfig, fmax_mhz: float, where: str) -> EngineClock:
    """The clock for `config` given an estimate just made (generate), labelled with `where`;
    to 0.1 MHz, as timing.json records it, so that both give the same clock."""
    return _clock(float(config.clock_mhz), round(float(fmax_mhz), 1), where)


def _clock(board_mhz: float, fmax: float, where: str) -> EngineClock:
    if fmax < board_mhz:
        text = (f"{fmax:.1f} MHz, the estimated Fmax ({where}), "
                f"below the {board_mhz:g} MHz board clock")
        return EngineClock(fmax, text, board_mhz, fmax, where)
    text = f"{board_mhz:g} MHz, the board clock (estimated Fmax {fmax:.1f} MHz, {where})"
    return EngineClock(board_mhz, text, board_mhz, fmax, where)


def _catalog_board_for(config: EngineConfig) -> Board | None:
    """The one catalog board with a shipped estimate whose default engine is exactly `config`."""
    matches = [b for b in list_boards()
               if b.timing is not None and b.default_engine_config() == config]
    families = {b.family for b in matches}
    return matches[0] if len(families) == 1 else None
