"""Declarative board catalog: one TOML file per board, read and validated here.

Adding a board is adding a file: packaged boards live next to this module as <name>.toml, and a
user's own board is loaded from any path. Nothing in the code names a board.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any, Callable, Iterable

from ..fileio import InputFileError, read_capped
from ..spec.config import AXI_DATA_WIDTH_CHOICES, EngineConfig
from ..spec.errors import SpecError

# Facts fixed by the device family, not by the board: the PS block each family carries and the
# widths its HP (PS DDR) ports can be configured to. Keys are yosys `synth_xilinx -family` values.
FAMILIES: dict[str, tuple[str, tuple[int, ...]]] = {
    "xc7": ("zynq7", (32, 64)),                          # Zynq-7000 S_AXI_HP0..3
    "xcup": ("zynq_ultra_ps_e", (32, 64, 128)),          # Zynq UltraScale+ S_AXI_HPx_FPD
}
PS_TYPES = tuple(ps for ps, _ in FAMILIES.values())

# The fabric clocks each PS type drives, as its block-design pins are named: Zynq-7000 FCLK_CLK0..3,
# Zynq UltraScale+ pl_clk0..3. The Vivado flow derives the clock's pin, reset and frequency
# property from the index, so a name outside these is an error in the board file.
PL_CLOCK_NAMES: dict[str, tuple[str, ...]] = {
    "zynq7": tuple(f"FCLK_CLK{i}" for i in range(4)),
    "zynq_ultra_ps_e": tuple(f"pl_clk{i}" for i in range(4)),
}

# The name goes into artifact file names (hwconv_<name>_<stem>.bit), so keep it filename-safe.
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_]*$")

_TOP_FIELDS = ("name", "display_name", "part", "family", "ps", "default_clock_mhz", "hp_port_width",
               "pynq_image", "resources", "pl_clocks")
_OPTIONAL_FIELDS = ("board_part", "board_files", "engine", "timing")
_TIMING_FIELDS = ("estimated_fmax_mhz", "config_hash", "report")
_CONFIG_HASH_RE = re.compile(r"^0x[0-9a-f]{8}$")
# The speed grade is the part name's field after the package: xczu3eg-sbva484-1-i, xc7z020clg400-1.
_SPEED_GRADE_RE = re.compile(r"-(\d[A-Z]*)(?:-[a-z])?$")
_POSITIVE_RESOURCES = ("dsp", "bram36", "lut", "ff")
_RESOURCE_FIELDS = _POSITIVE_RESOURCES + ("uram",)       # uram is 0 on devices without UltraRAM


BOARD_MAX_BYTES = 1 << 20  # a board file is ~2 KB


class BoardError(SpecError):
    """A board file is missing, unreadable or violates the board schema."""


@dataclass(frozen=True)
class Resources:
    """Device capacities (whole device, not what is left after a shell)."""

    dsp: int
    bram36: int
    lut: int
    ff: int
    uram: int


@dataclass(frozen=True)
class TimingReference:
    """A timing estimate (hwconv.rtl.timing) of the board's default engine, shipped with the board
    so that speed figures use a checked clock without a generate run of their own."""

    fmax_mhz: float
    config_hash: str      # "0x192e5bde": the engine config it was measured on
    report: str           # where the full report is, and on which engine revision


@dataclass(frozen=True)
class Board:
    name: str                                   # short id used in artifact stems
    display_name: str
    part: str                                   # Vivado part, e.g. xczu3eg-sbva484-1-i
    family: str                                 # yosys synth_xilinx -family: xc7 | xcup
    ps: str                                     # zynq7 | zynq_ultra_ps_e
    resources: Resources
    default_clock_mhz: float
    hp_port_width: int                          # bits of one PS HP port
    pl_clocks: tuple[tuple[str, float], ...]    # (PS fabric clock, MHz); one runs the engine
    pynq_image: str                             # which PYNQ image/version runs on the board
    board_part: str | None = None               # Vivado board part, where one exists
    board_files: str | None = None              # where Vivado gets board_part: "vivado" or a URL
    engine: tuple[tuple[str, object], ...] = ()  # [engine] table: EngineConfig fields for this board
    timing: TimingReference | None = None       # [timing] table: estimate of the default engine
    source: str = field(default="", compare=False)  # file it was read from, for messages

    @property
    def engine_clock(self) -> tuple[str, int]:
        """The PS fabric clock that drives the engine (the first in pl_clocks) and its index."""
        name = self.pl_clocks[0][0]
        return name, PL_CLOCK_NAMES[self.ps].index(name)     # validated when the file was read

    @property
    def speed_grade(self) -> str | None:
        """"-1", "-2", "-2LV" from the part name; None if the part name does not end in one."""
        m = _SPEED_GRADE_RE.search(self.part)
        return f"-{m.group(1)}" if m else None

    def artifact_stem(self, config: EngineConfig) -> str:
        """Shared stem of the .bit/.hwh pair: hwconv_ultra96v2_w4a8_16x16_250mhz."""
        return f"hwconv_{self.name}_{config.stem}"

    def default_engine_config(self) -> EngineConfig:
        """The reference engine retargeted to this board's clock and HP port width, with the
        board file's [engine] fields (a smaller array for a smaller part)."""
        return EngineConfig.from_dict({"clock_mhz": self.default_clock_mhz, "axi_data_width": self.hp_port_width,
                                       **dict(self.engine)}, source=f"{self.source or self.name} [engine]")


# -- loading -------------------------------------------------------------------------------------
def _packaged_dir() -> Traversable:
    return resources.files(__package__)


def _packaged_names() -> list[str]:
    return sorted(p.name[: -len(".toml")] for p in _packaged_dir().iterdir() if p.name.endswith(".toml"))


def load_board(name_or_path: str | Path) -> Board:
    """A packaged board by name ("ultra96v2"), or a user's board file by path ("my_board.toml")."""
    text_path = str(name_or_path)
    # Anything that looks like a path is one, so a typo in a path is not reported as "unknown board".
    if isinstance(name_or_path, Path) or text_path.endswith(".toml") or "/" in text_path or "\\" in text_path:
        path = Path(name_or_path)
        try:  # bounded, and a FIFO or device is refused rather than read forever
            text = read_capped(path, limit=BOARD_MAX_BYTES, what="board file").decode("utf-8")
        except InputFileError as exc:
            raise BoardError(str(exc)) from None
        except UnicodeDecodeError as exc:
            raise BoardError(f"{path}: board file is not UTF-8 text (byte {exc.start})") from None
        return parse_board(text, source=str(path))
    resource = _packaged_dir() / f"{text_path}.toml"
    if not resource.is_file():
        raise BoardError(f"unknown board {text_path!r}; known boards: {', '.join(_packaged_names())} "
                         f"(or pass the path to your own .toml)")
    return parse_board(resource.read_text(encoding="utf-8"), source=f"{text_path}.toml")


def list_boards() -> list[Board]:
    """Every packaged board, sorted by name."""
    return [load_board(name) for name in _packaged_names()]


def parse_board(text: str, *, source: str = "<board>") -> Board:
    """Parse and validate one board file's text; every error names `source` and the field."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BoardError(f"{source}: not valid TOML: {exc}") from None
    return _board_from_dict(data, source)


# -- validation ----------------------------------------------------------------------------------
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)        # bool is an int subclass


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# kind -> (how the error describes it, check)
_KINDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "str": ("a non-empty string", lambda v: isinstance(v, str) and v.strip() != ""),
    "int": ("an integer", _is_int),
    "number": ("a number", _is_number),
    "table": ("a table", lambda v: isinstance(v, dict)),
}


class _Reader:
    """Reads typed fields from one board file; every error names the file and the field."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, field: str, why: str) -> BoardError:
        return BoardError(f"{self.source}: field {field!r} {why}")

    def keys(self, table: dict, required: Iterable[str], optional: Iterable[str] = (), prefix: str = "") -> None:
        required, known = list(required), set(required) | set(optional)
        missing = [k for k in required if k not in table]
        if missing:
            raise BoardError(f"{self.source}: missing field {prefix + missing[0]!r}")
        unknown = sorted(set(table) - known)
        if unknown:  # a misspelt optional field would otherwise be silently ignored
            raise BoardError(f"{self.source}: unknown field {prefix + unknown[0]!r}; known: {sorted(known)}")

    def get(self, table: dict, key: str, kind: str, prefix: str = "") -> Any:
        what, ok = _KINDS[kind]
        v = table[key]
        if not ok(v):
            raise self.error(prefix + key, f"must be {what}, got {type(v).__name__} {v!r}")
        return v


def _board_from_dict(data: dict, source: str) -> Board:
    r = _Reader(source)
    r.keys(data, _TOP_FIELDS, _OPTIONAL_FIELDS)

    name = r.get(data, "name", "str")
    if not _NAME_RE.match(name):
        raise r.error("name", f"must be lower-case letters, digits and '_' (it goes into file names), got {name!r}")
    family = r.get(data, "family", "str")
    if family not in FAMILIES:
        raise r.error("family", f"must be one of {sorted(FAMILIES)}, got {family!r}")
    ps = r.get(data, "ps", "str")
    if ps not in PS_TYPES:
        raise r.error("ps", f"must be one of {list(PS_TYPES)}, got {ps!r}")
    family_ps, hp_widths = FAMILIES[family]
    if ps != family_ps:
        raise r.error("ps", f"is {ps!r} but family {family!r} carries a {family_ps!r} PS")

    # The HP width becomes the engine's AXI width, so it must suit both the PS and the engine.
    hp = r.get(data, "hp_port_width", "int")
    if hp not in hp_widths or hp not in AXI_DATA_WIDTH_CHOICES:
        raise r.error("hp_port_width", f"must be one of {hp_widths} for family {family!r}, got {hp}")

    clock = r.get(data, "default_clock_mhz", "number")
    if not 0 < clock <= 1000:
        raise r.error("default_clock_mhz", f"must be in (0, 1000] MHz, got {clock}")

    res = r.get(data, "resources", "table")
    r.keys(res, _RESOURCE_FIELDS, prefix="resources.")
    counts = {key: r.get(res, key, "int", prefix="resources.") for key in _RESOURCE_FIELDS}
    for key, v in counts.items():
        floor = 1 if key in _POSITIVE_RESOURCES else 0
        if v < floor:
            raise r.error(f"resources.{key}", f"must be {'positive' if floor else 'non-negative'}, got {v}")

    clocks = r.get(data, "pl_clocks", "table")
    if not clocks:
        raise r.error("pl_clocks", "must name at least one PS fabric clock")
    for clk in clocks:
        if not _is_number(clocks[clk]) or clocks[clk] <= 0:
            raise r.error(f"pl_clocks.{clk}", f"must be a positive number of MHz, got {clocks[clk]!r}")
        if clk not in PL_CLOCK_NAMES[ps]:
            raise r.error(f"pl_clocks.{clk}", f"is not a fabric clock of the {ps} PS "
                                              f"(one of {', '.join(PL_CLOCK_NAMES[ps])})")
    # The engine runs off a PS clock; a default that no PS clock generates would leave it unclocked.
    if float(clock) not in (float(mhz) for mhz in clocks.values()):
        raise r.error("default_clock_mhz", f"= {clock} is not generated by any of pl_clocks {clocks}")

    return Board(
        name=name,
        display_name=r.get(data, "display_name", "str"),
        part=r.get(data, "part", "str"),
        family=family,
        ps=ps,
        resources=Resources(**counts),
        default_clock_mhz=float(clock),
        hp_port_width=hp,
        pl_clocks=tuple((clk, float(mhz)) for clk, mhz in clocks.items()),
        pynq_image=r.get(data, "pynq_image", "str"),
        board_part=r.get(data, "board_part", "str") if "board_part" in data else None,
        board_files=_board_files(r, data),
        engine=_engine_fields(r, data, clock, hp),
        timing=_timing_reference(r, data),
        source=source,
    )


def _board_files(r: _Reader, data: dict) -> str | None:
    if "board_files" not in data:
        return None
    where = r.get(data, "board_files", "str")
    if where != "vivado" and not where.startswith("https://"):
        raise r.error("board_files", f"must be \"vivado\" (Vivado ships the board part) or an "
                                     f"https:// URL to get it from, got {where!r}")
    if "board_part" not in data:
        raise r.error("board_files", "says where to get a board part, but the file has no 'board_part'")
    return where


# -- presentation --------------------------------------------------------------------------------
def format_board_table(boards: Iterable[Board]) -> str:
    """Plain-text table for `hwconv boards`: one row per board, columns aligned."""
    header = ("name", "part", "family", "DSP", "BRAM36", "LUT", "FF", "clock")
    rows = [(b.name, b.part, b.family, str(b.resources.dsp), str(b.resources.bram36),
             f"{b.resources.lut:,}", f"{b.resources.ff:,}", f"{b.default_clock_mhz:g} MHz") for b in boards]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    numeric = {3, 4, 5, 6, 7}                            # right-align counts so digits line up

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(header), line(tuple("-" * w for w in widths)), *map(line, rows)]) + "\n"


def _timing_reference(r: _Reader, data: dict) -> TimingReference | None:
    """The optional [timing] table: a shipped timing estimate of the board's default engine."""
    if "timing" not in data:
        return None
    table = r.get(data, "timing", "table")
    r.keys(table, _TIMING_FIELDS, prefix="timing.")
    fmax = r.get(table, "estimated_fmax_mhz", "number", prefix="timing.")
    if not 0 < fmax <= 2000:
        raise r.error("timing.estimated_fmax_mhz", f"must be in (0, 2000] MHz, got {fmax}")
    config_hash = r.get(table, "config_hash", "str", prefix="timing.")
    if not _CONFIG_HASH_RE.match(config_hash):
        raise r.error("timing.config_hash", f"must be 0x and 8 lower-case hex digits, got {config_hash!r}")
    return TimingReference(float(fmax), config_hash, r.get(table, "report", "str", prefix="timing."))


def _engine_fields(r, data: dict, clock: float, hp: int) -> tuple[tuple[str, object], ...]:
    """The optional [engine] table: EngineConfig fields, checked by building the config."""
    if "engine" not in data:
        return ()
    table = r.get(data, "engine", "table")
    for key in ("clock_mhz", "axi_data_width"):
        if key in table:
            raise r.error(f"engine.{key}", "comes from default_clock_mhz / hp_port_width; set it there")
    try:
        EngineConfig.from_dict({"clock_mhz": clock, "axi_data_width": hp, **table})
    except SpecError as exc:
        raise r.error("engine", str(exc)) from None
    return tuple(sorted(table.items()))
