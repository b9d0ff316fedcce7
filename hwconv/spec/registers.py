"""AXI4-Lite register map of the engine: the one place that names an offset or a bit.

32-bit registers, byte offsets. 64-bit addresses and counters are split into _LO/_HI words; a
counter read latches its high word when the low word is read, so a 64-bit read is consistent
(read _LO first: _HI alone returns the last latched value).

A run ends with STATUS.done set and a done interrupt, whether it succeeded or stopped on an error
(then STATUS.error is set too and ERROR/ERROR_LAYER say why), so an interrupt-driven driver never
waits for a run that failed. CONTROL.soft_reset returns the engine core to idle; it does not clear
the configuration registers (bases, sizes, IRQ_ENABLE).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

ENGINE_ID = 0x48574356          # "HWCV" little-endian: the ID register's constant value
ENGINE_VLNV = "hwconv.org:hwconv:engine:1.0"  # PYNQ binds its driver by this
REGISTER_BYTES = 4


class Access(enum.Enum):
    RO = "ro"
    RW = "rw"
    W1C = "w1c"  # write 1 to clear
    WO = "wo"    # self-clearing strobes


@dataclass(frozen=True)
class Register:
    name: str
    offset: int
    access: Access
    doc: str
    bits: tuple[tuple[str, int, int], ...] = ()  # (field, lsb, width)

    def field(self, name: str) -> tuple[int, int]:
        for f, lsb, width in self.bits:
            if f == name:
                return lsb, width
        raise KeyError(f"register {self.name} has no field {name!r}")


class ErrorCode(enum.IntEnum):
    """Value of the ERROR register. Errors are states: the engine stops cleanly and reports."""

    NONE = 0
    BAD_MAGIC = 1           # the preamble at DESC_BASE is not a hwconv program
    VERSION_MISMATCH = 2    # program format major version differs from the engine's
    CONFIG_MISMATCH = 3     # program built for another engine configuration (hash differs)
    TOO_MANY_LAYERS = 4     # n_layers is 0 or exceeds the engine's max_layers
    BAD_OPCODE = 5          # unknown opcode in a descriptor
    BAD_DESCRIPTOR = 6      # a field outside what this engine supports (kernel, stride, widths)
    ARENA_OUT_OF_BOUNDS = 7  # a tensor reaches outside [ARENA_BASE, ARENA_BASE + ARENA_SIZE)
    PARAMS_OUT_OF_BOUNDS = 8  # weights/records reach outside [PARAMS_BASE, + PARAMS_SIZE)
    AXI_ERROR = 9           # SLVERR/DECERR on the master port
    BAD_REQUANT = 10        # a requant record sets the reserved bits 31:30 of its mult/shift word


REGISTERS: tuple[Register, ...] = (
    Register("ID", 0x00, Access.RO, "constant ENGINE_ID"),
    Register("VERSION", 0x04, Access.RO, "program format version the engine runs",
             (("minor", 0, 16), ("major", 16, 16))),
    Register("CONFIG_HASH", 0x08, Access.RO, "EngineConfig.config_hash of this engine"),
    Register("CONTROL", 0x0C, Access.WO, "strobes: start a program, or soft-reset the engine",
             (("start", 0, 1), ("soft_reset", 1, 1))),
    Register("STATUS", 0x10, Access.RO, "engine state; done is set at the end of every run, error or not",
             (("busy", 0, 1), ("done", 1, 1), ("error", 2, 1))),
    Register("ERROR", 0x14, Access.RO, "ErrorCode of the last run (0 while busy or after success)"),
    Register("ERROR_LAYER", 0x18, Access.RO, "index of the layer that raised ERROR"),
    Register("IRQ_ENABLE", 0x1C, Access.RW, "raise the interrupt line on done", (("done", 0, 1),)),
    Register("IRQ_STATUS", 0x20, Access.W1C, "pending interrupt; write 1 to clear", (("done", 0, 1),)),
    Register("DESC_BASE_LO", 0x24, Access.RW, "address of the device image (preamble + descriptors)"),
    Register("DESC_BASE_HI", 0x28, Access.RW, "high word of DESC_BASE"),
    Register("PARAMS_BASE_LO", 0x2C, Access.RW, "address of the params blob (weights, requant records)"),
    Register("PARAMS_BASE_HI", 0x30, Access.RW, "high word of PARAMS_BASE"),
    Register("PARAMS_SIZE", 0x34, Access.RW, "bytes of the params blob (bounds check)"),
    Register("ARENA_BASE_LO", 0x38, Access.RW, "address of the activation arena"),
    Register("ARENA_BASE_HI", 0x3C, Access.RW, "high word of ARENA_BASE"),
    Register("ARENA_SIZE", 0x40, Access.RW, "bytes of the activation arena (bounds check)"),
    Register("LAYERS_DONE", 0x44, Access.RO, "layers completed in the current/last run"),
    Register("CYCLES_LO", 0x48, Access.RO, "cycles from start to done (latches CYCLES_HI)"),
    Register("CYCLES_HI", 0x4C, Access.RO, "high word of CYCLES"),
    Register("PERF_SELECT", 0x50, Access.RW, "layer index whose counters PERF_* show"),
    Register("PERF_LAYER_CYCLES", 0x54, Access.RO, "cycles spent in the selected layer"),
    Register("PERF_LAYER_MACS_LO", 0x58, Access.RO, "useful MACs of the selected layer (latches HI)"),
    Register("PERF_LAYER_MACS_HI", 0x5C, Access.RO, "high word of PERF_LAYER_MACS"),
    Register("STALL_CYCLES", 0x60, Access.RO, "cycles the datapath waited on DRAM in the last run"),
)

REGISTER_BY_NAME = {r.name: r for r in REGISTERS}
REGISTER_MAP_BYTES = 0x80  # the AXI4-Lite window; offsets above the last register read as 0


def reg(name: str) -> Register:
    try:
        return REGISTER_BY_NAME[name]
    except KeyError:
        raise KeyError(f"no register {name!r}; known: {', '.join(REGISTER_BY_NAME)}") from None


def offset(name: str) -> int:
    return reg(name).offset


def mask(register: str, field: str) -> int:
    """The bits of `field` in `register`, in place: mask("CONTROL", "start") == 1."""
    lsb, width = reg(register).field(field)
    return ((1 << width) - 1) << lsb


def field_value(register: str, field: str, word: int) -> int:
    """The value of `field` in a `register` word: field_value("VERSION", "major", 0x10002) == 1."""
    lsb, width = reg(register).field(field)
    return word >> lsb & ((1 << width) - 1)


def pack_fields(register: str, **values: int) -> int:
    """A `register` word with the given fields set: pack_fields("VERSION", major=1, minor=2)."""
    word = 0
    for name, value in values.items():
        lsb, width = reg(register).field(name)
        if not 0 <= value < 1 << width:
            raise ValueError(f"{register}.{name} = {value} does not fit {width} bit(s)")
        word |= value << lsb
    return word


# The bits the driver and the models test and set, named once.
CONTROL_START, CONTROL_SOFT_RESET = mask("CONTROL", "start"), mask("CONTROL", "soft_reset")
STATUS_BUSY, STATUS_DONE, STATUS_ERROR = mask("STATUS", "busy"), mask("STATUS", "done"), mask("STATUS", "error")
IRQ_STATUS_DONE = mask("IRQ_STATUS", "done")
IRQ_ENABLE_DONE = mask("IRQ_ENABLE", "done")


def _check_map() -> None:
    offsets = [r.offset for r in REGISTERS]
    assert len(set(offsets)) == len(offsets), "register offsets collide"
    assert all(o % REGISTER_BYTES == 0 and o < REGISTER_MAP_BYTES for o in offsets)
    for r in REGISTERS:
        used = 0
        for _, lsb, width in r.bits:
            mask = ((1 << width) - 1) << lsb
            assert not used & mask and lsb + width <= 32, f"{r.name}: fields overlap"
            used |= mask


_check_map()
