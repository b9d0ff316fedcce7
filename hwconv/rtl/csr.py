"""The engine's control/status registers: an AXI4-Lite subordinate built from the spec's table.

Every offset, access kind and bit field comes from `hwconv.spec.registers.REGISTERS`; moving a
register there moves it here. Ports towards the engine core are named after the registers:

- RW: ``Out`` holding the value (``irq_enable``, ``params_size``, ``perf_select``, ...);
  an RW ``X_LO``/``X_HI`` pair is one ``Out(config.addr_width)`` named ``x`` (``desc_base``).
- RO: ``In`` that the register shows (``status``, ``error``, ``layers_done``, ...); an RO
  ``X_LO``/``X_HI`` pair is one 64-bit ``In`` (``cycles``). Reading LO latches HI, so reading
  LO then HI gives one consistent 64-bit value. ID, VERSION and CONFIG_HASH are constants.
- WO: each field is a one-cycle strobe ``Out`` (``start``, ``soft_reset``); reads return 0.
- W1C: each field is set by a one-cycle ``In`` named ``<field>_pulse`` (``done_pulse``) and
  cleared by writing 1; a set and a clear in the same cycle leave it set (no interrupt is lost).
- ``irq``: some IRQ_STATUS field is set and the IRQ_ENABLE field of the same name is too.

A register with bit fields gets a layout, so the core says ``status.busy`` rather than ``[0]``;
bits outside the fields are not stored and read 0.

Bus behaviour: AW and W are accepted in either order or together (each has a one-entry holding
register), `wstrb` selects byte lanes, B and R are held until the manager is ready, one
transaction per direction is outstanding. A read's data is chosen the cycle after its address is
taken, from registers. Unmapped offsets read 0 and ignore writes; responses are always OKAY. No
combinational path runs from a bus input to a bus output.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from ..spec.config import EngineConfig
from ..spec.program import VERSION_WORD
from ..spec.registers import (ENGINE_ID, REGISTER_BYTES, REGISTER_MAP_BYTES, REGISTERS, Access,
                              Register, reg)
from .axi_lite import RESP_OKAY, AXI4LiteSignature

__all__ = ["CSR_ADDR_WIDTH", "REG_BITS", "ControlRegisters", "constant_values", "field_layout"]

REG_BITS = REGISTER_BYTES * 8
CSR_ADDR_WIDTH = (REGISTER_MAP_BYTES - 1).bit_length()  # the bus decodes exactly the map's window
_WORD_SHIFT = (REGISTER_BYTES - 1).bit_length()  # byte offset -> word index
_PAIR = ("_LO", "_HI")


def constant_values(config: EngineConfig) -> dict[str, int]:
    """Values of the RO registers that are constants of this engine build."""
    return {
        "ID": ENGINE_ID,
        "VERSION": VERSION_WORD,
        "CONFIG_HASH": config.config_hash,
    }


def field_layout(r: Register) -> data.FlexibleLayout:
    """A register's bit fields at their spec positions (size: up to its highest field bit)."""
    size = max(lsb + width for _, lsb, width in r.bits)
    return data.FlexibleLayout(size, {name: data.Field(unsigned(width), lsb)
                                      for name, lsb, width in r.bits})


def field_mask(r: Register) -> int:
    """Bits of `r` that hold state: its fields, or all of it when it declares none."""
    if not r.bits:
        return (1 << REG_BITS) - 1
    return sum(((1 << width) - 1) << lsb for _, lsb, width in r.bits)


def _fields(r: Register) -> tuple[tuple[str, int, int], ...]:
    """A register's fields; one spanning the whole register, named after it, if it has none."""
    return r.bits or ((r.name.lower(), 0, REG_BITS),)


@dataclass(frozen=True)
class _Port:
    """One engine-side port and the register(s) it stands for."""

    name: str
    regs: tuple[Register, ...]  # (r,), or (lo, hi) for a 64-bit pair

    @property
    def access(self) -> Access:
        return self.regs[0].access

    @property
    def is_pair(self) -> bool:
        return len(self.regs) == 2


def _ports(constants: dict[str, int]) -> list[_Port]:
    """Group the table into ports: an X_LO/X_HI pair becomes one port named x."""
    names = {r.name for r in REGISTERS}
    his = {r.name[:-len(_PAIR[0])] + _PAIR[1] for r in REGISTERS if r.name.endswith(_PAIR[0])}
    ports = []
    for r in REGISTERS:
        if r.name in constants or r.name in his & names:
            continue
        stem = r.name[:-len(_PAIR[0])]
        if r.name.endswith(_PAIR[0]) and stem + _PAIR[1] in names:
            hi = reg(stem + _PAIR[1])
            if hi.access != r.access or r.bits or hi.bits or r.access not in (Access.RO, Access.RW):
                raise ValueError(f"{r.name}/{hi.name}: a 64-bit pair is RO or RW, without fields")
            ports.append(_Port(stem.lower(), (r, hi)))
        else:
            ports.append(_Port(r.name.lower(), (r,)))
    return ports


class ControlRegisters(wiring.Component):
    """AXI4-Lite register file of the engine; see the module docstring for the ports."""

    def __init__(self, config: EngineConfig):
        self.config = config
        self.constants = constant_values(config)
        assert all(reg(name).access == Access.RO for name in self.constants)
        self._ports = _ports(self.constants)
        members: dict[str, wiring.Member] = {
            "bus": In(AXI4LiteSignature(CSR_ADDR_WIDTH, REG_BITS)),
            "irq": Out(1),
        }

        def add(name: str, member: wiring.Member) -> None:
            if name in members:
                raise ValueError(f"two ports of the register file would be named {name!r}")
            members[name] = member

        for p in self._ports:
            r = p.regs[0]
            if p.access == Access.RW:
                add(p.name, Out(config.addr_width if p.is_pair else
                                field_layout(r) if r.bits else REG_BITS))
            elif p.access == Access.RO:
                add(p.name, In(2 * REG_BITS if p.is_pair else field_layout(r) if r.bits else REG_BITS))
            elif p.access == Access.WO:
                for name, _, width in _fields(r):
                    add(name, Out(width))
            else:  # W1C
                for name, _, width in _fields(r):
                    add(f"{name}_pulse", In(width))
        super().__init__(members)

    def elaborate(self, platform) -> Module:
        m = Module()
        bus = self.bus

        # -- state of each stored register (RW and W1C), and the RO pairs' latched high words --
        store: dict[str, Signal] = {}
        shadow: dict[str, Signal] = {}
        for p in self._ports:
            if p.access in (Access.RW, Access.W1C):
                for r in p.regs:
                    store[r.name] = Signal(REG_BITS, name=f"reg_{r.name.lower()}")
            elif p.access == Access.RO and p.is_pair:
                shadow[p.regs[1].name] = Signal(REG_BITS, name=f"{p.regs[1].name.lower()}_latched")

        # -- outputs to the core --
        for p in self._ports:
            if p.access == Access.RW:
                m.d.comb += Value.cast(getattr(self, p.name)).eq(Cat(*(store[r.name]
                                                                       for r in p.regs)))
        # irq: any interrupt source that is both enabled and pending.
        enable, pending = reg("IRQ_ENABLE"), reg("IRQ_STATUS")
        m.d.comb += self.irq.eq(Cat(*(
            store[enable.name].bit_select(enable.field(name)[0], width) &
            store[pending.name].bit_select(lsb, width)
            for name, lsb, width in pending.bits)).any())

        # -- read channel: AR is taken when R is empty. Its offset is decoded into a one-hot
        # select as it is taken, and the data is an AND-OR of the selected value the cycle
        # after (the core's values, a block RAM's output among them, meet no decode); R holds
        # until rready --
        sources = [(r.offset, self._read_value(p, r, store, shadow), p, r)
                   for p in self._ports for r in p.regs]
        sources += [(reg(name).offset, Const(value, REG_BITS), None, None)
                    for name, value in self.constants.items()]
        r_pending = Signal()
        r_sel = Signal(len(sources))      # unmapped offsets select nothing and read 0
        m.d.comb += [
            bus.arready.eq(~bus.rvalid & ~r_pending),
            bus.rresp.eq(RESP_OKAY),
        ]
        with m.If(bus.rvalid & bus.rready):
            m.d.sync += bus.rvalid.eq(0)
        with m.If(bus.arvalid & bus.arready):
            m.d.sync += [r_pending.eq(1), r_sel.eq(0)]
            with m.Switch(bus.araddr[_WORD_SHIFT:]):
                for k, (off, *_) in enumerate(sources):
                    with m.Case(off >> _WORD_SHIFT):
                        m.d.sync += r_sel.eq(1 << k)
        with m.If(r_pending):
            data = Const(0, REG_BITS)
            for k, (_, value, p, r) in enumerate(sources):
                data = data | Mux(r_sel[k], value, 0)
                if p is not None and p.access == Access.RO and p.is_pair and r is p.regs[0]:
                    with m.If(r_sel[k]):  # reading LO latches HI: LO-then-HI is one 64-bit sample
                        m.d.sync += shadow[p.regs[1].name].eq(Value.cast(getattr(self, p.name))[REG_BITS:])
            m.d.sync += [r_pending.eq(0), bus.rvalid.eq(1), bus.rdata.eq(data)]

        # -- write channel: AW and W each wait in a holding register until both are there --
        aw_full = Signal()
        w_full = Signal()
        awaddr = Signal.like(bus.awaddr, name="awaddr")
        wdata = Signal.like(bus.wdata, name="wdata")
        wstrb = Signal.like(bus.wstrb, name="wstrb")
        m.d.comb += [
            bus.awready.eq(~aw_full),
            bus.wready.eq(~w_full),
            bus.bresp.eq(RESP_OKAY),
        ]
        with m.If(bus.awvalid & bus.awready):
            m.d.sync += [aw_full.eq(1), awaddr.eq(bus.awaddr)]
        with m.If(bus.wvalid & bus.wready):
            m.d.sync += [w_full.eq(1), wdata.eq(bus.wdata), wstrb.eq(bus.wstrb)]
        with m.If(bus.bvalid & bus.bready):
            m.d.sync += bus.bvalid.eq(0)

        # W1C set pulses land every cycle; a clear in the same cycle is applied first.
        w1c = [r for r in REGISTERS if r.access == Access.W1C]
        w1c_next = {r.name: Signal(REG_BITS, name=f"{r.name.lower()}_next") for r in w1c}
        for r in w1c:
            m.d.comb += w1c_next[r.name].eq(store[r.name])
            m.d.sync += store[r.name].eq(w1c_next[r.name] | self._set_pulses(r))

        # Strobes are high for exactly the cycle after the write that raised them.
        for r in REGISTERS:
            if r.access == Access.WO:
                m.d.sync += [getattr(self, name).eq(0) for name, _, _ in _fields(r)]

        lanes = Cat(*(bit.replicate(8) for bit in wstrb))  # byte enables -> bit mask
        with m.If(aw_full & w_full & ~(bus.bvalid & ~bus.bready)):
            # The B slot is free (or emptying this cycle): perform the write and respond.
            m.d.sync += [aw_full.eq(0), w_full.eq(0), bus.bvalid.eq(1)]
            with m.Switch(awaddr[_WORD_SHIFT:]):
                for r in REGISTERS:
                    if r.access == Access.RO:
                        continue  # writes to RO registers are ignored (still OKAY)
                    with m.Case(r.offset >> _WORD_SHIFT):
                        hit = wdata & lanes & field_mask(r)
                        if r.access == Access.RW:
                            keep = store[r.name] & ~(lanes & field_mask(r))
                            m.d.sync += store[r.name].eq(keep | hit)
                        elif r.access == Access.W1C:
                            m.d.comb += w1c_next[r.name].eq(store[r.name] & ~hit)
                        else:  # WO
                            m.d.sync += [getattr(self, name).eq(hit.bit_select(lsb, width))
                                         for name, lsb, width in _fields(r)]
        return m

    def _read_value(self, p: _Port, r: Register, store: dict, shadow: dict) -> Value:
        """What a read of `r` returns (REG_BITS wide, zero-extended)."""
        if p.access in (Access.RW, Access.W1C):
            return store[r.name]
        if p.access == Access.WO:
            return Const(0, REG_BITS)
        value = Value.cast(getattr(self, p.name))
        if not p.is_pair:
            return value & field_mask(r)  # bits between fields read 0 whatever the core drives
        return value[:REG_BITS] if r is p.regs[0] else shadow[r.name]

    def _set_pulses(self, r: Register) -> Value:
        """The W1C register's set inputs at their field positions."""
        bits = Const(0, REG_BITS)
        for name, lsb, _ in _fields(r):
            bits = bits | (getattr(self, f"{name}_pulse").as_unsigned() << lsb)
        return bits[:REG_BITS]
