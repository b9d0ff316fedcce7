"""EngineConfig: the parameters that size the accelerator, shared by RTL, compiler and driver.

The config is hashed into a 32-bit value that the engine exposes in a register and every program
carries in its header, so a program built for another engine is refused before it runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

from .errors import SpecError
from .isa import DEPTHWISE_ROW_TAPS

# Widths the PE datapath is built for: 4-bit weights pack two products into one DSP, 8-bit
# weights (first layer) run as two 4-bit halves or on an 8-bit array.
WEIGHT_BITS_CHOICES = (4, 8)
ACT_BITS_CHOICES = (8,)
AXI_DATA_WIDTH_CHOICES = (32, 64, 128, 256, 512)
CONFIG_MAX_BYTES = 1 << 20  # an engine file is ~500 bytes


def mac_pipeline_depth(p: int) -> int:
    """Registered stages of a P x P MAC array from a beat's acceptance to its sums (the lanes'
    activations, the multipliers' operands, the product's two registers, the packed product's
    split into its two lanes, one per adder-tree level, the accumulator, the skid buffer's
    head): the RTL builds it, the cycle model counts it."""
    return 5 + (p - 1).bit_length() + 2


# Cycles the window issuer takes to fetch a DEFORM_DW pixel's dilation (address, buffer read,
# clamp, offsets, the rows' slots); a pixel's steps take at least this long (the RTL waits, the
# cycle model counts it).
DILATION_FETCH_CYCLES = 5


def _is_int(v) -> bool:
    # bool is an int subclass and 4.0 == 4: both would pass `in` checks but hash differently.
    return isinstance(v, int) and not isinstance(v, bool)


def _is_pow2(v: int) -> bool:
    return _is_int(v) and v > 0 and v & (v - 1) == 0


@dataclass(frozen=True)
class EngineConfig:
    """One accelerator instance. Defaults are the Ultra96-V2 reference configuration."""

    pe_in: int = 16             # input-channel parallelism of the MAC array
    pe_out: int = 16            # output-channel parallelism of the MAC array
    weight_bits: int = 4        # native weight width of the MAC array (layers may use 8)
    act_bits: int = 8           # activation width (zero point 0)
    acc_bits: int = 32          # accumulator width; the compiler proves no layer overflows it
    max_dilation: int = 7       # largest per-pixel dilation of the deformable sampler
    max_width: int = 256        # widest feature map row the line buffer holds (pixels)
    max_channels: int = 2048    # largest channel count of any tensor
    weight_buffer_bytes: int = 128 * 1024  # one layer's weights, stored 8 bits each on chip
    line_buffer_bytes: int = 64 * 1024     # input rows on chip, as in DRAM (validate.line_buffer_words)
    row_buffer_bytes: int = 16 * 1024      # output rows being assembled (two, for upsampling)
    max_layers: int = 256       # layers per program (per-layer cycle counters are sized by it)
    axi_data_width: int = 128   # AXI4 master data bus (HP ports: 64 on Zynq-7000, 128 on ZU+)
    addr_width: int = 32        # AXI address width
    clock_mhz: float = 250.0    # target clock; used for fps figures

    def __post_init__(self) -> None:
        self.validate()

    # -- validation -------------------------------------------------------------------------
    def validate(self) -> None:
        def bad(field: str, why: str) -> SpecError:
            return SpecError(f"EngineConfig.{field}={getattr(self, field)!r}: {why}")

        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "clock_mhz":
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise bad(f.name, "must be a number")
            elif not _is_int(v):
                raise bad(f.name, f"must be an integer, got {type(v).__name__}")
        for name in ("pe_in", "pe_out"):
            v = getattr(self, name)
            if not _is_pow2(v) or v > 128:
                raise bad(name, "must be a power of two between 1 and 128")
        if self.pe_in < DEPTHWISE_ROW_TAPS:
            least = 1 << (DEPTHWISE_ROW_TAPS - 1).bit_length()   # the smallest power of two that holds a row
            raise bad("pe_in", f"must be at least {least}: a lane's multipliers take a depthwise kernel row "
                      f"({DEPTHWISE_ROW_TAPS} taps) per beat")
        if self.weight_bits not in WEIGHT_BITS_CHOICES:
            raise bad("weight_bits", f"must be one of {WEIGHT_BITS_CHOICES}")
        if self.act_bits not in ACT_BITS_CHOICES:
            raise bad("act_bits", f"must be one of {ACT_BITS_CHOICES}")
        if not isinstance(self.acc_bits, int) or not 16 <= self.acc_bits <= 32:
            raise bad("acc_bits", "must be an integer in [16, 32]")
        if not isinstance(self.max_dilation, int) or not 0 <= self.max_dilation <= 15:
            raise bad("max_dilation", "must be an integer in [0, 15]")
        if not isinstance(self.max_width, int) or not 8 <= self.max_width <= 4096:
            raise bad("max_width", "must be an integer in [8, 4096]")
        if not isinstance(self.max_channels, int) or not 1 <= self.max_channels <= 65535:
            raise bad("max_channels", "must be an integer in [1, 65535]")
        # On-chip buffers: powers of two, so their depth in words is exact for any PE shape.
        for name in ("weight_buffer_bytes", "line_buffer_bytes", "row_buffer_bytes"):
            v = getattr(self, name)
            if not _is_pow2(v) or not 1024 <= v <= 1 << 24:
                raise bad(name, "must be a power of two between 1024 and 2**24")
        if self.weight_buffer_bytes < self.pe_in * self.pe_out * 16:
            raise bad("weight_buffer_bytes", f"must hold at least 16 words of pe_in x pe_out = "
                      f"{self.pe_in * self.pe_out} weights")
        if self.line_buffer_bytes < 16 * max(self.pe_in, self.axi_data_width // 8):
            raise bad("line_buffer_bytes", "must hold at least 16 words of max(pe_in, bus bytes)")
        if self.row_buffer_bytes < 4 * self.axi_data_width // 8:
            raise bad("row_buffer_bytes", "must hold at least 4 bus beats")
        if not isinstance(self.max_layers, int) or not 1 <= self.max_layers <= 4096:
            raise bad("max_layers", "must be an integer in [1, 4096]")
        if self.axi_data_width not in AXI_DATA_WIDTH_CHOICES:
            raise bad("axi_data_width", f"must be one of {AXI_DATA_WIDTH_CHOICES}")
        if self.addr_width not in (32, 40, 48, 64):
            raise bad("addr_width", "must be one of (32, 40, 48, 64)")
        if not isinstance(self.clock_mhz, (int, float)) or not 1 <= self.clock_mhz <= 1000:
            raise bad("clock_mhz", "must be a number in [1, 1000]")

    # -- derived quantities -----------------------------------------------------------------
    @property
    def line_buffer_rows(self) -> int:
        """Rows the deformable sampler must hold: a 3x3 window dilated by up to max_dilation."""
        return 2 * self.max_dilation + 1

    @property
    def line_slots(self) -> int:
        """Row slots the line buffer can address (the deformable window's rows, at least 3)."""
        return max(self.line_buffer_rows, 3)

    @property
    def weight_depth(self) -> int:
        """Words of pe_in weights each of the pe_out weight banks holds."""
        return self.weight_buffer_bytes // (self.pe_in * self.pe_out)

    @property
    def line_word_bytes(self) -> int:
        """Width of a line buffer word: a bus beat, or pe_in bytes if wider (one word then holds
        any pe_in channels that two neighbouring words start)."""
        return max(self.pe_in, self.axi_data_width // 8)

    @property
    def line_buffer_depth(self) -> int:
        """Words the line buffer holds."""
        return self.line_buffer_bytes // self.line_word_bytes

    @property
    def bus_bytes(self) -> int:
        return self.axi_data_width // 8

    @property
    def name(self) -> str:
        """Short name encoding the datapath, used in artifact stems (w4a8_16x16)."""
        return f"w{self.weight_bits}a{self.act_bits}_{self.pe_in}x{self.pe_out}"

    @property
    def stem(self) -> str:
        """Name plus clock: hwconv_<board>_<stem>.bit."""
        return f"{self.name}_{int(round(self.clock_mhz))}mhz"

    @property
    def config_hash(self) -> int:
        """32-bit fingerprint of every field; the engine exposes it, programs carry it."""
        digest = hashlib.sha256(self.canonical_json().encode()).digest()
        return int.from_bytes(digest[:4], "little")

    # -- serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def canonical_json(self) -> str:
        d = self.to_dict()
        d["clock_mhz"] = float(d["clock_mhz"])
        return json.dumps(d, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict, *, source: str = "config") -> "EngineConfig":
        if not isinstance(data, dict):
            raise SpecError(f"{source}: engine config must be a table/object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(f"{source}: unknown engine config field(s) {unknown}; known: {sorted(known)}")
        try:
            return cls(**data)
        except SpecError as exc:
            raise SpecError(f"{source}: {exc}") from None
        except TypeError as exc:
            raise SpecError(f"{source}: {exc}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_toml(self) -> str:
        import tomli_w

        return tomli_w.dumps({"engine": self.to_dict()})

    @classmethod
    def load(cls, path: str | Path) -> "EngineConfig":
        """Read a config from .toml (an [engine] table) or .json: the suffix decides, anything else
        is refused. A regular file of at most CONFIG_MAX_BYTES, JSON nested at most 8 deep."""
        from ..fileio import InputFileError, loads_json, read_capped

        path = Path(path)
        kind = path.suffix.lower()
        if kind not in (".toml", ".json"):
            got = f"a {kind} file" if kind else "a name without a suffix"
            raise SpecError(f"{path}: engine config must be a .toml or .json file, not {got}")
        try:
            text = read_capped(path, limit=CONFIG_MAX_BYTES, what="engine config").decode("utf-8")
            if kind == ".toml":
                data = tomllib.loads(text)
                data = data.get("engine", data)
            else:
                data = loads_json(text, source=str(path), max_depth=8)
        except InputFileError as exc:
            raise SpecError(str(exc)) from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as exc:
            why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            raise SpecError(f"{path}: not valid {kind.lstrip('.')}: {why}") from None
        return cls.from_dict(data, source=str(path))

    def save(self, path: str | Path) -> None:
        from ..fileio import atomic_write_text

        path = Path(path)
        atomic_write_text(path, self.to_toml() if path.suffix == ".toml" else self.to_json())

    def with_(self, **changes) -> "EngineConfig":
        return dataclasses.replace(self, **changes)
