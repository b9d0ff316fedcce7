"""DMA engines: AXI4 bursts between DRAM and the engine's streams.

Both engines take commands ``{addr, length}`` in bytes on a stream. ``addr`` must be aligned to
the bus width and ``length`` a multiple of it: the low address and length bits are ignored (a
caller with an unaligned tensor view moves the enclosing aligned beats, writing with strobes). A
command of length 0 is accepted and moves and signals nothing (no ``last`` beat, no ``done``).
Commands are split into INCR bursts of full-width beats, at most 256 beats long and never crossing
a 4 KiB boundary. The next command is taken as soon as the previous one's last burst is
requested, so short commands pipeline: data keeps flowing while the next command's bursts go out.

Errors are states, never hangs: an SLVERR or DECERR response sets ``error``, which stays set until
``clear``; the transfer still runs to its end (every burst issued, every beat delivered or
consumed), so whoever waits for the data or for ``done`` is never left waiting. A read beat that
came back with an error reads as zero.

Counters, for the engine's STALL_CYCLES register (32 bits, wrapping, zeroed by ``clear``):
``beats`` counts data beats moved on the bus; ``stall_cycles`` counts cycles the DMA had a
transfer under way but the bus held it up (see each engine).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Elaboratable, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..spec.config import EngineConfig
from .axi4 import (BURST_INCR, CACHE_NORMAL, MAX_BURST_BEATS, PAGE_BYTES, PROT_DATA, AXI4Signature)
from .fifo import FastFIFO

__all__ = ["COUNTER_BITS", "LENGTH_BITS", "BurstSplitter", "DMAReader", "DMAWriter",
           "burst_layout", "command_layout", "read_beat_layout", "write_beat_layout"]

LENGTH_BITS = 32  # bytes per command; ARENA_SIZE and PARAMS_SIZE are 32-bit registers too
COUNTER_BITS = 32  # STALL_CYCLES is one 32-bit register
_PAGE_SHIFT = PAGE_BYTES.bit_length() - 1


def command_layout(addr_width: int) -> data.StructLayout:
    return data.StructLayout({"addr": unsigned(addr_width), "length": unsigned(LENGTH_BITS)})


def burst_layout(addr_width: int) -> data.StructLayout:
    return data.StructLayout({"addr": unsigned(addr_width), "len": unsigned(8),
                              "final": unsigned(1)})  # final: the command's last burst


def read_beat_layout(data_width: int) -> data.StructLayout:
    return data.StructLayout({"data": unsigned(data_width), "last": unsigned(1)})


def write_beat_layout(data_width: int) -> data.StructLayout:
    return data.StructLayout({"data": unsigned(data_width), "strb": unsigned(data_width // 8)})


def _beat_shift(data_width: int) -> int:
    return (data_width // 8).bit_length() - 1


class BurstSplitter(wiring.Component):
    """Commands in, AXI4 bursts out (AxADDR, AxLEN and whether it ends the command).

    A burst every other cycle (each is prepared in a cycle, a command's first in two, then
    offered from registers); each is
    as long as the command, 256 beats and the rest of the 4 KiB page allow. ``active``: a command
    is being split.
    """

    def __init__(self, addr_width: int, data_width: int):
        self.addr_width, self.data_width = addr_width, data_width
        super().__init__({
            "cmd": In(stream.Signature(command_layout(addr_width))),
            "burst": Out(stream.Signature(burst_layout(addr_width))),
            "active": Out(1),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        s = _beat_shift(self.data_width)
        page_bits = _PAGE_SHIFT - s  # beats per 4 KiB page, as a power of two
        len_bits = (MAX_BURST_BEATS - 1).bit_length()
        addr = Signal(self.addr_width)
        left = Signal(LENGTH_BITS - s)  # beats of the command not yet in a burst

        # The page's room (capped at 256 beats), without a subtraction from the address: beats
        # to the end of the page are page_beats - off; when that is at most 256 (off's bits above
        # the low 8 all ones) it is 256 - off[:8], else the cap is 256; so cap - 1 is
        # ~(off[:8] if those bits are all ones else 0). Kept as registers beside addr (cap and
        # cap - 1): after a full-cap burst the next address is the page's end (cap 256) or 256
        # beats on (the same low bits, the bits above one higher).
        def room_m1(off, high_all_ones):
            if page_bits <= len_bits:
                return ~off
            return ~Mux(high_all_ones, off[:len_bits], 0)

        def high_all_ones(off):
            return off[len_bits:].all() if page_bits > len_bits else 1

        cap_m1 = Signal(len_bits)
        cap = Signal(len_bits + 1)
        off = addr[s:_PAGE_SHIFT]
        if page_bits > len_bits:
            high = off[len_bits:]
            after_m1 = Mux(high.all(), MAX_BURST_BEATS - 1, room_m1(off, high == (1 << len(high)) - 2))
        else:
            after_m1 = (1 << page_bits) - 1
        cmd_off = self.cmd.p.addr[s:_PAGE_SHIFT]
        cmd_cap_m1 = room_m1(cmd_off, high_all_ones(cmd_off))

        # A burst is prepared in one cycle (`prep`) and offered from registers the next: it ends
        # the command when left <= cap, its beats are then `left`, else `cap`. What follows a
        # full-cap burst is prepared too (`n_*`), so taking a burst only loads registers. The
        # prepare cycle costs a cycle per burst (bursts are up to 256 beats long); a command of
        # length 0 is dropped there.
        prep = Signal()
        b_len = Signal(len_bits)
        b_final = Signal()
        n_addr, n_left = Signal.like(addr), Signal.like(left)
        n_cap_m1, n_cap = Signal.like(cap_m1), Signal.like(cap)
        # whether the burst ends the command (left <= cap), a register set as the state loads:
        # compared on the registers it loads from (n_left/n_cap, or the command), never on the
        # subtraction left - cap beside it (yosys would share one carry chain between the two)
        fits = Signal()

        def le(a, b):
            return ~a[len_bits + 1:].any() & (a[:len_bits + 1] <= b)
        m.d.sync += [  # functions of the state, which holds still while a burst is on offer
            b_final.eq(fits), b_len.eq(Mux(fits, left[:len_bits] - 1, cap_m1)),
            n_addr.eq(Cat(Const(0, s), addr[s:] + cap)), n_left.eq(left - cap),
            n_cap_m1.eq(after_m1), n_cap.eq(after_m1 + 1),
        ]
        m.d.comb += [
            self.cmd.ready.eq(~self.active),
            self.burst.valid.eq(self.active & ~prep),
            self.burst.p.addr.eq(addr),
            self.burst.p.len.eq(b_len),
            self.burst.p.final.eq(b_final),
        ]
        take_cmd = self.cmd.valid & self.cmd.ready
        issue = self.burst.valid & self.burst.ready
        # A new command takes two prepare cycles: `fits` is compared on the registers it was
        # loaded into (first), so no compare sits behind the producer's command registers.
        first = Signal()
        with m.If(prep):
            m.d.sync += [prep.eq(first), first.eq(0)]
            with m.If(first):
                m.d.sync += fits.eq(le(left, cap))
            with m.If(~left.any()):
                m.d.sync += self.active.eq(0)
        # The state loads from the command (idle) or from n_* (active): the enable is the only
        # signal that depends on the consumer's ready.
        load = Signal()
        m.d.comb += load.eq(take_cmd | issue & ~b_final)
        with m.If(load):
            m.d.sync += [
                addr.eq(Mux(self.active, n_addr, Cat(Const(0, s), self.cmd.p.addr[s:]))),
                left.eq(Mux(self.active, n_left, self.cmd.p.length[s:])),
                cap_m1.eq(Mux(self.active, n_cap_m1, cmd_cap_m1)),
                cap.eq(Mux(self.active, n_cap, cmd_cap_m1 + 1)),
                fits.eq(le(n_left, n_cap)),   # a new command's: in its first prepare cycle
                prep.eq(1),
                first.eq(~self.active),
            ]
        with m.If(take_cmd):
            m.d.sync += self.active.eq(1)
        with m.If(issue & b_final):
            m.d.sync += self.active.eq(0)
        return m


def _drive_address(m: Module, bus, prefix: str, splitter: BurstSplitter, take, axi_id: int,
                   size: int) -> None:
    """The AR or AW channel: a register stage loaded from the splitter when `take`, so no bus
    output depends combinationally on a bus input."""
    def ch(name: str):
        return getattr(bus, prefix + name)

    with m.If(take):
        m.d.sync += [ch("valid").eq(1), ch("addr").eq(splitter.burst.p.addr),
                     ch("len").eq(splitter.burst.p.len)]
    with m.Elif(ch("ready")):
        m.d.sync += ch("valid").eq(0)
    m.d.comb += [ch("id").eq(axi_id), ch("size").eq(size), ch("burst").eq(BURST_INCR),
                 ch("lock").eq(0), ch("cache").eq(CACHE_NORMAL), ch("prot").eq(PROT_DATA),
                 ch("qos").eq(0)]


def _status(m: Module, clear, error, resp_error, beats, moved, stall_cycles, stalled) -> None:
    """Sticky error (a new error wins over `clear` in the same cycle) and the two counters."""
    with m.If(resp_error):
        m.d.sync += error.eq(1)
    with m.Elif(clear):
        m.d.sync += error.eq(0)
    with m.If(clear):
        m.d.sync += [beats.eq(0), stall_cycles.eq(0)]
    with m.Else():
        m.d.sync += [beats.eq(beats + moved), stall_cycles.eq(stall_cycles + stalled)]


class _DMABase(wiring.Component):
    def __init__(self, config: EngineConfig, members: dict, *, max_outstanding: int, axi_id: int,
                 id_width: int):
        if max_outstanding < 1:
            raise ValueError(f"max_outstanding must be at least 1, not {max_outstanding}")
        if not 0 <= axi_id < 1 << id_width:
            raise ValueError(f"AXI ID {axi_id} does not fit in {id_width} bits")
        self.config, self.max_outstanding, self.axi_id = config, max_outstanding, axi_id
        super().__init__(members | {
            "busy": Out(1),
            "error": Out(1),
            "clear": In(1),
            "beats": Out(COUNTER_BITS),
            "stall_cycles": Out(COUNTER_BITS),
        })


class _FlagQueue(Elaboratable):
    """A first-in first-out queue of 1-bit flags with SyncFIFO's w_*/r_* ports (first word
    fall-through), its `w_rdy` and `r_rdy` registers kept from the next fill level, so that
    neither is an adder's output: for the DMA's bursts in flight."""

    def __init__(self, depth: int):
        self.depth = depth
        self.w_en, self.w_data, self.w_rdy = Signal(), Signal(), Signal(init=1)
        self.r_en, self.r_data, self.r_rdy = Signal(), Signal(), Signal()

    def elaborate(self, platform) -> Module:
        m = Module()
        n = self.depth
        flags = Signal(n)
        w_ptr, r_ptr = Signal(range(n)), Signal(range(n))
        level = Signal(range(n + 1))
        w = self.w_en & self.w_rdy
        r = self.r_en & self.r_rdy

        def step(ptr):
            return Mux(ptr == n - 1, 0, ptr + 1)
        with m.Switch(r_ptr):
            for k in range(n):
                with m.Case(k):
                    m.d.comb += self.r_data.eq(flags[k])
        with m.If(w):
            m.d.sync += w_ptr.eq(step(w_ptr))
            with m.Switch(w_ptr):
                for k in range(n):
                    with m.Case(k):
                        m.d.sync += flags[k].eq(self.w_data)
        with m.If(r):
            m.d.sync += r_ptr.eq(step(r_ptr))
        with m.If(w & ~r):
            m.d.sync += [level.eq(level + 1), self.w_rdy.eq(level != n - 1), self.r_rdy.eq(1)]
        with m.Elif(r & ~w):
            m.d.sync += [level.eq(level - 1), self.w_rdy.eq(1), self.r_rdy.eq(level != 1)]
        return m


class DMAReader(_DMABase):
    """Reads DRAM into a stream of bus-width beats.

    - ``cmd``: ``{addr, length}`` in bytes (see the module docstring for alignment).
    - ``o``: ``{data, last}``, one beat per bus beat, in address order; ``last`` marks a command's
      final beat. Backpressure on ``o`` fills a ``buffer_depth``-beat buffer, then holds RREADY low.
    - ``bus``: AR and R of an AXI4 manager; up to ``max_outstanding`` bursts are requested ahead
      of their data, which hides DRAM latency. All bursts use ID ``axi_id``, so they return in
      order.
    - ``busy``: a command is accepted and not all of its beats have left on ``o``.
    - ``stall_cycles``: a burst was requested and the buffer had room, but no beat came.
    """

    def __init__(self, config: EngineConfig, *, max_outstanding: int = 4, buffer_depth: int = 32,
                 axi_id: int = 0, id_width: int = 1):
        self.buffer_depth = buffer_depth
        dw = config.axi_data_width
        super().__init__(config, {
            "cmd": In(stream.Signature(command_layout(config.addr_width))),
            "o": Out(stream.Signature(read_beat_layout(dw))),
            "bus": Out(AXI4Signature(config.addr_width, dw, id_width, write=False)),
        }, max_outstanding=max_outstanding, axi_id=axi_id, id_width=id_width)

    def elaborate(self, platform) -> Module:
        m = Module()
        bus, dw = self.bus, self.config.axi_data_width
        m.submodules.split = split = BurstSplitter(self.config.addr_width, dw)
        wiring.connect(m, wiring.flipped(self.cmd), split.cmd)
        # One entry per burst requested and not yet fully returned: its depth is the limit on
        # outstanding bursts, and it remembers which burst's RLAST ends a command.
        m.submodules.inflight = inflight = _FlagQueue(self.max_outstanding)
        m.submodules.buffer = buffer = FastFIFO(width=dw + 1, depth=self.buffer_depth)

        issue = split.burst.valid & split.burst.ready
        m.d.comb += [
            split.burst.ready.eq((~bus.arvalid | bus.arready) & inflight.w_rdy),
            inflight.w_en.eq(issue),
            inflight.w_data.eq(split.burst.p.final),
        ]
        _drive_address(m, bus, "ar", split, issue, self.axi_id, bus.signature.size)

        took = bus.rvalid & bus.rready
        bad = bus.rresp[1]  # SLVERR or DECERR; EXOKAY is never asked for
        # RREADY is a register: high when the buffer had room for two beats a cycle before (at
        # most one came since), so it depends on no bus input in the same cycle.
        # (level + took <= depth - 2, read off the buffer's fill thermometer: no adder)
        m.d.sync += bus.rready.eq(Mux(took, buffer.at_most(self.buffer_depth - 3),
                                      buffer.at_most(self.buffer_depth - 2)))
        m.d.comb += [
            buffer.w_en.eq(took),
            buffer.w_data.eq(Cat(Mux(bad, 0, bus.rdata), bus.rlast & inflight.r_data)),
            inflight.r_en.eq(took & bus.rlast),
            self.o.valid.eq(buffer.r_rdy),
            self.o.payload.eq(buffer.r_data),
            buffer.r_en.eq(self.o.ready),
            self.busy.eq(split.active | bus.arvalid | inflight.r_rdy | (buffer.level != 0)),
        ]
        stalled = (bus.arvalid | inflight.r_rdy) & bus.rready & ~bus.rvalid
        _status(m, self.clear, self.error, took & bad, self.beats, took, self.stall_cycles, stalled)
        return m


class DMAWriter(_DMABase):
    """Writes a stream of bus-width beats with byte strobes to DRAM.

    - ``cmd``: ``{addr, length}`` in bytes (see the module docstring for alignment).
    - ``i``: ``{data, strb}``, one beat per bus beat, in address order; a byte whose ``strb`` bit
      is 0 is left as it is in DRAM (so two producers can fill the even and odd bytes of an
      interleaved ShuffleNet buffer). Beats wait until their command has been taken.
    - ``bus``: AW, W and B of an AXI4 manager; up to ``max_outstanding`` bursts await their B
      response. W beats may lead their AW (AXI4 allows it).
    - ``done``: one-cycle pulse once the B response of a command's last burst is in, which is when
      its data is in DRAM. Responses are in order (one ID), so commands complete in order.
    - ``busy``: a command is accepted and not all of its B responses are in.
    - ``stall_cycles``: a W beat waited for WREADY, or a beat on ``i`` waited because all
      ``max_outstanding`` bursts were sent and awaiting their B responses.
    """

    def __init__(self, config: EngineConfig, *, max_outstanding: int = 4, axi_id: int = 0,
                 id_width: int = 1):
        dw = config.axi_data_width
        super().__init__(config, {
            "cmd": In(stream.Signature(command_layout(config.addr_width))),
            "i": In(stream.Signature(write_beat_layout(dw))),
            "bus": Out(AXI4Signature(config.addr_width, dw, id_width, read=False)),
            "done": Out(1),
        }, max_outstanding=max_outstanding, axi_id=axi_id, id_width=id_width)

    def elaborate(self, platform) -> Module:
        m = Module()
        bus, dw = self.bus, self.config.axi_data_width
        m.submodules.split = split = BurstSplitter(self.config.addr_width, dw)
        wiring.connect(m, wiring.flipped(self.cmd), split.cmd)
        n = self.max_outstanding
        # AWLEN, until WLAST; buffered, so the W side's "last beat" compare reads a register
        m.submodules.w_bursts = w_bursts = FastFIFO(width=8, depth=n)
        # the final flag, until B (registered w_rdy / r_rdy: no level adder behind the issue)
        m.submodules.b_bursts = b_bursts = _FlagQueue(n)

        issue = split.burst.valid & split.burst.ready
        m.d.comb += [
            split.burst.ready.eq((~bus.awvalid | bus.awready) & w_bursts.w_rdy & b_bursts.w_rdy),
            w_bursts.w_en.eq(issue), w_bursts.w_data.eq(split.burst.p.len),
            b_bursts.w_en.eq(issue), b_bursts.w_data.eq(split.burst.p.final),
        ]
        _drive_address(m, bus, "aw", split, issue, self.axi_id, bus.signature.size)

        # W: a register stage fed by `i` for the burst at the head of w_bursts. The head is
        # popped the cycle after its last beat (`pop`, a register), that cycle taking no beat:
        # one idle cycle per burst, and no path from the bus through the FIFO's pointers.
        beat = Signal(8)  # index of the next beat within that burst
        last = beat == w_bursts.r_data
        load = self.i.valid & self.i.ready
        pop = Signal()
        m.d.sync += pop.eq(load & last)
        m.d.comb += [
            self.i.ready.eq((~bus.wvalid | bus.wready) & w_bursts.r_rdy & ~pop),
            w_bursts.r_en.eq(pop),
        ]
        with m.If(load):
            m.d.sync += [bus.wvalid.eq(1), bus.wdata.eq(self.i.p.data),
                         bus.wstrb.eq(self.i.p.strb), bus.wlast.eq(last),
                         beat.eq(Mux(last, 0, beat + 1))]
        with m.Elif(bus.wready):
            m.d.sync += bus.wvalid.eq(0)

        got = bus.bvalid & bus.bready
        m.d.comb += [
            bus.bready.eq(1),  # every burst we issued has room for its response
            b_bursts.r_en.eq(got),
            self.busy.eq(split.active | bus.awvalid | b_bursts.r_rdy),
        ]
        m.d.sync += self.done.eq(got & b_bursts.r_data)
        moved = bus.wvalid & bus.wready
        # Held up by the bus: a W beat waits for WREADY, or a beat is offered but every
        # outstanding slot is taken by bursts whose data is sent and whose B has not come.
        # (An AW waiting for AWREADY holds up nothing by itself: W may lead AW.)
        stalled = ((bus.wvalid & ~bus.wready) |
                   (self.i.valid & ~w_bursts.r_rdy & ~b_bursts.w_rdy))
        _status(m, self.clear, self.error, got & bus.bresp[1], self.beats, moved,
                self.stall_cycles, stalled)
        return m
