"""Simulation models for the RTL tests: an AXI4 subordinate RAM for the Amaranth simulator.

`AxiRamModel` plays the part cocotbext-axi's AxiRam plays in a cocotb bench, but runs as
background testbench processes inside `amaranth.sim`, one per channel. It serves INCR bursts from
a byte-addressed numpy array, with seeded random latency per burst and random READY/VALID gaps on
every channel, and it checks the manager's side of the protocol as it goes (an `AssertionError`
inside a process ends `sim.run()` with it):

- AxVALID and W beats, once offered, are held with the same payload until accepted;
- AxBURST is INCR, AxSIZE the full bus width, AxADDR aligned to it (all this model serves);
- no burst crosses a 4 KiB boundary (AxLEN <= 255 holds by its 8-bit width, but is checked too);
- each write burst has exactly AWLEN+1 W beats, WLAST on the last one only.

Responses come back in order (the DMA uses one ID). Errors: an access outside the memory window
answers DECERR; `errors=[(lo, hi, resp)]` makes any beat that touches ``[lo, hi)`` answer
``resp``, returning random data on reads and writing nothing.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from amaranth.sim import Simulator

from hwconv.rtl.axi4 import BURST_INCR, PAGE_BYTES, RESP_DECERR, RESP_OKAY

CHANNELS = ("ar", "r", "aw", "w", "b")


@dataclass
class Burst:
    addr: int
    len: int  # AxLEN: beats - 1
    id: int
    cycle: int  # when the address was accepted
    due: int = 0  # earliest cycle of its first data beat (reads) or response (writes)
    resp: int = RESP_OKAY


@dataclass
class Stats:
    read_bursts: list[Burst] = field(default_factory=list)
    write_bursts: list[Burst] = field(default_factory=list)
    max_reads_in_flight: int = 0  # bursts accepted on AR and not yet fully returned
    max_writes_in_flight: int = 0  # bursts accepted on AW without their B response sent
    w_beats_before_aw: int = 0  # W beats accepted before the AW of their burst


class AxiRamModel:
    """An AXI4 subordinate RAM on `bus` (an interface with `AXI4Signature` members; a read-only
    or write-only one serves only that direction).

    ``latency=(lo, hi)``: cycles from an accepted AR to its first R beat, and from the last W
    beat of a burst to its B response, drawn per burst. ``stall``: probability that READY (AR,
    AW, W) is low, or that a new R or B beat is not offered, in any cycle; a dict sets it per
    channel (``{"aw": 0.8}``; channels left out never stall).
    """

    def __init__(self, bus, size: int, *, base: int = 0, seed: int = 0,
                 latency: tuple[int, int] = (1, 1), stall: float | dict[str, float] = 0.0,
                 errors: list[tuple[int, int, int]] = ()):
        if latency[0] < 1:
            raise ValueError("latency must be at least 1 cycle")
        self.bus, self.base, self.latency = bus, base, latency
        self.stall = stall if isinstance(stall, dict) else dict.fromkeys(CHANNELS, stall)
        assert set(self.stall) <= set(CHANNELS), f"channels are {CHANNELS}"
        self.errors = list(errors)
        self.mem = np.zeros(size, np.uint8)
        self.beat_bytes = bus.signature.data_width // 8
        self.size = bus.signature.size
        self.rng = random.Random(seed)
        self.stats = Stats()
        self._reads: deque[Burst] = deque()
        self._writes: deque[Burst] = deque()  # AW accepted, W beats still to come
        self._w_beats: deque[tuple[int, int, int]] = deque()  # (data, strb, last) not yet matched
        self._w_index = 0  # beats of the head write burst already matched
        self._w_resp = RESP_OKAY
        self._responses: deque[Burst] = deque()
        self._cycle = 0

    # --- memory --------------------------------------------------------------------------------
    def load(self, addr: int, data: bytes | np.ndarray) -> None:
        off = addr - self.base
        self.mem[off:off + len(data)] = np.frombuffer(bytes(data), np.uint8)

    def dump(self, addr: int, length: int) -> bytes:
        return self.mem[addr - self.base:addr - self.base + length].tobytes()

    def _resp(self, addr: int) -> int:
        if not (self.base <= addr and addr + self.beat_bytes <= self.base + len(self.mem)):
            return RESP_DECERR
        for lo, hi, resp in self.errors:
            if addr < hi and lo < addr + self.beat_bytes:
                return resp
        return RESP_OKAY

    # --- helpers -------------------------------------------------------------------------------
    def add_to(self, sim: Simulator) -> None:
        sig = self.bus.signature
        procs = [self._clock]
        if sig.read:
            procs += [self._ar, self._r]
        if sig.write:
            procs += [self._aw, self._w, self._b]
        for proc in procs:
            sim.add_testbench(proc, background=True)

    def _ready(self, channel: str) -> int:
        return int(self.rng.random() >= self.stall.get(channel, 0.0))

    def _draw_latency(self) -> int:
        return self.rng.randint(*self.latency)

    async def _clock(self, ctx) -> None:
        # The one cycle counter all channels read: `_cycle` is the number of edges so far.
        async for _ in ctx.tick():
            self._cycle += 1

    def _check_burst(self, kind: str, addr: int, len_: int, size: int, burst: int) -> None:
        where = f"{kind} burst at 0x{addr:x}, AxLEN {len_}"
        assert burst == BURST_INCR, f"{where}: AxBURST {burst}, only INCR is served"
        assert size == self.size, f"{where}: AxSIZE {size}, the bus is {self.size}"
        assert addr % self.beat_bytes == 0, f"{where}: not aligned to the bus width"
        assert 0 <= len_ <= 255, f"{where}: AxLEN out of range"
        end = addr % PAGE_BYTES + (len_ + 1) * self.beat_bytes
        assert end <= PAGE_BYTES, f"{where}: crosses a 4 KiB boundary"

    async def _address(self, ctx, kind: str, prefix: str, accept) -> None:
        """AR or AW: random READY, hold check, burst rules; `accept(burst)` on a handshake."""
        bus = self.bus
        names = ("valid", "addr", "len", "size", "burst", "id", "cache", "prot", "lock", "qos")
        sigs = [getattr(bus, prefix + n) for n in names]
        held = None  # payload offered at the last edge and not accepted
        while True:
            ready = self._ready(prefix)
            ctx.set(getattr(bus, prefix + "ready"), ready)
            _, _, valid, *payload = await ctx.tick().sample(*sigs)
            if held is not None:
                assert valid and payload == held, (
                    f"{kind}VALID dropped or payload changed before {kind}READY: "
                    f"{held} -> {payload if valid else 'not valid'}")
            held = payload if valid and not ready else None
            if valid and ready:
                addr, len_, size, burst, id_ = payload[:5]
                self._check_burst(kind, addr, len_, size, burst)
                accept(Burst(addr, len_, id_, self._cycle))

    async def _ar(self, ctx) -> None:
        def accept(b: Burst) -> None:
            b.due = b.cycle + self._draw_latency()
            self.stats.read_bursts.append(b)
            self._reads.append(b)
            self.stats.max_reads_in_flight = max(self.stats.max_reads_in_flight, len(self._reads))
        await self._address(ctx, "AR", "ar", accept)

    async def _aw(self, ctx) -> None:
        def accept(b: Burst) -> None:
            self.stats.write_bursts.append(b)
            self._writes.append(b)
            self._match_writes()
        await self._address(ctx, "AW", "aw", accept)

    async def _r(self, ctx) -> None:
        bus = self.bus
        index = 0  # beat of the head burst being offered
        offering = False
        while True:
            head = self._reads[0] if self._reads else None
            # Once offered, a beat stays until taken (the subordinate's side of the rule).
            if not offering and head is not None and head.due <= self._cycle + 1:
                offering = self._ready("r") == 1
            if offering:
                addr = head.addr + index * self.beat_bytes
                resp = self._resp(addr)
                data = (int.from_bytes(self.dump(addr, self.beat_bytes), "little")
                        if resp == RESP_OKAY else self.rng.getrandbits(8 * self.beat_bytes))
                ctx.set(bus.rdata, data)
                ctx.set(bus.rresp, resp)
                ctx.set(bus.rid, head.id)
                ctx.set(bus.rlast, index == head.len)
            ctx.set(bus.rvalid, offering)
            _, _, rready = await ctx.tick().sample(bus.rready)
            if offering and rready:
                offering = False
                index += 1
                if index > head.len:
                    self._reads.popleft()
                    index = 0

    async def _w(self, ctx) -> None:
        bus = self.bus
        held = None
        while True:
            ready = self._ready("w")
            ctx.set(bus.wready, ready)
            _, _, valid, *beat = await ctx.tick().sample(bus.wvalid, bus.wdata, bus.wstrb,
                                                         bus.wlast)
            if held is not None:
                assert valid and beat == held, (
                    f"WVALID dropped or W beat changed before WREADY: {held} -> "
                    f"{beat if valid else 'not valid'}")
            held = beat if valid and not ready else None
            if valid and ready:
                # Matching is eager, so no pending AW means this beat leads its AW.
                self.stats.w_beats_before_aw += not self._writes
                self._w_beats.append(tuple(beat))
                self._match_writes()

    def _match_writes(self) -> None:
        """Pair W beats (which may lead their AW) with accepted write bursts, in order."""
        while self._writes and self._w_beats:
            b = self._writes[0]
            data, strb, last = self._w_beats.popleft()
            where = f"write burst at 0x{b.addr:x}, AWLEN {b.len}, beat {self._w_index}"
            assert last == (self._w_index == b.len), f"{where}: WLAST is {last}"
            addr = b.addr + self._w_index * self.beat_bytes
            resp = self._resp(addr)
            if resp == RESP_OKAY:
                off = addr - self.base
                raw = np.frombuffer(data.to_bytes(self.beat_bytes, "little"), np.uint8)
                lanes = np.array([strb >> i & 1 for i in range(self.beat_bytes)], bool)
                self.mem[off:off + self.beat_bytes][lanes] = raw[lanes]
            else:
                self._w_resp = max(self._w_resp, resp)
            self._w_index += 1
            if last:
                self._writes.popleft()
                b.resp, self._w_resp, self._w_index = self._w_resp, RESP_OKAY, 0
                b.due = self._cycle + self._draw_latency()
                self._responses.append(b)
                in_flight = len(self._writes) + len(self._responses)
                self.stats.max_writes_in_flight = max(self.stats.max_writes_in_flight, in_flight)

    async def _b(self, ctx) -> None:
        bus = self.bus
        offering = False
        while True:
            head = self._responses[0] if self._responses else None
            if not offering and head is not None and head.due <= self._cycle + 1:
                offering = self._ready("b") == 1
            if offering:
                ctx.set(bus.bresp, head.resp)
                ctx.set(bus.bid, head.id)
            ctx.set(bus.bvalid, offering)
            _, _, bready = await ctx.tick().sample(bus.bready)
            if offering and bready:
                offering = False
                self._responses.popleft()
