"""`EngineTestbench`: the system testbench of the engine top, for cocotb tests and `hwconv simulate`.

What it wraps around the generated top (``ap_clk``, ``ap_rst_n``, ``s_axi_control_*``,
``m_axi_gmem_*``, ``irq``; see hwconv/rtl/top.py):

- a clock at the config's period (rounded to an even number of picoseconds) and the active-low
  synchronous reset;
- a cocotbext-axi `AxiLiteMaster` on ``s_axi_control``; registers are read and written by their
  NAME from `hwconv.spec.registers` (``await tb.read_reg("STATUS")``), 64-bit counters as
  LO-then-HI pairs (``read_reg64("CYCLES")``);
- a DRAM model on ``m_axi_gmem``: cocotbext-axi's `AxiRamRead`/`AxiRamWrite` over one
  `bytearray`, with every engine access checked against the regions the testbench mapped
  (`hwconv.sim.layout`). An access outside them, or a write into the read-only image/params,
  is answered SLVERR and recorded; `wait_done` fails the test naming it. The engine's AXI port
  therefore cannot scribble over memory unnoticed.
- random backpressure (`set_backpressure`): seeded pause generators on all five channels of the
  DRAM model (AW/W/AR ready, R/B valid) and of the AXI-Lite master; `hang_bus` stops the DRAM
  answering altogether.

Program helpers: `load_program` places the device image, params and arena (inputs written) and
programs the base/size registers; `start` / `wait_done` (a hang fails with the engine's state,
never hangs the test) / `read_outputs` / `arena` / `counters` (total, stall and per-layer cycles
and MACs through PERF_SELECT).

All helpers are coroutines except the pure memory accessors (`arena`, `read_outputs`, `mem`),
which touch only Python memory.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, First, RisingEdge
from cocotbext.axi import AxiBus, AxiLiteBus, AxiLiteMaster
from cocotbext.axi.axi_ram import AxiRamRead, AxiRamWrite

from ..spec.memory import read_tensor, write_tensor
from ..spec.config import EngineConfig
from ..spec.program import Program
from ..spec.registers import (CONTROL_SOFT_RESET, CONTROL_START, IRQ_ENABLE_DONE, IRQ_STATUS_DONE,
                              REGISTER_BYTES, ErrorCode, reg)
from .layout import MemoryMap, ProgramLayout, Region, place_program, ram_bytes_for

__all__ = ["AccessViolation", "Counters", "EngineTestbench", "EngineHang", "LayerCounters",
           "RunStatus", "random_pauses"]

DEFAULT_RAM_BYTES = 16 << 20
DEFAULT_TIMEOUT_CYCLES = 1_000_000
_RESP_OKAY = 0
_POLL_CYCLES = 64        # STATUS poll period when the interrupt is not enabled
_QUIET_LOGGERS = ("cocotb.%s.s_axi_control", "cocotb.%s.m_axi_gmem", "cocotb.%s")


class EngineHang(AssertionError):
    """The engine did not finish a run within the allowed cycles (a test failure)."""


class AccessViolation(AssertionError):
    """The engine accessed DRAM outside the regions the testbench gave it."""


@dataclass(frozen=True)
class RunStatus:
    busy: bool
    done: bool
    error: ErrorCode | int
    error_layer: int
    layers_done: int

    @property
    def ok(self) -> bool:
        return self.done and not self.busy and self.error == ErrorCode.NONE

    def describe(self) -> str:
        err = self.error.name if isinstance(self.error, ErrorCode) else f"unknown code {self.error}"
        return (f"busy={int(self.busy)} done={int(self.done)} error={err} "
                f"error_layer={self.error_layer} layers_done={self.layers_done}")


@dataclass(frozen=True)
class LayerCounters:
    cycles: int
    macs: int


@dataclass(frozen=True)
class Counters:
    cycles: int                  # CYCLES: start to done
    stall_cycles: int            # STALL_CYCLES: datapath waiting on DRAM
    layers_done: int
    layers: tuple[LayerCounters, ...] = ()   # PERF_SELECT = 0 .. n-1

    def to_dict(self) -> dict:
        return {"cycles": self.cycles, "stall_cycles": self.stall_cycles,
                "layers_done": self.layers_done,
                "layers": [{"cycles": c.cycles, "macs": c.macs} for c in self.layers]}


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

    # -- registers ------------------------------------------------------------------------------
    async def read_reg_at(self, offset: int) -> int:
        resp = await self.control.read(offset, REGISTER_BYTES)
        if resp.resp != _RESP_OKAY:
            raise AssertionError(f"AXI-Lite read of 0x{offset:02x} answered {resp.resp!r}")
        return int.from_bytes(resp.data, "little")

    async def write_reg_at(self, offset: int, value: int) -> None:
        if not 0 <= value < 1 << 32:
            raise ValueError(f"register write at 0x{offset:02x}: {value} is not a 32-bit value")
        resp = await self.control.write(offset, value.to_bytes(REGISTER_BYTES, "little"))
        if resp.resp != _RESP_OKAY:
            raise AssertionError(f"AXI-Lite write of 0x{offset:02x} answered {resp.resp!r}")

    async def read_reg(self, name: str) -> int:
        return await self.read_reg_at(reg(name).offset)

    async def write_reg(self, name: str, value: int) -> None:
        await self.write_reg_at(reg(name).offset, value)
        if name == "IRQ_ENABLE":
            self._irq_enabled = bool(value & IRQ_ENABLE_DONE)

    async def read_reg64(self, stem: str) -> int:
        """A 64-bit register pair: LO first (it latches HI), then HI."""
        lo = await self.read_reg(f"{stem}_LO")
        return lo | await self.read_reg(f"{stem}_HI") << 32

    async def write_reg64(self, stem: str, value: int) -> None:
        await self.write_reg(f"{stem}_LO", value & 0xFFFFFFFF)
        await self.write_reg(f"{stem}_HI", value >> 32)

    async def field(self, register: str, name: str) -> int:
        lsb, width = reg(register).field(name)
        return (await self.read_reg(register) >> lsb) & ((1 << width) - 1)

    async def status(self) -> RunStatus:
        raw = await self.read_reg("STATUS")
        bit = lambda f: bool(raw >> reg("STATUS").field(f)[0] & 1)  # noqa: E731
        code = await self.read_reg("ERROR")
        try:
            error: ErrorCode | int = ErrorCode(code)
        except ValueError:
            error = code
        return RunStatus(busy=bit("busy"), done=bit("done"), error=error,
                         error_layer=await self.read_reg("ERROR_LAYER"),
                         layers_done=await self.read_reg("LAYERS_DONE"))

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

        await self.write_reg64("DESC_BASE", layout.image.base)
        await self.write_reg64("PARAMS_BASE", layout.params.base)
        await self.write_reg("PARAMS_SIZE", layout.params.size)
        await self.write_reg64("ARENA_BASE", layout.arena.base)
        await self.write_reg("ARENA_SIZE", layout.arena.size)
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

    # -- runs -------------------------------------------------------------------------------------
    async def start(self, *, irq: bool = True) -> None:
        """Clear a pending interrupt, enable (or not) the done interrupt, pulse CONTROL.start."""
        await self.write_reg("IRQ_STATUS", IRQ_STATUS_DONE)
        await self.write_reg("IRQ_ENABLE", IRQ_ENABLE_DONE if irq else 0)
        await self.write_reg("CONTROL", CONTROL_START)

    async def soft_reset(self, timeout_cycles: int = 10_000) -> RunStatus:
        """CONTROL.soft_reset, then wait until STATUS.busy clears (an engine may first drain
        its outstanding bursts); EngineHang if it stays busy."""
        await self.write_reg("CONTROL", CONTROL_SOFT_RESET)
        waited = 0
        while (st := await self.status()).busy:
            if waited >= timeout_cycles:
                raise EngineHang(f"engine still busy {timeout_cycles} cycles after "
                                 f"CONTROL.soft_reset: {st.describe()}")
            await ClockCycles(self.dut.ap_clk, _POLL_CYCLES)
            waited += _POLL_CYCLES
        return st

    def irq(self) -> bool:
        """The interrupt line now (a clear failure if it is X/Z in a 4-state simulator)."""
        return _bit(self.dut.irq, "irq")

    async def wait_done(self, timeout_cycles: int = DEFAULT_TIMEOUT_CYCLES) -> RunStatus:
        """Wait for the end of the run `start` began, then return STATUS/ERROR.

        With the interrupt enabled it waits on the irq line; without, it polls IRQ_STATUS.done
        (the pending bit is set at the end of a run whatever IRQ_ENABLE says, and `start` clears
        it, so a previous run's STATUS.done is never mistaken for this one's). Raises EngineHang
        naming the engine's state after `timeout_cycles`, and AccessViolation if the engine
        touched DRAM outside its regions."""
        clk = self.dut.ap_clk
        finished = True
        if self._irq_enabled:
            if not self.irq():
                t = await First(RisingEdge(self.dut.irq), ClockCycles(clk, timeout_cycles))
                finished = not isinstance(t, ClockCycles)
        else:
            waited = 0
            while not await self.field("IRQ_STATUS", "done"):
                if waited >= timeout_cycles:
                    finished = False
                    break
                await ClockCycles(clk, _POLL_CYCLES)
                waited += _POLL_CYCLES
        st = await self.status()
        if not finished:
            cycles = await self.read_reg64("CYCLES")
            raise EngineHang(f"engine not done after {timeout_cycles} cycles: {st.describe()}, "
                             f"CYCLES={cycles}" + (f"; DRAM violations: {self.violations[:3]}"
                                                   if self.violations else ""))
        self.check_no_violations()
        return st

    async def run(self, timeout_cycles: int = DEFAULT_TIMEOUT_CYCLES) -> RunStatus:
        await self.start()
        return await self.wait_done(timeout_cycles)

    async def counters(self, n_layers: int | None = None) -> Counters:
        """Counters of the last run; per-layer ones for layers 0..n_layers-1 (default: the
        loaded program's layers, none without a program)."""
        if n_layers is None:
            n_layers = len(self.program.layers) if self.program is not None else 0
        cycles = await self.read_reg64("CYCLES")
        stall = await self.read_reg("STALL_CYCLES")
        done = await self.read_reg("LAYERS_DONE")
        layers = []
        for i in range(n_layers):
            await self.write_reg("PERF_SELECT", i)
            layer_cycles = await self.read_reg("PERF_LAYER_CYCLES")
            layers.append(LayerCounters(layer_cycles, await self.read_reg64("PERF_LAYER_MACS")))
        return Counters(cycles, stall, done, tuple(layers))


def _bit(signal, name: str) -> bool:
    value = signal.value
    if not value.is_resolvable:
        raise AssertionError(f"{name} is {value} (unknown): an uninitialised or undriven signal "
                             f"reaches it (4-state simulators show this; Verilator reads 0)")
    return bool(int(value))
