"""The backends, side by side, and the interface they share: the few register-level operations
the engine driver needs.

`EngineDriver` (hwconv/driver/engine.py) talks to the engine only through a `Backend`, so the
same driver code runs on a PYNQ board (pynq.py), against the golden register model (golden.py)
and against the cocotb testbench of the RTL (sim.py). pynq_offboard.py puts the golden model
behind pynq's own Overlay/MMIO/allocate, so the PYNQ backend is tested off the board.

Backend
-------
All methods are blocking and synchronous; the driver is plain sequential code. (A cocotb backend
runs the driver in a thread and turns each call into a simulator transaction, e.g. with
cocotb's bridge/resume.)

``config: EngineConfig``
    The engine configuration the hardware was built for (its hash is what CONFIG_HASH reads).
``clock_hz: float``
    The engine clock in Hz; the driver turns CYCLES into seconds and fps with it.
``name: str``
    Short backend name for messages and reports ("golden", "pynq", "sim").
``alloc(nbytes: int) -> Buffer``
    A new device-visible buffer of exactly ``nbytes`` bytes (``nbytes >= 1``), zero-filled on the
    host side, ``device_address`` aligned to at least ``PAGE_BYTES`` (hwconv.spec.memory) bytes and below
    ``2 ** config.addr_width``. Raises `BackendError` when memory is exhausted or nbytes is bad.
``read_reg(offset: int) -> int``
    One 32-bit AXI4-Lite read at byte ``offset`` of the register window (offsets from
    hwconv.spec.registers; a multiple of 4 below REGISTER_MAP_BYTES). Returns 0..2**32-1.
    Reads have the spec's side effects (reading a counter's _LO latches its _HI).
``write_reg(offset: int, value: int) -> None``
    One 32-bit AXI4-Lite write (``0 <= value < 2**32``, all byte strobes). Writes have the spec's
    semantics: RO ignore writes, W1C clear the bits written as 1, CONTROL bits are strobes.
``wait_irq(timeout_s: float) -> bool``
    Block until the engine's interrupt line is high (IRQ_ENABLE.done and IRQ_STATUS.done both
    set) or ``timeout_s`` wall-clock seconds pass; return whether the line is high. It does not
    clear anything: the driver clears IRQ_STATUS by writing 1. Returning False early is allowed
    (the driver re-reads STATUS and calls again until its own deadline), so a backend without an
    interrupt may simply sleep a short while and return False.
``close() -> None``
    Release everything (buffers, the overlay or the simulator). Idempotent.

Optional (check with ``getattr``/``hasattr``):

``counter_source: str``
    What CYCLES and the per-layer counters measure: "hardware" (the default), or e.g. "model:
    ideal cycles" for a backend whose counters are estimates; reports print it beside the figures.

``hang_bus(enabled: bool) -> None``
    Make device memory stop answering the engine's AXI manager port (no ready/valid, as a wedged
    interconnect): a run started while enabled never completes, so STATUS.done never rises.
    Register access keeps working; CONTROL.soft_reset returns the engine to idle.

Buffer
------
``device_address: int``  the bus address the engine uses for the buffer's first byte.
``nbytes: int``          the buffer's size in bytes.
``array: np.ndarray``    a writable uint8 1-D view of the host copy, ``array.size == nbytes``.
``flush() -> None``      make the device see the host copy (host -> device; cache flush on a board).
``invalidate() -> None`` make the host copy show what the device wrote (device -> host).
``free() -> None``       release the buffer; its address may be reused. Idempotent.

A buffer's contents are only guaranteed to move at flush/invalidate: the driver writes the
array, flushes, starts the engine, waits for done, invalidates, then reads the array.
"""

from __future__ import annotations

import abc
import time

import numpy as np

from ...spec.config import EngineConfig

class BackendError(RuntimeError):
    """A backend cannot do what was asked (no memory, closed, bad register offset, no board)."""


class Buffer(abc.ABC):
    """A device-visible buffer; see the module docstring for the contract."""

    device_address: int
    nbytes: int
    array: np.ndarray

    @abc.abstractmethod
    def flush(self) -> None: ...

    @abc.abstractmethod
    def invalidate(self) -> None: ...

    @abc.abstractmethod
    def free(self) -> None: ...

    def __repr__(self) -> str:
        return f"<{type(self).__name__} 0x{self.device_address:x} {self.nbytes} B>"


class Backend(abc.ABC):
    """Register-level access to one engine; see the module docstring for the contract."""

    name: str = "backend"
    counter_source: str = "hardware"
    config: EngineConfig
    clock_hz: float

    @abc.abstractmethod
    def alloc(self, nbytes: int) -> Buffer: ...

    @abc.abstractmethod
    def read_reg(self, offset: int) -> int: ...

    @abc.abstractmethod
    def write_reg(self, offset: int, value: int) -> None: ...

    def wait_irq(self, timeout_s: float) -> bool:
        """Default for backends without an interrupt: a short sleep, then 'not yet'."""
        time.sleep(max(0.0, min(timeout_s, 1e-3)))
        return False

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_alloc_size(nbytes: int) -> int:
    """Shared argument check for alloc(): a positive integer byte count."""
    if isinstance(nbytes, bool) or not isinstance(nbytes, (int, np.integer)) or nbytes < 1:
        raise BackendError(f"alloc: nbytes must be a positive integer, got {nbytes!r}")
    return int(nbytes)


def check_reg_access(offset: int, value: int | None = None, *, window: int) -> None:
    """Shared argument check for read_reg/write_reg: aligned offset inside the window, 32-bit value."""
    if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or offset < 0 \
            or offset % 4 or offset >= window:
        raise BackendError(f"register offset {offset!r}: must be a multiple of 4 in [0, 0x{window:x})")
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))
                              or not 0 <= value < 1 << 32):
        raise BackendError(f"register write at 0x{offset:02x}: value {value!r} is not a 32-bit unsigned integer")
