"""`SimBackend`: the driver's register-level backend (hwconv/driver/backends) on the RTL testbench.

The driver is plain blocking code; the simulation is cocotb coroutines. cocotb 2 joins them with
`cocotb.task.bridge` (run a blocking function in a thread, awaited from a test) and
`cocotb.task.resume` (from that thread, run a coroutine in the simulation and block until it
returns). Each register access becomes one AXI4-Lite transaction of the testbench's master;
`wait_irq` simulates until the interrupt line rises or the wall-clock budget is spent.
`run_blocking` does the bridging:

    @cocotb.test()
    async def driver_on_rtl(dut):
        tb = EngineTestbench(dut, config)
        await tb.reset()
        await run_blocking(tb, lambda backend: check_identity(EngineDriver(backend)))

Buffers live in the testbench's DRAM (first fit, 4 KiB aligned, from `layout.RAM_BASE`) and each
one is a mapped region, so the engine may touch exactly the buffers the driver allocated. They
are deliberately NOT coherent: the host copy (`array`) reaches DRAM only at `flush` and DRAM
reaches it only at `invalidate`, the worst a board's caches can do, so a driver that forgets one
fails here rather than on the board.

While the driver thread runs, the simulation is paused (cocotb only resumes it when the thread
blocks in a `resume` call or ends), so touching the testbench's memory from the thread is safe.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, TypeVar

import numpy as np

from cocotb.task import bridge, resume
from cocotb.triggers import ClockCycles, First, RisingEdge

from . import (Backend, BackendError, Buffer, check_alloc_size,
                              check_reg_access)
from ...spec.memory import PAGE_BYTES
from ...spec.registers import REGISTER_MAP_BYTES
from ...sim.testbench import EngineTestbench
from ...sim.layout import RAM_BASE, Region, align_up

__all__ = ["SimBackend", "SimBuffer", "run_blocking"]

T = TypeVar("T")
IRQ_CHUNK_CYCLES = 2000   # cycles simulated between wall-clock checks in wait_irq


class SimBuffer(Buffer):
    """A buffer in the testbench's DRAM with a separate host copy (see the module docstring)."""

    def __init__(self, backend: "SimBackend", device_address: int, nbytes: int):
        self._backend = backend
        self.device_address = device_address
        self.nbytes = nbytes
        self.array = np.zeros(nbytes, dtype=np.uint8)
        self._freed = False

    def _live(self, what: str) -> None:
        if self._freed:
            raise BackendError(f"{what} of a freed buffer at 0x{self.device_address:x}")
        self._backend._live(what)

    def flush(self) -> None:
        self._live("flush")
        self._backend.testbench.write_mem(self.device_address, self.array)

    def invalidate(self) -> None:
        self._live("invalidate")
        raw = self._backend.testbench.read_mem(self.device_address, self.nbytes)
        self.array[:] = np.frombuffer(raw, dtype=np.uint8)

    def free(self) -> None:
        if not self._freed:
            self._freed = True
            self._backend._release(self)


class SimBackend(Backend):
    """Backend over an `EngineTestbench`; call its methods from a thread started by `run_blocking`
    (or `cocotb.task.bridge`). `irq_chunk_cycles` sets how often `wait_irq` looks at the clock."""

    name = "sim"

    def __init__(self, tb: EngineTestbench, *, irq_chunk_cycles: int = IRQ_CHUNK_CYCLES,
                 heap_base: int = RAM_BASE):
        self.testbench = tb
        self.config = tb.config
        self.clock_hz = tb.config.clock_mhz * 1e6
        self.counter_source = "hardware (RTL simulation)"
        self._chunk = irq_chunk_cycles
        self._heap = (align_up(heap_base, PAGE_BYTES), len(tb.mem))
        self._buffers: list[SimBuffer] = []  # sorted by address
        self._closed = False

    # -- memory ----------------------------------------------------------------------------------
    def _live(self, what: str) -> None:
        if self._closed:
            raise BackendError(f"sim backend: {what} after close()")

    def alloc(self, nbytes: int) -> SimBuffer:
        self._live("alloc")
        nbytes = check_alloc_size(nbytes)
        addr = self._heap[0]
        index = 0
        for index, b in enumerate(self._buffers):
            if addr + nbytes <= b.device_address:
                break
            addr = align_up(b.device_address + b.nbytes, PAGE_BYTES)
        else:
            index = len(self._buffers)
        limit = min(self._heap[1], 1 << self.config.addr_width)
        if addr + nbytes > limit:
            used = sum(b.nbytes for b in self._buffers)
            raise BackendError(f"sim backend: cannot allocate {nbytes} B: {used} B of the "
                               f"{limit - self._heap[0]}-byte simulated DRAM are in use in "
                               f"{len(self._buffers)} buffer(s) (size the testbench's ram_bytes)")
        buf = SimBuffer(self, addr, nbytes)
        self._buffers.insert(index, buf)
        self.testbench.write_mem(addr, bytes(nbytes))  # fresh memory, whatever a freed buffer left
        self.testbench.map.add(Region(_region_name(addr), addr, nbytes))
        return buf

    def _release(self, buf: SimBuffer) -> None:
        self._buffers.remove(buf)
        self.testbench.map.remove(_region_name(buf.device_address))

    # -- registers -------------------------------------------------------------------------------
    def read_reg(self, offset: int) -> int:
        self._live("read_reg")
        check_reg_access(offset, window=REGISTER_MAP_BYTES)
        return _in_sim(self.testbench.read_reg, int(offset))

    def write_reg(self, offset: int, value: int) -> None:
        self._live("write_reg")
        check_reg_access(offset, value, window=REGISTER_MAP_BYTES)
        _in_sim(self.testbench.write_reg, int(offset), int(value))

    def wait_irq(self, timeout_s: float) -> bool:
        """Simulate until the irq line is high or `timeout_s` wall-clock seconds have passed
        (checked every `irq_chunk_cycles` cycles)."""
        self._live("wait_irq")
        deadline = time.monotonic() + max(0.0, timeout_s)
        while True:
            if _in_sim(self._irq_within, self._chunk):
                return True
            if time.monotonic() >= deadline:
                return False

    async def _irq_within(self, cycles: int) -> bool:
        if not self.testbench.irq():
            await First(RisingEdge(self.testbench.dut.irq), ClockCycles(self.testbench.dut.ap_clk, cycles))
        return self.testbench.irq()

    # -- test hooks ------------------------------------------------------------------------------
    def hang_bus(self, enabled: bool) -> None:
        """The DRAM stops answering the engine (no ready/valid) until called with False."""
        self._live("hang_bus")
        self.testbench.hang_bus(enabled)

    def close(self) -> None:
        if self._closed:
            return
        for buf in list(self._buffers):
            buf.free()
        self._closed = True


def _region_name(addr: int) -> str:
    return f"buffer@0x{addr:x}"


def _in_sim(coro_fn: Callable[..., object], *args):
    """Run a testbench coroutine from the driver thread and return its result."""
    # cocotb's scheduler (and every coroutine) runs on the main thread; only a bridged thread
    # may block on it. Checked first: resume() from the main thread would leave a coroutine
    # object never awaited and a less helpful message.
    if threading.current_thread() is threading.main_thread():
        raise BackendError("SimBackend methods block on the simulation: call them from code "
                           "started with hwconv.driver.backends.sim.run_blocking (cocotb.task.bridge), "
                           "not from a coroutine")
    return resume(coro_fn)(*args)


async def run_blocking(tb: EngineTestbench, fn: Callable[[SimBackend], T], **backend_args) -> T:
    """Run blocking `fn(backend)` (driver code) against the testbench; the backend is closed after."""
    backend = SimBackend(tb, **backend_args)

    def body() -> T:
        try:
            return fn(backend)
        finally:
            backend.close()

    return await bridge(body)()
