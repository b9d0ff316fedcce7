"""RowLoader: input rows into the line buffer, and DEFORM_DW's dilation row into its own buffer.

The line buffer (a `SplitBuffer`) keeps `geo.rows` input rows as they lie in DRAM: slot s holds a
row's enclosing bus beats from lane ``slot_base[s]`` (s * slot_words * line_word_bytes) on, and
the row starts ``skips[s]`` lanes in (validate.line_slot_words has the same sizing). Rows come in
as whole beats, one per cycle; the dilation row as bytes, of which each pixel's first is kept.

The window issuer reads both: the line buffer by lane through DEPTHWISE_ROW_TAPS ports (a
depthwise kernel row's taps at once; ``r_addr[k]``/``r_en``, a two-stage read
pipeline that moves on ``r_en``: ``r_data`` shows the read issued at the ``r_en`` before last,
two cycles after it when ``r_en`` stays high; the two words read are registered before the lane
shifter) and the dilation of pixel ``dil_addr`` on ``dil_data`` in the same cycle.
"""

from __future__ import annotations

from amaranth.hdl import Array, Module, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..spec.config import EngineConfig
from ..spec.isa import DEPTHWISE_ROW_TAPS
from .dma import read_beat_layout
from .geometry import geometry_layout
from .layouts import descriptor_layout
from .param_loader import byte_layout
from .split_buffer import SplitBuffer

__all__ = ["RowLoader"]


def n_slots(config: EngineConfig) -> int:
    return config.line_slots


class RowLoader(wiring.Component):
    """``start`` (a pulse, when the sequencer's row read is accepted): the next row goes to slot
    ``slot`` (``dilation``: it is the dilation row instead) and starts ``skip`` lanes into its
    first beat. ``beats``: the row's beats; ``bytes``: the dilation row's bytes."""

    def __init__(self, config: EngineConfig):
        self.config = config
        LW, depth = config.line_word_bytes, config.line_buffer_depth
        lanes = (LW * depth - 1).bit_length()
        S = n_slots(config)
        super().__init__({
            "beats": In(stream.Signature(read_beat_layout(config.axi_data_width))),
            "bytes": In(stream.Signature(byte_layout())),
            "start": In(1),
            "slot": In(range(S)),
            "dilation": In(1),
            "skip": In(range(config.bus_bytes)),
            "desc": In(descriptor_layout()),
            "geo": In(geometry_layout()),
            "slot_base": Out(data.ArrayLayout(unsigned(lanes), S)),
            "skips": Out(data.ArrayLayout(range(config.bus_bytes), S)),
            "r_addr": In(data.ArrayLayout(unsigned(lanes), DEPTHWISE_ROW_TAPS)),
            "r_en": In(1),
            "r_data": Out(data.ArrayLayout(unsigned(8 * LW), DEPTHWISE_ROW_TAPS)),
            "dil_addr": In(range(config.max_width)),
            "dil_data": Out(8),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        cfg = self.config
        LW, BB = cfg.line_word_bytes, cfg.bus_bytes
        S = n_slots(cfg)
        m.submodules.linebuf = lb = SplitBuffer(LW, 8, cfg.line_buffer_depth, read_register=True,
                                                reads=DEPTHWISE_ROW_TAPS)
        m.submodules.dil = dilmem = Memory(shape=unsigned(8), depth=cfg.max_width, init=[])
        dil_w = dilmem.write_port()
        dil_r = dilmem.read_port(domain="comb")
        m.d.comb += [lb.r_addr.eq(self.r_addr), lb.r_en.eq(self.r_en), self.r_data.eq(lb.r_data),
                     dil_r.addr.eq(self.dil_addr), self.dil_data.eq(dil_r.data)]

        # Slot bases: constant multiples of the layer's slot size, registered (no multiplier in
        # any address path); settled well before the layer's first row.
        slot_lanes = self.geo.slot_words * LW
        for s in range(S):
            m.d.sync += self.slot_base[s].eq(slot_lanes * s)

        # The row's start, registered first (its first beat is cycles away: the reader's command
        # stage, the DMA, the bus), so the sequencer's state decode that drives `start` ends here.
        start, slot, dil_row, skip = Signal(), Signal.like(self.slot), Signal(), Signal.like(self.skip)
        m.d.sync += [start.eq(self.start), slot.eq(self.slot), dil_row.eq(self.dilation), skip.eq(self.skip)]
        dilation = Signal()
        active = Signal()
        skips = Array(self.skips[s] for s in range(S))
        with m.If(start):
            m.d.sync += [dilation.eq(dil_row), active.eq(1)]
            with m.If(~dil_row):
                m.d.sync += skips[slot].eq(skip)

        # -- input row: raw beats into the slot ------------------------------------------------
        # The write address is a register: the slot's base when the row starts, a beat further on
        # after each beat (no slot mux or adder in front of the line buffer).
        w_ptr = Signal.like(lb.w_addr)
        beat_take = self.beats.valid & self.beats.ready
        with m.If(start):
            m.d.sync += w_ptr.eq(Array(self.slot_base[s] for s in range(S))[slot])
        with m.Elif(beat_take):
            m.d.sync += w_ptr.eq(w_ptr + BB)
        m.d.comb += [
            self.beats.ready.eq(active & ~dilation),
            lb.w_addr.eq(w_ptr), lb.w_data.eq(self.beats.p.data), lb.w_mask.eq((1 << BB) - 1),
            lb.w_en.eq(beat_take),
        ]
        # -- dilation row: the first byte of each pixel ----------------------------------------
        u_x, u_p = Signal(16), Signal(16)
        u_first = Signal()  # u_p == 0, a register: the write enable is the handshake and this
        ps_m1 = Signal(16)  # the dilation tensor's pixel stride minus one, registered
        m.d.sync += ps_m1.eq(self.desc.in1.pixel_stride - 1)
        u_take = self.bytes.valid & self.bytes.ready
        m.d.comb += [self.bytes.ready.eq(active & dilation),
                     dil_w.addr.eq(u_x), dil_w.data.eq(self.bytes.p.byte), dil_w.en.eq(u_take & u_first)]

        with m.If(start):
            m.d.sync += [u_x.eq(0), u_p.eq(0), u_first.eq(1)]
        with m.Else():
            with m.If(beat_take):
                with m.If(self.beats.p.last):
                    m.d.sync += active.eq(0)
            with m.If(u_take):
                with m.If(u_p == ps_m1):
                    m.d.sync += [u_p.eq(0), u_x.eq(u_x + 1), u_first.eq(1)]
                with m.Else():
                    m.d.sync += [u_p.eq(u_p + 1), u_first.eq(0)]
                with m.If(self.bytes.p.last):
                    m.d.sync += active.eq(0)
        return m
