"""`EngineTestbench`: the engine top's transport in cocotb: clock, reset, AXI-Lite master and RAM.

What it wraps around the generated top (``ap_clk``, ``ap_rst_n``, ``s_axi_control_*``,
``m_axi_gmem_*``, ``irq``; see hwconv/rtl/top.py):

- a clock at the config's period (rounded to an even number of picoseconds) and the active-low
  synchronous reset;
- a cocotbext-axi `AxiLiteMaster` on ``s_axi_control``: the testbench is the register *port* of
  the driver's protocol (hwconv.driver.protocol: ``read_reg``/``write_reg`` by offset,
  ``wait_irq`` on the irq line, deadlines in clock cycles), and `host` is the one
  `EngineProtocol` over it: ``await tb.host.read("STATUS")``, ``tb.host.start()``,
  ``tb.host.wait_done(cycles)``, ``tb.host.counters(n)``, as a board's driver does;
- a DRAM model on ``m_axi_gmem``: cocotbext-axi's `AxiRamRead`/`AxiRamWrite` over one
  `bytearray`, with every engine access checked against the regions the testbench mapped
  (`hwconv.sim.layout`). An access outside them, or a write into the read-only image/params,
  is answered SLVERR and recorded; `check_no_violations` fails the test naming it. The engine's
  AXI port therefore cannot scribble over memory unnoticed.
- random backpressure (`set_backpressure`): seeded pause generators on all five channels of the
  DRAM model (AW/W/AR ready, R/B valid) and of the AXI-Lite master; `hang_bus` stops the DRAM
  answering altogether.

Memory helpers: `load_program` places the device image, params and arena (inputs written) in
DRAM and has `host` program the regions; `arena` / `read_outputs` / `write_mem` / `read_mem`
touch only Python memory.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, First, RisingEdge
from cocotb.utils import get_sim_time
from cocotbext.axi import AxiBus, AxiLiteBus, AxiLiteMaster
from cocotbext.axi.axi_ram import AxiRamRead, AxiRamWrite

from ..driver.protocol import EngineProtocol
from ..spec.config import EngineConfig
from ..spec.memory import read_tensor, write_tensor
from ..spec.program import Program
from ..spec.registers import IRQ_ENABLE_DONE, REGISTER_BYTES, offset
from .layout import MemoryMap, ProgramLayout, Region, place_program, ram_bytes_for

__all__ = ["AccessViolation", "CycleDeadline", "EngineTestbench", "random_pauses"]

DEFAULT_RAM_BYTES = 16 << 20
_RESP_OKAY = 0
_POLL_CYCLES = 64        # register poll period while the done interrupt is not enabled
_IRQ_ENABLE = offset("IRQ_ENABLE")
_QUIET_LOGGERS = ("cocotb.%s.s_axi_control", "cocotb.%s.m_axi_gmem", "cocotb.%s")


class AccessViolation(AssertionError):
    """The engine accessed DRAM outside the regions the testbench gave it."""


@dataclass
class CycleDeadline:
    """A deadline in clock cycles of the simulation (the testbench's unit of time)."""

    testbench: "EngineTestbench"
    cycles: int

    def __post_init__(self) -> None:
        self._end = self.testbench.now_cycles() + self.cycles

    def remaining(self) -> int:
        return max(0, self._end - self.testbench.now_cycles())

    def expired(self) -> bool:
        return self.remaining() == 0

    def describe(self) -> str:
        return f"{self.cycles} cycles"


def random_pauses(seed: int, probability: float) -> Iterator[bool]:
    """An endless seeded pause pattern: True (stall this cycle) with `probability`."""
    rng = random.Random(seed)
    while True:
        yield rng.random() < probability


# -- the DRAM model ----------------------------------------------------------------------------
class _CheckedRamWrite(AxiRamWrite):
    """AxiRamWrite whose writes must land in a writable mapped region (else SLVERR)."""

    def __init__(self, *args, tb: "EngineTestbench", **kwargs):
        super().__init__(*args, **kwargs)
        self._testbench = tb

    async def _write(self, address, data):
        self._testbench._check_access(address, len(data), write=True)
        self.write(address, data)


class _CheckedRamRead(AxiRamRead):
    """AxiRamRead whose beats must touch a mapped region (a beat is a whole bus word, so its
    bytes past a region's unaligned end are allowed)."""

    def __init__(self, *args, tb: "EngineTestbench", **kwargs):
        super().__init__(*args, **kwargs)
        self._testbench = tb

    async def _read(self, address, length):
        self._testbench._check_access(address, length, write=False)
        return self.read(address, length)


# -- the testbench ---------------------------------------------------------------------------------
class EngineTestbench:
    """The engine top with its clock, reset, control master and DRAM (module docstring)."""

    def __init__(self, dut, config: EngineConfig, *, ram_bytes: int = DEFAULT_RAM_BYTES,
                 log_level: int = logging.WARNING):
        self.dut = dut
        self.config = config
        self.log = logging.getLogger("cocotb.hwconv.testbench")
        self.map = MemoryMap()
        self.violations: list[str] = []
        self.program: Program | None = None
        self.layout: ProgramLayout | None = None
        self._irq_enabled = False
        self._pauses: dict[str, object] = {}
        self.name = "rtl"
        self.host = EngineProtocol(self)   # the driver's protocol, with this testbench as its port

        dut.ap_rst_n.value = 0
        period_ps = 2 * max(1, round(1e6 / config.clock_mhz / 2))   # even: 50 % duty cycle
        self.clock_period_ps = period_ps
        Clock(dut.ap_clk, period_ps, unit="ps").start()

        self.control = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axi_control"), dut.ap_clk,
                                     dut.ap_rst_n, reset_active_level=False)
        self.mem = bytearray(ram_bytes)
        bus = AxiBus.from_prefix(dut, "m_axi_gmem")
        self.ram_write = _CheckedRamWrite(bus.write, dut.ap_clk, dut.ap_rst_n, False,
                                          mem=self.mem, tb=self)
        self.ram_read = _CheckedRamRead(bus.read, dut.ap_clk, dut.ap_rst_n, False,
                                        mem=self.mem, tb=self)
        self._bus_width_bytes = self.ram_read.byte_lanes
        for name in _QUIET_LOGGERS:  # the AXI models log every burst at INFO
            logging.getLogger(name % dut._name).setLevel(log_level)

    @classmethod
    def for_program(cls, dut, program: Program, **kwargs) -> "EngineTestbench":
        """A testbench whose DRAM is sized for `program` placed by `load_program`."""
        return cls(dut, program.config, ram_bytes=ram_bytes_for(place_program(program).end),
                   **kwargs)

    # -- channels, for backpressure ------------------------------------------------------------
    @property
    def ram_channels(self) -> dict[str, object]:
        return {"aw": self.ram_write.aw_channel, "w": self.ram_write.w_channel,
                "b": self.ram_write.b_channel, "ar": self.ram_read.ar_channel,
                "r": self.ram_read.r_channel}

    @property
    def control_channels(self) -> dict[str, object]:
        w, r = self.control.write_if, self.control.read_if
        return {"aw": w.aw_channel, "w": w.w_channel, "b": w.b_channel, "ar": r.ar_channel,
                "r": r.r_channel}

    def set_backpressure(self, probability: float = 0.5, *, seed: int = 0, ram: bool = True,
                         control: bool = True) -> None:
        """Random stalls on every channel (probability 0 removes them); each channel gets its
        own seeded pattern so that the channels do not stall in lockstep."""
        if not 0.0 <= probability < 1.0:
            raise ValueError(f"backpressure probability {probability} must be in [0, 1)")
        groups = ([("ram", self.ram_channels)] if ram else []) + \
                 ([("control", self.control_channels)] if control else [])
        for i, (group, channels) in enumerate(groups):
            for j, (name, ch) in enumerate(channels.items()):
                if probability == 0.0:
                    ch.clear_pause_generator()
                    ch.pause = False
                else:
                    ch.set_pause_generator(random_pauses(seed * 101 + i * 11 + j, probability))

    def hang_bus(self, enabled: bool) -> None:
        """Make the DRAM stop answering (no ready, no valid) or answer again."""
        for ch in self.ram_channels.values():
            ch.clear_pause_generator()
            ch.pause = bool(enabled)

    # -- clock and reset ------------------------------------------------------------------------
    async def cycles(self, n: int) -> None:
        await ClockCycles(self.dut.ap_clk, n)

    async def reset(self, cycles: int = 8) -> None:
        """Hard reset through ap_rst_n (synchronous, active low); the bus models reset too."""
        self.dut.ap_rst_n.value = 0
        await ClockCycles(self.dut.ap_clk, cycles)
        self.dut.ap_rst_n.value = 1
        await ClockCycles(self.dut.ap_clk, 2)
        self._irq_enabled = False

    # -- the register port (hwconv.driver.protocol) ----------------------------------------------
    async def read_reg(self, offset: int) -> int:
        """One AXI4-Lite read at byte `offset`; a response other than OKAY fails the test."""
        resp = await self.control.read(offset, REGISTER_BYTES)
        if resp.resp != _RESP_OKAY:
            raise AssertionError(f"AXI-Lite read of 0x{offset:02x} answered {resp.resp!r}")
        return int.from_bytes(resp.data, "little")

    async def write_reg(self, offset: int, value: int) -> None:
        if not 0 <= value < 1 << 32:
            raise ValueError(f"register write at 0x{offset:02x}: {value} is not a 32-bit value")
        resp = await self.control.write(offset, value.to_bytes(REGISTER_BYTES, "little"))
        if resp.resp != _RESP_OKAY:
            raise AssertionError(f"AXI-Lite write of 0x{offset:02x} answered {resp.resp!r}")
        if offset == _IRQ_ENABLE:
            self._irq_enabled = bool(value & IRQ_ENABLE_DONE)

    async def wait_irq(self, budget: float) -> bool:
        """Simulate until the irq line is high or `budget` cycles pass (only a poll period while
        the done interrupt is disabled: the line cannot rise then)."""
        cycles = max(1, int(budget)) if self._irq_enabled else min(max(1, int(budget)), _POLL_CYCLES)
        if not self.irq():
            await First(RisingEdge(self.dut.irq), ClockCycles(self.dut.ap_clk, cycles))
        return self.irq()

    def deadline(self, timeout: float) -> CycleDeadline:
        return CycleDeadline(self, int(timeout))

    def now_cycles(self) -> int:
        return get_sim_time("ps") // self.clock_period_ps

    # -- DRAM -----------------------------------------------------------------------------------
    def _check_access(self, addr: int, nbytes: int, write: bool) -> None:
        granule = 1 if write else self._bus_width_bytes
        why = self.map.check(addr, nbytes, write, granule=granule)
        if why is not None:
            msg = f"engine {'wrote' if write else 'read'} {nbytes} B at 0x{addr:x}: {why}"
            if len(self.violations) < 100:
                self.violations.append(msg)
            self.log.error(msg)
            raise AccessViolation(msg)  # the RAM model answers SLVERR

    def check_no_violations(self) -> None:
        if self.violations:
            more = f" (and {len(self.violations) - 5} more)" if len(self.violations) > 5 else ""
            raise AccessViolation("engine DRAM access outside its regions: "
                                  + "; ".join(self.violations[:5]) + more)

    def write_mem(self, addr: int, data: bytes | np.ndarray) -> None:
        data = bytes(data) if not isinstance(data, np.ndarray) else data.tobytes()
        if addr < 0 or addr + len(data) > len(self.mem):
            raise ValueError(f"write of {len(data)} B at 0x{addr:x} is outside the "
                             f"{len(self.mem)}-byte DRAM")
        self.mem[addr:addr + len(data)] = data

    def read_mem(self, addr: int, nbytes: int) -> bytes:
        if addr < 0 or addr + nbytes > len(self.mem):
            raise ValueError(f"read of {nbytes} B at 0x{addr:x} is outside the "
                             f"{len(self.mem)}-byte DRAM")
        return bytes(self.mem[addr:addr + nbytes])

    # -- programs -------------------------------------------------------------------------------
    async def load_program(self, program: Program, inputs: dict[str, np.ndarray] | None = None, *,
                           image: bytes | None = None) -> ProgramLayout:
        """Place `program` in DRAM (inputs written into its arena, the rest zero) and program the
        base/size registers. `image` replaces the device image (to run corrupted images)."""
        if program.config.config_hash != self.config.config_hash:
            raise ValueError(f"program is for engine {program.config.name} "
                             f"(hash 0x{program.config.config_hash:08x}); this testbench runs "
                             f"{self.config.name} (hash 0x{self.config.config_hash:08x})")
        layout = place_program(program)
        if image is not None:
            layout = ProgramLayout(Region("image", layout.image.base, len(image), False),
                                   layout.params, layout.arena)
            if layout.image.end > layout.params.base:
                raise ValueError("the replacement image does not fit before the params")
        if layout.end > len(self.mem):
            raise ValueError(f"program needs {layout.end} B of DRAM; this testbench has "
                             f"{len(self.mem)} (use EngineTestbench.for_program)")
        arena = np.zeros(program.arena_bytes, dtype=np.uint8)
        for name, value in (inputs or {}).items():
            t = program.tensor(name)
            if t.role != "input":
                raise ValueError(f"tensor {name!r} is a program {t.role}, not an input")
            write_tensor(arena, t.ref, np.asarray(value))
        for r in (self.layout.regions if self.layout else ()):
            self.map.remove(r.name)
        self.mem[layout.image.base:layout.end] = bytes(layout.end - layout.image.base)
        self.write_mem(layout.image.base, image if image is not None else program.device_image())
        self.write_mem(layout.params.base, program.params)
        self.write_mem(layout.arena.base, arena)
        for r in layout.regions:
            self.map.add(r)
        self.program, self.layout = program, layout

        await self.host.set_regions(layout.image.base, layout.params.base, layout.params.size,
                                    layout.arena.base, layout.arena.size)
        return layout

    def arena(self) -> bytes:
        if self.layout is None:
            raise RuntimeError("no program loaded")
        return self.read_mem(self.layout.arena.base, self.layout.arena.size)

    def read_outputs(self) -> dict[str, np.ndarray]:
        """Every output tensor of the loaded program, read from the DRAM arena."""
        if self.program is None:
            raise RuntimeError("no program loaded")
        arena = np.frombuffer(self.arena(), dtype=np.uint8)
        return {t.name: read_tensor(arena, t.ref, t.signed) for t in self.program.outputs}

    def irq(self) -> bool:
        """The interrupt line now (a clear failure if it is X/Z in a 4-state simulator)."""
        return _bit(self.dut.irq, "irq")


def _bit(signal, name: str) -> bool:
    value = signal.value
    if not value.is_resolvable:
        raise AssertionError(f"{name} is {value} (unknown): an uninitialised or undriven signal "
                             f"reaches it (4-state simulators show this; Verilator reads 0)")
    return bool(int(value))
