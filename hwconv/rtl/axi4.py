"""AXI4 (full): the interface signature, its constants, and joining a read and a write half.

The signature is written from the manager's point of view (as in the AXI specification), so the
engine's DMA takes ``Out(AXI4Signature(...))`` and a subordinate model takes ``In(...)``.

Port naming follows `axi_lite`: a top level whose member is called ``m_axi_gmem`` and that converts
with ``ports=verilog_ports(top)`` gets ``m_axi_gmem_araddr`` etc., which Vivado's interface
inference and PYNQ recognise. `verilog_ports` is re-exported from there.

A DMA engine usually only reads or only writes, so `AXI4Signature` can leave out either direction
(``write=False`` keeps AR and R); `connect_part` wires such a half into a full bus.
"""

from __future__ import annotations

from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..spec.memory import PAGE_BYTES  # no burst may cross a 4 KiB boundary
from .axi_lite import verilog_ports

__all__ = [
    "BURST_INCR", "CACHE_NORMAL", "MAX_BURST_BEATS", "PAGE_BYTES", "PROT_DATA", "RESP_DECERR",
    "RESP_EXOKAY", "RESP_OKAY", "RESP_SLVERR", "AXI4Signature", "connect_part", "verilog_ports",
]

RESP_OKAY, RESP_EXOKAY, RESP_SLVERR, RESP_DECERR = 0b00, 0b01, 0b10, 0b11
BURST_FIXED, BURST_INCR, BURST_WRAP = 0b00, 0b01, 0b10
# AxCACHE 0b0011: normal non-cacheable bufferable, what Xilinx's DMA IPs and HLS m_axi drive; it
# lets the interconnect merge and buffer writes, and the Zynq HP ports need no coherency.
CACHE_NORMAL = 0b0011
PROT_DATA = 0b000  # unprivileged, secure, data access (HLS m_axi default)
MAX_BURST_BEATS = 256  # AXI4 INCR: AxLEN is 8 bits

LEN_BITS, SIZE_BITS, BURST_BITS, LOCK_BITS = 8, 3, 2, 1
CACHE_BITS, PROT_BITS, QOS_BITS, RESP_BITS = 4, 3, 4, 2


def _address_channel(prefix: str, addr_width: int, id_width: int) -> dict[str, wiring.Member]:
    return {
        f"{prefix}id": Out(id_width), f"{prefix}addr": Out(addr_width),
        f"{prefix}len": Out(LEN_BITS), f"{prefix}size": Out(SIZE_BITS),
        f"{prefix}burst": Out(BURST_BITS), f"{prefix}lock": Out(LOCK_BITS),
        f"{prefix}cache": Out(CACHE_BITS), f"{prefix}prot": Out(PROT_BITS),
        f"{prefix}qos": Out(QOS_BITS), f"{prefix}valid": Out(1), f"{prefix}ready": In(1),
    }


class AXI4Signature(wiring.Signature):
    """Signature of an AXI4 interface, from the manager's side.

    Members (AXI4 has no WID; USER and REGION signals are left out, the interconnect makes
    REGION):

    aw*: awid, awaddr, awlen, awsize, awburst, awlock, awcache, awprot, awqos, awvalid; awready.
    w*: wdata, wstrb, wlast, wvalid; wready.
    b*: bid, bresp, bvalid back; bready.
    ar*: as aw*.
    r*: rid, rdata, rresp, rlast, rvalid back; rready.

    ``read=False`` leaves out AR and R, ``write=False`` leaves out AW, W and B.
    """

    def __init__(self, addr_width: int, data_width: int, id_width: int = 1, *,
                 read: bool = True, write: bool = True):
        if addr_width < 12:  # the 4 KiB rule needs the page offset bits
            raise ValueError(f"AXI4 address width must be at least 12, not {addr_width}")
        if data_width not in (8, 16, 32, 64, 128, 256, 512, 1024):
            raise ValueError(f"AXI4 data width must be a power of two from 8 to 1024, "
                             f"not {data_width}")
        if id_width < 1:
            raise ValueError(f"AXI4 ID width must be positive, not {id_width}")
        if not (read or write):
            raise ValueError("an AXI4 interface needs a read or a write direction")
        self._addr_width, self._data_width, self._id_width = addr_width, data_width, id_width
        self._read, self._write = read, write
        members: dict[str, wiring.Member] = {}
        if write:
            members |= _address_channel("aw", addr_width, id_width)
            members |= {"wdata": Out(data_width), "wstrb": Out(data_width // 8),
                        "wlast": Out(1), "wvalid": Out(1), "wready": In(1)}
            members |= {"bid": In(id_width), "bresp": In(RESP_BITS), "bvalid": In(1),
                        "bready": Out(1)}
        if read:
            members |= _address_channel("ar", addr_width, id_width)
            members |= {"rid": In(id_width), "rdata": In(data_width), "rresp": In(RESP_BITS),
                        "rlast": In(1), "rvalid": In(1), "rready": Out(1)}
        super().__init__(members)

    @property
    def addr_width(self) -> int:
        return self._addr_width

    @property
    def data_width(self) -> int:
        return self._data_width

    @property
    def id_width(self) -> int:
        return self._id_width

    @property
    def read(self) -> bool:
        return self._read

    @property
    def write(self) -> bool:
        return self._write

    @property
    def size(self) -> int:
        """AxSIZE of a full-width beat: log2 of the bytes per beat."""
        return (self.data_width // 8).bit_length() - 1

    def _key(self) -> tuple:
        return self.addr_width, self.data_width, self.id_width, self.read, self.write

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and other._key() == self._key()

    def __repr__(self) -> str:
        extra = "".join(f", {k}=False" for k in ("read", "write") if not getattr(self, k))
        return (f"AXI4Signature({self.addr_width}, {self.data_width}, {self.id_width}{extra})")


def connect_part(m: Module, bus, part) -> None:
    """Wire `part`, a manager-side AXI4 interface with a subset of `bus`'s members (a read-only or
    write-only half), to the same-named members of `bus`, a full manager-side interface.

    `wiring.connect` needs identical signatures; this is how a top joins a `DMAReader` and a
    `DMAWriter` into one ``m_axi_gmem`` port.
    """
    for name, member in part.signature.members.items():
        if name not in bus.signature.members or bus.signature.members[name] != member:
            raise TypeError(f"member {name!r} of {part.signature!r} has no match in "
                            f"{bus.signature!r}")
        ours, theirs = getattr(bus, name), getattr(part, name)
        m.d.comb += ours.eq(theirs) if member.flow == Out else theirs.eq(ours)
