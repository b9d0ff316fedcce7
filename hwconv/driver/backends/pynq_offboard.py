"""An off-board PYNQ device: pynq's Overlay, .hwh parsing, DefaultIP binding, MMIO and allocate
run for real; the programmable logic behind them is the golden register model.

`GoldenPynqDevice` is a `pynq.Device` subclass (the same extension point PYNQ's own Embedded and
Remote devices use). It declares the REGISTER_RW capability, so pynq's MMIO sends every register
access through `read_registers`/`write_registers`: reads keep their side effects (W1C, _LO
latching). Addresses inside an engine's window (from the .hwh) reach an EngineModel; the PS clock
registers that pynq.Clocks programs on download (Zynq UltraScale+ CRL_APB/CRF_APB) are a plain
register file preset like an Ultra96's (IOPLL 1500 MHz); anything else is a bus error.
`allocate` gives pynq PynqBuffers whose flush/invalidate copy between the host array and the
model's device memory, and whose freebuffer returns the region (pynq's return_pointer protocol).

`write_minimal_hwh` writes the smallest .hwh that pynq 4.0 (pynqmetadata's HwhFrontend and
RuntimeMetadataParser) turns into an ip_dict entry for the engine. What it needs:

- EDKSYSTEM root with SYSTEMINFO (NAME, ARCH, DEVICE), EXTERNALPORTS and EXTERNALINTERFACES;
- a PS MODULE (MODTYPE zynq_ultra_ps_e, IS_PL FALSE) with the clock PARAMETERs PYNQ reads for
  PL clocks 0-3: PSU__FPGA_PL<i>_ENABLE, PSU__CRL_APB__PL<i>_REF_CTRL__{SRCSEL,DIVISOR0,DIVISOR1,
  ACT_FREQMHZ}; a MASTER BUSINTERFACE (VLNV ...:aximm:1.0) M_AXI_HPM0_FPD; a MEMORYMAP whose
  MEMRANGE (MEMTYPE REGISTER, BASEVALUE/HIGHVALUE, MASTERBUSINTERFACE, INSTANCE,
  SLAVEBUSINTERFACE) maps the engine's register window;
- the engine MODULE: VLNV = ENGINE_VLNV (what the driver binds to), a SLAVE aximm BUSINTERFACE
  s_axi_control, and an ADDRESSBLOCK of the spec's registers (so DefaultIP.register_map works).

A BUSINTERFACE's PORTMAPs must name PORTs of its module; this file has none (no signal-level
connectivity is needed to address an IP), which pynq accepts.
"""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np
import pynq
from pynq.buffer import PynqBuffer

from ...fileio import atomic_write_text
from ...spec.config import EngineConfig
from ...spec.registers import ENGINE_VLNV, REGISTER_MAP_BYTES, REGISTERS, Access
from .golden import DeviceMemory, EngineModel

ENGINE_BASE = 0xA000_0000   # first address of M_AXI_HPM0_FPD on Zynq UltraScale+
ENGINE_RANGE = 0x1_0000     # Vivado's smallest AXI4-Lite window, 64 KiB
CRL_APB, CRF_APB, CLOCK_WINDOW = 0xFF5E_0000, 0xFD1A_0000, 0x100
IOPLL_CTRL = 0x20           # CRL_APB: FBDIV [14:8], DIV2 [16]; 33.333 MHz * 90 / 2 = 1500 MHz
_ACCESS = {Access.RO: "read-only", Access.RW: "read-write", Access.W1C: "read-write", Access.WO: "write-only"}


def _attrs(**kw) -> str:
    return " ".join(f"{k}={quoteattr(str(v))}" for k, v in kw.items())


def write_minimal_hwh(path: str | Path, *, instance: str = "hwconv_engine_0", base: int = ENGINE_BASE,
                      pl0_mhz: float = 250.0, design: str = "hwconv_offboard") -> Path:
    """A minimal Zynq UltraScale+ .hwh with one engine at `base` (see the module docstring)."""
    ps_params = []
    for i in range(4):
        on = i == 0
        ps_params += [("PSU__FPGA_PL%d_ENABLE" % i, int(on)), (f"PSU__CRL_APB__PL{i}_REF_CTRL__SRCSEL", "IOPLL"),
                      (f"PSU__CRL_APB__PL{i}_REF_CTRL__DIVISOR0", 6 if on else 15),
                      (f"PSU__CRL_APB__PL{i}_REF_CTRL__DIVISOR1", 1),
                      (f"PSU__CRL_APB__PL{i}_REF_CTRL__ACT_FREQMHZ", pl0_mhz if on else 100.0)]
    params = "\n".join(f"        <PARAMETER {_attrs(NAME=n, VALUE=v)}/>" for n, v in ps_params)
    regs = []
    for r in REGISTERS:
        fields = "".join(
            f'<FIELD NAME="{f}"><PROPERTY NAME="BIT_OFFSET" VALUE="{lsb}"/>'
            f'<PROPERTY NAME="BIT_WIDTH" VALUE="{w}"/></FIELD>' for f, lsb, w in r.bits)
        regs.append(
            f'          <REGISTER NAME="{r.name}"><PROPERTY NAME="DESCRIPTION" VALUE={quoteattr(r.doc)}/>'
            f'<PROPERTY NAME="ADDRESS_OFFSET" VALUE="0x{r.offset:x}"/><PROPERTY NAME="SIZE" VALUE="32"/>'
            f'<PROPERTY NAME="ACCESS" VALUE="{_ACCESS[r.access]}"/><PROPERTY NAME="IS_ENABLED" VALUE="true"/>'
            f'<FIELDS>{fields}</FIELDS></REGISTER>')
    aximm = "xilinx.com:interface:aximm:1.0"
    text = f"""<?xml version="1.0" encoding="UTF-8" standalone="no" ?>
<EDKSYSTEM EDWVERSION="1.2" TIMESTAMP="hwconv off-board test" VIVADOVERSION="2023.1">
  <SYSTEMINFO ARCH="zynquplus" DEVICE="xczu3eg" NAME="{design}" PACKAGE="sbva484" SPEEDGRADE="-1"/>
  <EXTERNALPORTS/>
  <EXTERNALINTERFACES/>
  <MODULES>
    <MODULE {_attrs(FULLNAME="/zynq_ultra_ps_e_0", INSTANCE="zynq_ultra_ps_e_0", IS_PL="FALSE",
                    MODTYPE="zynq_ultra_ps_e", VLNV="xilinx.com:ip:zynq_ultra_ps_e:3.5")}>
      <PARAMETERS>
{params}
      </PARAMETERS>
      <MEMORYMAP>
        <MEMRANGE {_attrs(ADDRESSBLOCK="reg0", BASENAME="C_BASEADDR", BASEVALUE=f"0x{base:08X}",
                          HIGHNAME="C_HIGHADDR", HIGHVALUE=f"0x{base + ENGINE_RANGE - 1:08X}", INSTANCE=instance,
                          IS_DATA="TRUE", IS_INSTRUCTION="TRUE", MASTERBUSINTERFACE="M_AXI_HPM0_FPD",
                          MEMTYPE="REGISTER", SLAVEBUSINTERFACE="s_axi_control")}/>
      </MEMORYMAP>
      <PORTS/>
      <BUSINTERFACES>
        <BUSINTERFACE {_attrs(BUSNAME="ps_to_engine", NAME="M_AXI_HPM0_FPD", TYPE="MASTER", VLNV=aximm)}/>
      </BUSINTERFACES>
    </MODULE>
    <MODULE {_attrs(FULLNAME=f"/{instance}", INSTANCE=instance, IPTYPE="PERIPHERAL", IS_ENABLE="1",
                    MODCLASS="PERIPHERAL", MODTYPE="hwconv_engine", VLNV=ENGINE_VLNV)}>
      <ADDRESSBLOCKS>
        <ADDRESSBLOCK {_attrs(ACCESS="read-write", INTERFACE="s_axi_control", NAME="reg0",
                              RANGE=ENGINE_RANGE, USAGE="register")}>
          <REGISTERS>
{chr(10).join(regs)}
          </REGISTERS>
        </ADDRESSBLOCK>
      </ADDRESSBLOCKS>
      <PORTS/>
      <BUSINTERFACES>
        <BUSINTERFACE {_attrs(BUSNAME="ps_to_engine", NAME="s_axi_control", TYPE="SLAVE", VLNV=aximm)}/>
      </BUSINTERFACES>
    </MODULE>
  </MODULES>
</EDKSYSTEM>
"""
    atomic_write_text(path, text)
    return Path(path)


class _Memory:
    """The device's default memory (what pynq.allocate uses)."""

    def __init__(self, device: "GoldenPynqDevice"):
        self.device = device

    def allocate(self, shape, dtype, **kwargs):
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        addr = self.device.memory.allocate(max(1, nbytes))
        buf = PynqBuffer(shape, dtype, device=self.device, device_address=addr, bo=addr, coherent=False)
        buf.memory, buf.pointer, buf.return_to = self, addr, self
        self.device.host[addr] = buf
        return buf

    def return_pointer(self, pointer: int) -> None:
        buf = self.device.host.pop(pointer, None)
        if buf is not None:
            buf.freed = True  # pynq then never tries to munmap it (nothing was mapped)
        self.device.memory.release(pointer)


class GoldenPynqDevice(pynq.Device):
    """A pynq Device whose programmable logic is the golden register model."""

    def __init__(self, config: EngineConfig, tag: str = "hwconv_golden_offboard"):
        super().__init__(tag)
        self.name = tag
        self.capabilities = {"REGISTER_RW": True, "MEMORY_MAPPED": False}
        self.arch = "aarch64"
        self.config = config
        self.memory = DeviceMemory()
        self.host: dict[int, PynqBuffer] = {}
        self.engines: dict[int, EngineModel] = {}   # window base -> model, after download
        self.clock_regs = {CRL_APB: np.zeros(CLOCK_WINDOW // 4, np.uint32),
                           CRF_APB: np.zeros(CLOCK_WINDOW // 4, np.uint32)}
        self.clock_regs[CRL_APB][IOPLL_CTRL // 4] = 90 << 8 | 1 << 16
        self.timestamp = ""
        self.bitfile_name = None
        self.downloads = 0

    # -- what Overlay calls --------------------------------------------------------------------
    def get_bitfile_metadata(self, bitfile_name: str, partial: bool = False):
        from pynqmetadata.frontends import Metadata
        from pynqmetadata.views.runtime import RuntimeMetadataParser

        hwh = Path(bitfile_name).with_suffix(".hwh")
        if not hwh.is_file():
            raise RuntimeError(f"{bitfile_name}: no {hwh.name} beside the bitstream")
        return RuntimeMetadataParser(Metadata(input=str(hwh)))

    def download(self, bitstream, parser=None) -> None:
        """'Program the PL': one fresh engine model per engine window the .hwh describes."""
        data = Path(bitstream.bitfile_name).read_bytes()
        if not data:
            raise RuntimeError(f"{bitstream.bitfile_name}: empty bitstream")
        self.engines = {d["phys_addr"]: EngineModel(self.config, self.memory)
                        for d in parser.ip_dict.values() if d.get("type") == ENGINE_VLNV}
        self.downloads += 1
        super().post_download(bitstream, parser, self.name)

    @property
    def default_memory(self):
        return _Memory(self)

    def flush(self, bo, offset, vaddr, nbytes) -> None:
        host = np.asarray(self.host[bo]).reshape(-1).view(np.uint8)
        self.memory.regions[bo][offset:offset + nbytes] = host[offset:offset + nbytes]

    def invalidate(self, bo, offset, vaddr, nbytes) -> None:
        host = np.asarray(self.host[bo]).reshape(-1).view(np.uint8)
        host[offset:offset + nbytes] = self.memory.regions[bo][offset:offset + nbytes]

    # -- register bus ---------------------------------------------------------------------------
    def _target(self, address: int):
        for base, model in self.engines.items():
            if base <= address < base + ENGINE_RANGE:
                return "engine", model, address - base
        for base, regs in self.clock_regs.items():
            if base <= address < base + CLOCK_WINDOW:
                return "clock", regs, address - base
        raise RuntimeError(f"bus error: nothing answers at 0x{address:08x} (bitstream not downloaded?)")

    def read_registers(self, address: int, length: int) -> bytes:
        if length != 4:
            raise RuntimeError(f"read of {length} bytes at 0x{address:08x}: the bus here is 32-bit")
        kind, target, off = self._target(address)
        if kind == "engine":
            value = target.read(off) if off < REGISTER_MAP_BYTES else 0
        else:
            value = int(target[off // 4])
        return int(value).to_bytes(4, "little")

    def write_registers(self, address: int, data: bytes) -> None:
        if len(data) % 4:
            raise RuntimeError(f"write of {len(data)} bytes at 0x{address:08x}: the bus here is 32-bit")
        for i in range(0, len(data), 4):
            value = int.from_bytes(data[i:i + 4], "little")
            kind, target, off = self._target(address + i)
            if kind == "engine":
                if off < REGISTER_MAP_BYTES:
                    target.write(off, value)
            else:
                target[off // 4] = value

    # -- test hooks -----------------------------------------------------------------------------
    def hang_bus(self, enabled: bool) -> None:
        for model in self.engines.values():
            model.bus_hung = bool(enabled)
