"""AXI4-Lite: the interface signature, and Verilog port names Vivado recognises.

The signature is written from the manager's point of view (as in the AXI specification), so a
subordinate takes ``In(AXI4LiteSignature(...))``.

Port naming: `amaranth.back.verilog.convert` names the flattened members of a component's
interface by joining the path with ``__`` (``s_axi_control__awaddr``). Vivado's interface
inference and PYNQ expect a single underscore (``s_axi_control_awaddr``), so a top level converts
with ``ports=verilog_ports(top)``.
"""

from __future__ import annotations

from amaranth.hdl import ValueCastable
from amaranth.hdl._ir import PortDirection
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["RESP_OKAY", "RESP_SLVERR", "AXI4LiteSignature", "verilog_ports"]

RESP_OKAY = 0b00
RESP_SLVERR = 0b10
PROT_BITS = 3
RESP_BITS = 2


class AXI4LiteSignature(wiring.Signature):
    """Signature of an AXI4-Lite interface, from the manager's side.

    Members
    -------
    aw*: write address channel (awaddr, awprot, awvalid; awready back).
    w*: write data channel (wdata, wstrb, wvalid; wready back).
    b*: write response channel (bresp, bvalid back; bready).
    ar*: read address channel (araddr, arprot, arvalid; arready back).
    r*: read data channel (rdata, rresp, rvalid back; rready).
    """

    def __init__(self, addr_width: int, data_width: int = 32):
        if addr_width < 1:
            raise ValueError(f"AXI4-Lite address width must be positive, not {addr_width}")
        if data_width not in (32, 64):  # the only widths AXI4-Lite allows
            raise ValueError(f"AXI4-Lite data width must be 32 or 64, not {data_width}")
        self._addr_width = addr_width
        self._data_width = data_width
        super().__init__({
            "awaddr": Out(addr_width), "awprot": Out(PROT_BITS), "awvalid": Out(1), "awready": In(1),
            "wdata": Out(data_width), "wstrb": Out(data_width // 8), "wvalid": Out(1), "wready": In(1),
            "bresp": In(RESP_BITS), "bvalid": In(1), "bready": Out(1),
            "araddr": Out(addr_width), "arprot": Out(PROT_BITS), "arvalid": Out(1), "arready": In(1),
            "rdata": In(data_width), "rresp": In(RESP_BITS), "rvalid": In(1), "rready": Out(1),
        })

    @property
    def addr_width(self) -> int:
        return self._addr_width

    @property
    def data_width(self) -> int:
        return self._data_width

    def __eq__(self, other) -> bool:
        return (type(other) is type(self) and other.addr_width == self.addr_width and
                other.data_width == self.data_width)

    def __repr__(self) -> str:
        return f"AXI4LiteSignature({self.addr_width}, {self.data_width})"


def verilog_ports(component: wiring.Component, sep: str = "_") -> dict:
    """`ports=` for `verilog.convert` naming each flattened member with `sep` between path parts.

    Same as Amaranth's default, except the separator: ``s_axi_control_awaddr``, not
    ``s_axi_control__awaddr``. Raises if two members would get the same name.
    """
    ports: dict = {}
    for path, member, value in component.signature.flatten(component):
        name = sep.join(map(str, path))
        if name in ports:
            raise NameError(f"two ports of {type(component).__name__} are both named {name!r}")
        if isinstance(value, ValueCastable):
            value = value.as_value()
        direction = PortDirection.Input if member.flow == In else PortDirection.Output
        ports[name] = (value, direction)
    return ports
