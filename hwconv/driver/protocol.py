"""The engine's host protocol, written once as coroutines over a register port.

Everything a host does with the engine's registers lives here (hwconv.spec.registers names every
offset and bit): identify it (ID, VERSION, CONFIG_HASH), program the bases and sizes, start a run,
wait for its end, read STATUS/ERROR, soft-reset, and read the counters. Two hosts use it:

- `EngineDriver` (engine.py), the sync facade for a board, the golden register model and the
  simulation's blocking backend: its `Backend` is wrapped in `BackendPort`, whose coroutines never
  suspend, and `run_sync` drives them to the end in one step;
- the cocotb testbench (hwconv/sim/testbench.py), whose AXI4-Lite master is the port: each
  register access is a bus transaction, and waiting for done waits on the irq line in cycles.

A port has ``name``; ``async read_reg(offset) -> int``; ``async write_reg(offset, value)``;
``async wait_irq(budget) -> bool`` (wait until the interrupt line is high or `budget` runs out,
in the port's unit of time; returning False early is allowed); ``deadline(timeout) -> Deadline``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Coroutine, Protocol, TypeVar

from ..spec.program import FORMAT_VERSION
from ..spec.registers import (CONTROL_SOFT_RESET, CONTROL_START, ENGINE_ID, IRQ_ENABLE_DONE, IRQ_STATUS_DONE,
                              STATUS_BUSY, STATUS_DONE, ErrorCode, field_value, offset)

T = TypeVar("T")


class EngineTimeout(RuntimeError):
    """The run did not end before the deadline: the engine is hung or the timeout too short."""


class EngineNotFound(RuntimeError):
    """The register window does not answer like a hwconv engine (ID, VERSION, CONFIG_HASH)."""


class Deadline(Protocol):
    def remaining(self) -> float: ...

    def expired(self) -> bool: ...

    def describe(self) -> str: ...   # "10 s", "500 cycles": how long was allowed


class Port(Protocol):
    name: str

    async def read_reg(self, offset: int) -> int: ...

    async def write_reg(self, offset: int, value: int) -> None: ...

    async def wait_irq(self, budget: float) -> bool: ...

    def deadline(self, timeout: float) -> Deadline: ...


@dataclass(frozen=True)
class RunStatus:
    busy: bool
    done: bool
    error: ErrorCode | int      # an int when the ERROR register holds no known code
    error_layer: int
    layers_done: int

    @property
    def ok(self) -> bool:
        return self.done and not self.busy and self.error == ErrorCode.NONE

    @property
    def failed(self) -> bool:
        return self.error != ErrorCode.NONE

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


class EngineProtocol:
    """The host side of the register protocol over one port (module docstring)."""

    def __init__(self, port: Port):
        self.port = port

    # -- registers ------------------------------------------------------------------------------
    async def read(self, name: str) -> int:
        return await self.port.read_reg(offset(name))

    async def write(self, name: str, value: int) -> None:
        await self.port.write_reg(offset(name), value)

    async def read64(self, stem: str) -> int:
        """A 64-bit register pair: _LO first (it latches _HI), then _HI."""
        lo = await self.read(f"{stem}_LO")
        return await self.read(f"{stem}_HI") << 32 | lo

    async def write64(self, stem: str, value: int) -> None:
        await self.write(f"{stem}_LO", value & 0xFFFF_FFFF)
        await self.write(f"{stem}_HI", value >> 32)

    async def field(self, register: str, name: str) -> int:
        return field_value(register, name, await self.read(register))

    # -- identity and state ---------------------------------------------------------------------
    async def identify(self) -> dict:
        """ID, VERSION and CONFIG_HASH, checked: an EngineNotFound names what does not match."""
        name = self.port.name
        ident = await self.read("ID")
        if ident != ENGINE_ID:
            raise EngineNotFound(f"{name}: ID register reads 0x{ident:08x}, a hwconv engine "
                                 f"reads 0x{ENGINE_ID:08x} (wrong bitstream or address?)")
        version = await self.read("VERSION")
        major, minor = field_value("VERSION", "major", version), field_value("VERSION", "minor", version)
        if major != FORMAT_VERSION[0]:
            raise EngineNotFound(f"{name}: engine runs program format {major}.{minor}, this "
                                 f"driver writes {FORMAT_VERSION[0]}.{FORMAT_VERSION[1]}")
        return {"id": ident, "version": (major, minor), "config_hash": await self.read("CONFIG_HASH")}

    async def status(self) -> RunStatus:
        raw = await self.read("STATUS")
        code = await self.read("ERROR")
        try:
            error: ErrorCode | int = ErrorCode(code)
        except ValueError:
            error = code
        return RunStatus(busy=bool(raw & STATUS_BUSY), done=bool(raw & STATUS_DONE), error=error,
                         error_layer=await self.read("ERROR_LAYER"),
                         layers_done=await self.read("LAYERS_DONE"))

    # -- a run ----------------------------------------------------------------------------------
    async def set_regions(self, desc_base: int, params_base: int, params_size: int, arena_base: int,
                          arena_size: int) -> None:
        """Where the device image, the params blob and the arena are, and how large."""
        await self.write64("DESC_BASE", desc_base)
        await self.write64("PARAMS_BASE", params_base)
        await self.write("PARAMS_SIZE", params_size)
        await self.write64("ARENA_BASE", arena_base)
        await self.write("ARENA_SIZE", arena_size)

    async def start(self, *, irq: bool = True) -> None:
        """Clear a pending interrupt, enable (or not) the done interrupt, pulse CONTROL.start."""
        await self.write("IRQ_STATUS", IRQ_STATUS_DONE)
        await self.write("IRQ_ENABLE", IRQ_ENABLE_DONE if irq else 0)
        await self.write("CONTROL", CONTROL_START)

    async def wait_done(self, timeout: float) -> RunStatus:
        """Wait for the end of the run `start` began and return its status.

        It waits for IRQ_STATUS.done, the pending bit: set at the end of every run whatever
        IRQ_ENABLE says (error or not) and cleared by `start`, so a previous run's STATUS.done is
        never taken for this one's. Between reads it waits on the interrupt line. EngineTimeout
        after `timeout` (the port's unit), naming the engine's state."""
        deadline = self.port.deadline(timeout)
        while not await self.read("IRQ_STATUS") & IRQ_STATUS_DONE:
            if deadline.expired():
                st = await self.status()
                cycles = await self.read64("CYCLES")
                raise EngineTimeout(f"{self.port.name}: engine not done after {deadline.describe()}: "
                                    f"{st.describe()}, CYCLES={cycles}; soft_reset() returns it to idle")
            await self.port.wait_irq(deadline.remaining())
        return await self.status()

    async def run(self, timeout: float) -> RunStatus:
        await self.start()
        return await self.wait_done(timeout)

    async def soft_reset(self, timeout: float) -> RunStatus:
        """CONTROL.soft_reset, then wait until STATUS.busy clears (an engine may first drain its
        outstanding bursts); EngineTimeout if it stays busy. Configuration registers are kept."""
        await self.write("CONTROL", CONTROL_SOFT_RESET)
        deadline = self.port.deadline(timeout)
        while (st := await self.status()).busy:
            if deadline.expired():
                raise EngineTimeout(f"{self.port.name}: engine still busy {deadline.describe()} after "
                                    f"CONTROL.soft_reset: {st.describe()}")
            await self.port.wait_irq(deadline.remaining())
        return st

    async def counters(self, n_layers: int) -> Counters:
        """CYCLES, STALL_CYCLES, LAYERS_DONE and, through PERF_SELECT, layers 0..n_layers-1."""
        cycles = await self.read64("CYCLES")
        stall = await self.read("STALL_CYCLES")
        done = await self.read("LAYERS_DONE")
        layers = []
        for i in range(n_layers):
            await self.write("PERF_SELECT", i)
            layer_cycles = await self.read("PERF_LAYER_CYCLES")
            layers.append(LayerCounters(layer_cycles, await self.read64("PERF_LAYER_MACS")))
        return Counters(cycles, stall, done, tuple(layers))


# -- the sync side --------------------------------------------------------------------------------
POLL_S = 0.01  # longest wait between two register reads while waiting on a blocking backend


@dataclass
class WallDeadline:
    seconds: float

    def __post_init__(self) -> None:
        self._end = time.monotonic() + self.seconds

    def remaining(self) -> float:
        return max(0.0, self._end - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self._end

    def describe(self) -> str:
        return f"{self.seconds:g} s"


class BackendPort:
    """A blocking `Backend` (hwconv/driver/backends) as a port whose coroutines never suspend."""

    def __init__(self, backend):
        self.backend = backend

    @property
    def name(self) -> str:
        return self.backend.name

    async def read_reg(self, offset: int) -> int:
        return self.backend.read_reg(offset)

    async def write_reg(self, offset: int, value: int) -> None:
        self.backend.write_reg(offset, value)

    async def wait_irq(self, budget: float) -> bool:
        return self.backend.wait_irq(min(budget, POLL_S))

    def deadline(self, timeout: float) -> WallDeadline:
        return WallDeadline(timeout)


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """The result of a protocol coroutine over a BackendPort (it never suspends, so one step runs it)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("a protocol coroutine suspended on a blocking port (await outside the port?)")
