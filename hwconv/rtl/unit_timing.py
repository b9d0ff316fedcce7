"""Timing estimate of one engine unit on its own, in a minute instead of the whole engine's ten.

The unit is wrapped so that every port is a register: each input is driven by a flip-flop and each
output is captured by one. Paths that enter or leave the unit then count as they would inside the
engine if the neighbour's side of the port were a bare register, so a unit that meets the clock
here needs its neighbours to register what they hand it (the engine's rule: a unit's outputs
come from registers, or from logic short enough that the receiving unit's cone still fits).

    python -m hwconv.rtl.unit_timing window_issuer --board ultra96v2 [-n 15]
    python -m hwconv.rtl.unit_timing all --board pynq_z2
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from amaranth.back import verilog
from amaranth.hdl import Elaboratable, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In

from ..boards import load_board
from ..spec.config import EngineConfig
from . import timing

__all__ = ["UNITS", "RegisteredPorts", "component_report", "unit_report"]


def _units() -> dict:
    # Imported here: the registry names every unit of the engine, each built from the config.
    from .byte_reader import ByteReader
    from .checker import DescriptorChecker
    from .dma import DMAWriter
    from .mac_array import MacArray
    from .param_loader import ParamLoader
    from .perf_counters import PerfCounters
    from .requant import Requantizer
    from .row_flusher import RowFlusher
    from .row_loader import RowLoader
    from .store import Store
    from .window_issuer import WindowIssuer
    return {"byte_reader": ByteReader, "checker": DescriptorChecker, "dma_writer": DMAWriter,
            "mac_array": MacArray, "param_loader": ParamLoader, "perf_counters": PerfCounters,
            "requant": Requantizer, "row_flusher": RowFlusher, "row_loader": RowLoader,
            "store": Store, "window_issuer": WindowIssuer}


UNITS = tuple(sorted(_units()))


class RegisteredPorts(Elaboratable):
    """`unit` with a flip-flop on every port: `ports` are the wrapper's own (for verilog.convert)."""

    def __init__(self, unit: wiring.Component):
        self.unit = unit
        self.ports: list[Signal] = []
        self._pairs: list[tuple[bool, Signal, Signal]] = []
        for path, member, value in unit.signature.flatten(unit):
            inner = value.as_value() if hasattr(value, "as_value") else value
            outer = Signal(len(inner), name="p_" + "_".join(map(str, path)))
            self.ports.append(outer)
            self._pairs.append((member.flow == In, outer, inner))

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.unit = self.unit
        for is_input, outer, inner in self._pairs:
            reg = Signal(len(inner))
            if is_input:
                m.d.sync += reg.eq(outer)
                m.d.comb += inner.eq(reg)
            else:
                m.d.sync += reg.eq(inner)
                m.d.comb += outer.eq(reg)
        return m


def unit_report(name: str, config: EngineConfig, family: str) -> timing.TimingReport:
    """The timing estimate of unit `name` (one of UNITS) built for `config`, ports registered."""
    units = _units()
    if name not in units:
        raise timing.TimingError(f"no engine unit named {name!r} (known: {', '.join(UNITS)})")
    return component_report(units[name](config), family, name=f"unit_{name}")


def component_report(component: wiring.Component, family: str, *,
                     name: str = "unit") -> timing.TimingReport:
    """The timing estimate of any component, every port registered."""
    top = name
    wrapper = RegisteredPorts(component)
    text = verilog.convert(wrapper, name=top, ports=wrapper.ports, emit_src=False)
    with tempfile.TemporaryDirectory(prefix="hwconv-unit-timing-") as scratch:
        path = Path(scratch) / f"{top}.v"
        path.write_text(text)
        return timing.estimate_verilog(path, top, family)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m hwconv.rtl.unit_timing", description=(
        "Timing estimate of one engine unit with every port registered (yosys synth_xilinx)"))
    ap.add_argument("unit", choices=[*UNITS, "all"])
    ap.add_argument("--board", default="ultra96v2", help="board whose default engine and "
                    "device family to use (default ultra96v2)")
    ap.add_argument("-n", type=int, default=10, help="paths to list per unit (default 10)")
    args = ap.parse_args(argv)
    try:
        board = load_board(args.board)
    except Exception as exc:        # one line, whatever the catalog says is wrong
        print(f"error: --board: {exc}", file=sys.stderr)
        return 2
    config = board.default_engine_config()
    summary = []
    for name in (UNITS if args.unit == "all" else [args.unit]):
        try:
            report = unit_report(name, config, board.family)
        except timing.TimingError as exc:
            print(f"error: {name}: {exc}", file=sys.stderr)
            return 1
        print(timing.format_report(report, title=f"== {name} ({board.name}, {board.family})",
                                   clock_mhz=config.clock_mhz, top=args.n).split("\ndelay model")[0])
        summary.append((name, report.fmax_mhz, len(report.unregistered)))
    if len(summary) > 1:
        print("unit            est. Fmax MHz   unregistered multipliers")
        for name, fmax, unreg in sorted(summary, key=lambda s: s[1] or 1e9):
            print(f"{name:15s} {fmax or float('nan'):13.1f}   {unreg}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
