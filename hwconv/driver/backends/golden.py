"""Golden backend: a register-level model of the engine that runs the golden model on start.

What it models, so the driver sees what it would on hardware:

- device memory: each `alloc` gives a region with a bus address (bump allocator, page aligned,
  from DEVICE_MEMORY_BASE) and two copies, host and device; only flush/invalidate move bytes
  between them, so a driver that forgets one reads stale data here as it would on a board;
- the register file of hwconv.spec.registers: RO registers ignore writes, W1C clears the bits
  written as 1, CONTROL bits are strobes that read as 0, reading a counter's _LO latches its _HI,
  offsets past the last register read as 0;
- a run: CONTROL.start while idle fetches the device image at DESC_BASE, the params blob at
  [PARAMS_BASE, +PARAMS_SIZE) and the arena at [ARENA_BASE, +ARENA_SIZE) from device memory and
  runs `hwconv.golden.execute` on them. An address range not inside one allocated buffer is an
  AXI_ERROR (a DECERR on hardware). The run ends with STATUS.done (and error when it failed),
  IRQ_STATUS.done, ERROR/ERROR_LAYER/LAYERS_DONE filled in;
- counters are MODEL figures: per-layer cycles are the ideal cycles of hwconv.compiler.cost
  (MACs over the PE array, no memory stalls), CYCLES their sum, STALL_CYCLES 0;
- `hang_bus(True)`: memory stops answering, so a started run stays busy until CONTROL.soft_reset.

The model runs the program synchronously inside the write that sets CONTROL.start.
"""

from __future__ import annotations

import numpy as np

from ...compiler.cost import ideal_cycles, layer_macs
from ...golden.engine import execute
from ...spec.config import EngineConfig
from ...spec.isa import LayerDescriptor
from ...spec.memory import PAGE_BYTES
from ...spec.program import VERSION_WORD
from ...spec.registers import (CONTROL_SOFT_RESET, CONTROL_START, ENGINE_ID, IRQ_ENABLE_DONE, IRQ_STATUS_DONE,
                              REGISTER_MAP_BYTES, REGISTERS, STATUS_BUSY, STATUS_DONE, STATUS_ERROR, Access,
                              ErrorCode)
from . import Backend, BackendError, Buffer, check_alloc_size, check_reg_access

DEVICE_MEMORY_BASE = 0x1000_0000  # where the model's buffers start (inside Zynq DDR, like CMA)
MASK32 = 0xFFFF_FFFF


class DeviceMemory:
    """Device-side bytes of every allocated buffer, addressed by bus address."""

    def __init__(self, base: int = DEVICE_MEMORY_BASE, limit: int = 1 << 32):
        self._next = base
        self._limit = limit
        self.regions: dict[int, np.ndarray] = {}  # bus address -> device-side bytes

    def allocate(self, nbytes: int) -> int:
        addr = self._next
        if addr + nbytes > self._limit:
            raise BackendError(f"device memory exhausted: {nbytes} bytes at 0x{addr:x} pass 0x{self._limit:x}")
        self.regions[addr] = np.zeros(nbytes, np.uint8)
        self._next = addr + -(-nbytes // PAGE_BYTES) * PAGE_BYTES
        return addr

    def release(self, addr: int) -> None:
        self.regions.pop(addr, None)

    def window(self, addr: int, nbytes: int | None) -> np.ndarray | None:
        """A writable view of [addr, addr + nbytes) inside one region (to its end when nbytes is
        None), or None when the range is not all inside one allocated buffer (a bus error)."""
        for base, mem in self.regions.items():
            if base <= addr <= base + mem.size:
                off = addr - base
                end = mem.size if nbytes is None else off + nbytes
                if end > mem.size or (nbytes is None and off == mem.size):
                    return None
                return mem[off:end]
        return None


class GoldenBuffer(Buffer):
    def __init__(self, memory: DeviceMemory, nbytes: int):
        self._memory = memory
        self.nbytes = nbytes
        self.device_address = memory.allocate(nbytes)
        self.array = np.zeros(nbytes, np.uint8)
        self._freed = False

    def _device(self) -> np.ndarray:
        if self._freed:
            raise BackendError(f"buffer at 0x{self.device_address:x} was freed")
        return self._memory.regions[self.device_address]

    def flush(self) -> None:
        self._device()[:] = self.array

    def invalidate(self) -> None:
        self.array[:] = self._device()

    def free(self) -> None:
        if not self._freed:
            self._freed = True
            self._memory.release(self.device_address)


class EngineModel:
    """The engine's register file and run behaviour over a DeviceMemory (no host-side buffers)."""

    def __init__(self, config: EngineConfig, memory: DeviceMemory):
        self.config = config
        self.memory = memory
        self.bus_hung = False
        self.stored = {r.name: 0 for r in REGISTERS if r.access in (Access.RW, Access.W1C)}
        self._layer_cycles: list[int] = []
        self._layer_macs: list[int] = []
        self._latched: dict[str, int] = {}  # _HI words latched by the last _LO read
        self._clear_run_state()
        self.runs = 0

    # -- register access -----------------------------------------------------------------------
    def read(self, offset: int) -> int:
        check_reg_access(offset, window=REGISTER_MAP_BYTES)
        r = next((r for r in REGISTERS if r.offset == offset), None)
        if r is None or r.access == Access.WO:
            return 0
        if r.access in (Access.RW, Access.W1C):
            return self.stored[r.name]
        if r.name.endswith("_HI"):
            return self._latched.get(r.name, 0)
        value = self._ro_value(r.name)
        if r.name.endswith("_LO"):
            hi = r.name[:-3] + "_HI"
            self._latched[hi] = (value >> 32) & MASK32
        return value & MASK32

    def write(self, offset: int, value: int) -> None:
        check_reg_access(offset, value, window=REGISTER_MAP_BYTES)
        r = next((r for r in REGISTERS if r.offset == offset), None)
        if r is None or r.access == Access.RO:
            return
        if r.access == Access.RW:
            self.stored[r.name] = value
        elif r.access == Access.W1C:
            self.stored[r.name] &= ~value & MASK32
        else:  # CONTROL strobes: soft reset wins over a start in the same write
            if value & CONTROL_SOFT_RESET:
                self._clear_run_state()
            elif value & CONTROL_START and not self.status & STATUS_BUSY:
                self._start()

    @property
    def irq(self) -> bool:
        return bool(self.stored["IRQ_STATUS"] & IRQ_STATUS_DONE and self.stored["IRQ_ENABLE"] & IRQ_ENABLE_DONE)

    def _ro_value(self, name: str) -> int:
        if name == "ID":
            return ENGINE_ID
        if name == "VERSION":
            return VERSION_WORD
        if name == "CONFIG_HASH":
            return self.config.config_hash
        if name == "STATUS":
            return self.status
        if name == "ERROR":
            return int(self.error)
        if name == "ERROR_LAYER":
            return self.error_layer
        if name == "LAYERS_DONE":
            return self.layers_done
        if name == "CYCLES_LO":
            return sum(self._layer_cycles)
        if name == "STALL_CYCLES":
            return 0  # the model has no memory system to wait on
        sel = self.stored["PERF_SELECT"]
        inside = sel < len(self._layer_cycles)
        if name == "PERF_LAYER_CYCLES":
            return min(self._layer_cycles[sel], MASK32) if inside else 0
        if name == "PERF_LAYER_MACS_LO":
            return self._layer_macs[sel] if inside else 0
        raise AssertionError(f"register {name} has no model")  # every RO register is listed above

    # -- runs -----------------------------------------------------------------------------------
    def _clear_run_state(self) -> None:
        self.status = 0
        self.error = ErrorCode.NONE
        self.error_layer = 0
        self.layers_done = 0
        self._layer_cycles, self._layer_macs = [], []

    def _base(self, name: str) -> int:
        return self.stored[f"{name}_HI"] << 32 | self.stored[f"{name}_LO"]

    def _stop(self, code: ErrorCode, layer: int) -> None:
        self.error, self.error_layer = code, layer
        self.status = STATUS_DONE | STATUS_ERROR
        self.stored["IRQ_STATUS"] |= IRQ_STATUS_DONE

    def _start(self) -> None:
        self._clear_run_state()
        self.runs += 1
        self.status = STATUS_BUSY
        if self.bus_hung:
            return  # the first descriptor fetch never returns: busy until soft reset
        image = self.memory.window(self._base("DESC_BASE"), None)
        params = self.memory.window(self._base("PARAMS_BASE"), self.stored["PARAMS_SIZE"])
        arena = self.memory.window(self._base("ARENA_BASE"), self.stored["ARENA_SIZE"])
        if image is None or params is None or arena is None:
            return self._stop(ErrorCode.AXI_ERROR, 0)
        image_bytes = image.tobytes()

        def count(i: int, d: LayerDescriptor, _y: np.ndarray) -> None:
            self._layer_cycles.append(ideal_cycles(d, self.config.pe_in, self.config.pe_out))
            self._layer_macs.append(layer_macs(d))

        res = execute(self.config, image_bytes, params.tobytes(), arena, on_layer=count)
        self.layers_done = res.layers_done
        if res.error:
            return self._stop(res.error, res.error_layer)
        self.status = STATUS_DONE
        self.stored["IRQ_STATUS"] |= IRQ_STATUS_DONE


def _figure_clock_hz(config: EngineConfig) -> float:
    """min(board clock, estimated Fmax) on the host (hwconv.rtl.clock); the board package carries
    no timing data, so there the engine config's clock stands (the PYNQ backend reads the real one)."""
    try:
        from ...rtl.clock import clock_for
    except ImportError:
        return config.clock_mhz * 1e6
    return clock_for(config).mhz * 1e6


class GoldenBackend(Backend):
    """The golden register model behind the Backend interface (no hardware, numpy only)."""

    name = "golden"
    counter_source = "model: ideal cycles (hwconv.compiler.cost), no memory stalls"

    def __init__(self, config: EngineConfig | None = None, *, clock_hz: float | None = None):
        self.config = config or EngineConfig()
        self.clock_hz = float(clock_hz if clock_hz is not None else _figure_clock_hz(self.config))
        self.memory = DeviceMemory()
        self.model = EngineModel(self.config, self.memory)
        self._buffers: list[GoldenBuffer] = []
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise BackendError("golden backend is closed")

    def alloc(self, nbytes: int) -> Buffer:
        self._check_open()
        buf = GoldenBuffer(self.memory, check_alloc_size(nbytes))
        self._buffers.append(buf)
        return buf

    def read_reg(self, offset: int) -> int:
        self._check_open()
        return self.model.read(offset)

    def write_reg(self, offset: int, value: int) -> None:
        self._check_open()
        self.model.write(offset, value)

    def wait_irq(self, timeout_s: float) -> bool:
        if self.model.irq:
            return True
        return super().wait_irq(timeout_s)  # a run never finishes later in this model: short sleep

    def hang_bus(self, enabled: bool) -> None:
        self.model.bus_hung = bool(enabled)

    def close(self) -> None:
        if not self._closed:
            for b in self._buffers:
                b.free()
            self._buffers.clear()
            self._closed = True

