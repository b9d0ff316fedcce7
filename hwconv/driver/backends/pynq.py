"""PYNQ backend: the engine IP of a loaded overlay, through pynq's MMIO and allocate.

    from hwconv.driver.backends.pynq import open_engine
    engine = open_engine("bitfile/hwconv_ultra96v2_w4a8_16x16_250mhz.bit")   # an EngineDriver
    engine.load("tiny_w4a8_16x16.hwc")
    print(engine.detect(image)["boxes"])

`open_engine` loads the overlay (the .hwh must sit beside the .bit, as PYNQ requires) and finds
the IP whose VLNV is hwconv.spec.ENGINE_VLNV; PYNQ builds it as an `EngineIP` (a DefaultIP bound
by that VLNV), which owns the EngineDriver that runs programs on it (`ip.driver`, what
open_engine returns). Registers go through the IP's MMIO, buffers are `pynq.allocate` arrays
(physically contiguous, cache-flushed on flush()). The backend waits for done by polling STATUS
(1 ms sleeps): a frame takes milliseconds, and polling needs no interrupt controller in the
block design. The clock is the PL clock 0 as the PS reports it (pynq.Clocks.fclk0_mhz).

The engine config is the one given, else engine.json/engine.toml beside the bitstream or in the
folder above it (a deploy folder has engine.json), else the loaded program's, once CONFIG_HASH
has confirmed it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...spec.config import EngineConfig
from ...spec.registers import ENGINE_VLNV, REGISTER_MAP_BYTES
from ..engine import EngineDriver
from . import Backend, BackendError, Buffer, check_alloc_size, check_reg_access

try:  # on a board (or wherever pynq is installed) the engine IP binds by VLNV
    from pynq import DefaultIP
except ImportError:  # pynq is optional: the other backends work without it
    DefaultIP = None


class PynqBuffer(Buffer):
    """A pynq.allocate array behind the Buffer interface."""

    def __init__(self, array):
        self.array = array  # a pynq PynqBuffer: an ndarray with device_address, flush, invalidate
        self.nbytes = int(array.nbytes)
        self.device_address = int(array.device_address)
        self._freed = False

    def flush(self) -> None:
        self.array.flush()

    def invalidate(self) -> None:
        self.array.invalidate()

    def free(self) -> None:
        if not self._freed:
            self._freed = True
            self.array.freebuffer()


class PynqBackend(Backend):
    name = "pynq"

    def __init__(self, mmio, device, *, config: EngineConfig | None = None, clock_hz: float | None = None,
                 ip=None):
        self.mmio, self.device = mmio, device
        self.ip = ip  # the EngineIP (pynq.DefaultIP) whose MMIO this is, when PYNQ built one
        self.config = config
        self._clock_hz = clock_hz
        self._buffers: list[PynqBuffer] = []
        self.overlay = None  # kept alive with the backend when open_engine made it

    @classmethod
    def for_ip(cls, ip) -> "PynqBackend":
        """The backend of a DefaultIP that PYNQ instantiated (uses its mmio and device)."""
        return cls(ip.mmio, ip.device, ip=ip)

    @property
    def clock_hz(self) -> float:
        if self._clock_hz is None:
            try:
                from pynq import Clocks

                Clocks.set_device(self.device)
                self._clock_hz = float(Clocks.fclk0_mhz) * 1e6
            except Exception as exc:  # no PS clock registers to read: fall back on the config's clock
                if self.config is None:
                    raise BackendError(f"cannot read the PL clock ({exc}) and no engine config is known") from None
                self._clock_hz = self.config.clock_mhz * 1e6
        return self._clock_hz

    def alloc(self, nbytes: int) -> Buffer:
        from pynq import allocate

        n = check_alloc_size(nbytes)
        arr = allocate((n,), dtype=np.uint8, target=self.device)
        arr[:] = 0
        buf = PynqBuffer(arr)
        self._buffers.append(buf)
        return buf

    def read_reg(self, offset: int) -> int:
        check_reg_access(offset, window=REGISTER_MAP_BYTES)
        return int(self.mmio.read(offset)) & 0xFFFF_FFFF

    def write_reg(self, offset: int, value: int) -> None:
        check_reg_access(offset, value, window=REGISTER_MAP_BYTES)
        self.mmio.write(offset, int(value))

    def close(self) -> None:
        for b in self._buffers:
            b.free()
        self._buffers.clear()


if DefaultIP is not None:
    class EngineIP(DefaultIP):
        """The engine in an overlay: PYNQ builds one per instance whose VLNV is ENGINE_VLNV; it
        owns the EngineDriver (`driver`) that runs programs through its MMIO and pynq.allocate."""

        bindto = [ENGINE_VLNV]

        def __init__(self, description: dict):
            super().__init__(description)
            self.driver = EngineDriver(PynqBackend.for_ip(self))


def find_engine_ips(ip_dict: dict) -> list[str]:
    """Names (hierarchical paths) of every engine instance in an overlay's ip_dict."""
    return sorted(name for name, d in ip_dict.items() if d.get("type") == ENGINE_VLNV)


def open_engine(bitfile: str | Path, *, config: EngineConfig | None = None, download: bool = True,
                device=None, ip_name: str | None = None):
    """Load the overlay and return its engine as an EngineDriver (backend: PynqBackend)."""
    import pynq

    bitfile = Path(bitfile).resolve()
    if not bitfile.is_file():
        raise BackendError(f"{bitfile}: no such bitstream (hwconv build writes <stem>.bit and <stem>.hwh)")
    if not bitfile.with_suffix(".hwh").is_file():
        raise BackendError(f"{bitfile.with_suffix('.hwh')}: PYNQ needs the .hwh beside the .bit")
    overlay = pynq.Overlay(str(bitfile), download=download, device=device)
    names = find_engine_ips(overlay.ip_dict)
    if not names:
        raise BackendError(f"{bitfile.name}: no IP of type {ENGINE_VLNV} in the .hwh; IPs: {sorted(overlay.ip_dict)}")
    name = ip_name or names[0]
    if name not in names:
        raise BackendError(f"{bitfile.name}: no engine named {name!r}; engines: {names}")
    ip = overlay
    for part in name.split("/"):
        ip = getattr(ip, part)
    if not isinstance(ip, EngineIP):
        raise BackendError(f"{name}: PYNQ bound {type(ip).__name__}, not EngineIP (VLNV {ENGINE_VLNV})")
    backend = ip.driver.backend
    backend.overlay = overlay
    for name in ("engine.json", "engine.toml"):  # beside the bitstream, or in the deploy folder above it
        for folder in (bitfile.parent, bitfile.parent.parent):
            if config is None and (folder / name).is_file():
                config = EngineConfig.load(folder / name)
    backend.config = config
    return ip.driver
