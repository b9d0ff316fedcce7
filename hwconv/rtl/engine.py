"""EngineCore: runs a whole program (preamble + layer descriptors) from DRAM from one start.

Per layer, in order (docs/architecture.md, "The engine"):

1. fetch the 128-byte descriptor and check it (`DescriptorChecker`, the golden model's rules and
   error codes);
2. load the per-channel requant records into the params banks and the weights into the weight
   banks (bank o holds output channels o, o + P, ...; CONV words are [block][tap][in block] of P
   weights, depthwise words [block][tap] with one weight);
3. for each output row: bring the input rows it needs into the line buffer (row y in slot
   y % rows; rows already there stay), the deformable op's dilation row into its own buffer and
   ADD's second operand row into slot 1; then issue one (pixel, out block, tap, in block) per
   cycle to the P x P MAC array, whose finished blocks go through the requantiser into the store
   unit, which places each byte at its (possibly grouped, upsampled) address in a row buffer
   with byte strobes; the row buffer is then written back in full bursts, the strobes keeping
   every byte outside the tensor (other channels of a concat) as it was.

Every op is the same loop: CONV sums P x P products per cycle; DWCONV/DEFORM_DW multiply lane o
by its own channel's weight (the deformable tap reads (y + (ky-1)d, x + (kx-1)d) with d the
pixel's dilation, clamped to max_dilation); ADD is two taps weighted by add_mult0/1; COPY one tap
of weight 1; MAXPOOL keeps the running max. POOL and COPY pass the requantiser with identity
parameters (mult 1, shift 0, the type's range as clamp). Padding taps read 0 (the type's minimum
for MAXPOOL).

Channel-wise ops use a block of P channels as both line buffer word and output lanes, so the
array is square (pe_in == pe_out).
"""

from __future__ import annotations

from types import SimpleNamespace

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..spec.config import EngineConfig
from ..spec.isa import DESCRIPTOR_BYTES, PREAMBLE_BYTES, PREAMBLE_MAGIC, Flag, Opcode
from ..spec.params import REQUANT_RECORD_BYTES
from ..spec.program import FORMAT_VERSION
from ..spec.registers import ErrorCode
from .axi4 import AXI4Signature, connect_part
from .byte_reader import ByteReader
from .checker import DescriptorChecker
from .dma import DMAWriter
from .mac_array import MacArray
from .layouts import descriptor_layout, preamble_layout, requant_record_layout
from .requant import Requantizer
from .split_buffer import SplitBuffer

__all__ = ["EngineCore"]


def _log2(n: int) -> int:
    return n.bit_length() - 1


class EngineCore(wiring.Component):
    """The engine without its register file; `top.EngineTop` wires it to `ControlRegisters`."""

    def __init__(self, config: EngineConfig):
        if config.pe_in != config.pe_out:
            raise ValueError(f"the engine needs a square MAC array (channel-wise ops use one block "
                             f"of P channels in and out): pe_in={config.pe_in}, pe_out={config.pe_out}")
        self.config = config
        aw = config.addr_width
        super().__init__({
            "bus": Out(AXI4Signature(aw, config.axi_data_width)),
            "start": In(1),
            "soft_reset": In(1),
            "desc_base": In(aw),
            "params_base": In(aw),
            "params_size": In(32),
            "arena_base": In(aw),
            "arena_size": In(32),
            "perf_select": In(32),
            "busy": Out(1),
            "done": Out(1),
            "done_pulse": Out(1),
            "error": Out(8),
            "error_layer": Out(32),
            "layers_done": Out(32),
            "cycles": Out(64),
            "stall_cycles": Out(32),
            "perf_layer_cycles": Out(32),
            "perf_layer_macs": Out(64),
        })

    # ------------------------------------------------------------------------------------------
    def elaborate(self, platform) -> Module:  # noqa: C901 - one sequencer, read top to bottom
        m = Module()
        cfg = self.config
        P = cfg.pe_in
        LP = _log2(P)
        BB = cfg.bus_bytes
        LB = _log2(BB)
        aw = cfg.addr_width
        RB_HALF = cfg.row_buffer_bytes // 2
        deform_rows = 2 * cfg.max_dilation + 1
        LW = cfg.line_word_bytes
        RW = max(P, BB)  # row buffer word: a bus beat, or an output block if wider

        m.submodules.reader = reader = ByteReader(cfg)
        m.submodules.writer = writer = DMAWriter(cfg)
        m.submodules.checker = checker = DescriptorChecker(cfg)
        m.submodules.mac = mac = MacArray(cfg)
        m.submodules.rq = rq = Requantizer(cfg)
        m.submodules.out_fifo = out_fifo = SyncFIFOBuffered(width=P * 8, depth=8)
        connect_part(m, self.bus, reader.bus)
        connect_part(m, self.bus, writer.bus)

        # -- on-chip memories ------------------------------------------------------------------
        # Input rows as they lie in DRAM (from the beat each starts in), any P bytes per cycle.
        m.submodules.linebuf = lb = SplitBuffer(LW, 8, cfg.line_buffer_depth)
        wb_w, wb_r, pb_w, pb_r = [], [], [], []
        rec_layout = requant_record_layout()
        for o in range(P):
            wm = Memory(shape=unsigned(P * 8), depth=cfg.weight_depth, init=[])
            pm = Memory(shape=rec_layout, depth=-(-cfg.max_channels // P), init=[])
            m.submodules[f"weights{o}"] = wm
            m.submodules[f"params{o}"] = pm
            wb_w.append(wm.write_port())
            wb_r.append(wm.read_port())
            pb_w.append(pm.write_port())
            pb_r.append(pm.read_port())
        m.submodules.dil = dilmem = Memory(shape=unsigned(8), depth=cfg.max_width, init=[])
        dil_w = dilmem.write_port()
        dil_r = dilmem.read_port(domain="comb")
        # Output rows being assembled: 9-bit lanes, a byte and its write strobe.
        # Two halves with a write port each: the store fills one while the flush drains (and
        # clears the strobes of) the other.
        rb_words = cfg.row_buffer_bytes // RW // 2  # per half
        rbh = [SplitBuffer(RW, 9, rb_words) for _ in range(2)]
        m.submodules.rowbuf0, m.submodules.rowbuf1 = rbh
        sw = SimpleNamespace(w_en=Signal(), w_addr=Signal(32), w_data=Signal(RW * 9), w_mask=Signal(RW))
        fw = SimpleNamespace(w_en=Signal(), w_addr=Signal(32), w_data=Signal(RW * 9), w_mask=Signal(RW),
                             r_en=Signal(), r_addr=Signal(32))
        sw_half, f_half, clearing = Signal(), Signal(), Signal()
        m.submodules.perf_cycles = perf_cyc = Memory(shape=unsigned(32), depth=cfg.max_layers, init=[])
        m.submodules.perf_macs = perf_mac = Memory(shape=unsigned(64), depth=cfg.max_layers, init=[])
        pc_w, pc_r = perf_cyc.write_port(), perf_cyc.read_port()
        pm_w, pm_r = perf_mac.write_port(), perf_mac.read_port()
        m.d.comb += [pc_r.addr.eq(self.perf_select), pm_r.addr.eq(self.perf_select),
                     self.perf_layer_cycles.eq(pc_r.data), self.perf_layer_macs.eq(pm_r.data)]

        # -- run state -------------------------------------------------------------------------
        raw = Signal(DESCRIPTOR_BYTES * 8)
        desc = Signal(descriptor_layout())
        pre = preamble_layout()(raw)
        n_layers = Signal(32)
        layer = Signal(32)
        busy, done, abort = Signal(), Signal(), Signal()
        # A register, not decoded from the state: 4-state simulators see no X at time 0.
        done_pulse = Signal()
        m.d.sync += done_pulse.eq(0)
        m.d.comb += self.done_pulse.eq(done_pulse)
        error = Signal(8)
        cycles = Signal(64)
        layer_cycles = Signal(32)
        layer_macs = Signal(64)
        m.d.comb += [self.busy.eq(busy), self.done.eq(done), self.error.eq(error),
                     self.error_layer.eq(layer), self.cycles.eq(cycles),
                     self.stall_cycles.eq(reader.stall_cycles + writer.stall_cycles)]
        with m.If(busy):
            m.d.sync += [cycles.eq(cycles + 1), layer_cycles.eq(layer_cycles + 1)]
        with m.If(self.soft_reset & busy):
            m.d.sync += abort.eq(1)

        m.d.comb += [checker.desc.eq(desc), checker.arena_size.eq(self.arena_size),
                     checker.params_size.eq(self.params_size)]

        # -- layer geometry: the checker's record, held for the whole layer ----------------------
        geo = checker.geo
        is_conv, is_dw, is_deform, is_pool, is_add, is_copy = (geo.conv, geo.depthwise, geo.deform, geo.pool,
                                                               geo.add, geo.copy)
        upsample, in0_signed, in1_signed, out_signed = geo.upsample, geo.in0_signed, geo.in1_signed, geo.out_signed
        i0, i1, o = desc.in0, desc.in1, desc.out
        k = desc.kernel
        taps, cb_in, ob_n, cbi_n, ho, wo, rows = geo.taps, geo.cb_in, geo.ob_n, geo.cbi_n, geo.ho, geo.wo, geo.rows
        row_len0, row_len1, slot_words = geo.row_len0, geo.row_len1, geo.slot_words

        # -- the sequencer ---------------------------------------------------------------------
        oy = Signal(16)
        next_row = Signal(17)         # next in0 row to bring into the line buffer
        aux_pending = Signal()        # ADD: in0 + in1 rows of oy; DEFORM: the dilation row
        add_in0_pending = Signal()
        load_tensor = Signal()        # 0: in0, 1: in1
        load_slot = Signal(5)
        load_dil = Signal()
        clear_addr = Signal(range(rb_words + 1))
        next_slot = Signal(5)         # next_row % rows
        base_slot = Signal(5)         # (oy * stride - pad) % rows: the slot of the window's top row
        skips = Array(Signal(LB, name=f"skip{i}") for i in range(max(deform_rows, 3)))  # row start in its beat

        def mod_rows(v, subtractions=2):
            """v % rows for v < (subtractions + 1) * rows."""
            for _ in range(subtractions):
                v = Mux(v >= rows, v - rows, v)
            return v

        # byte reader commands
        rd_addr = Signal(aw)
        rd_len = Signal(32)
        m.d.comb += [reader.cmd.p.addr.eq(rd_addr), reader.cmd.p.length.eq(rd_len),
                     reader.clear.eq(self.start & ~busy), writer.clear.eq(self.start & ~busy)]

        # the unpacker's geometry: the tensor being loaded
        ld = Array([i0, i1])[load_tensor]

        # compute / store state shared with the datapath below
        issuing = Signal()
        issue_done = Signal()
        store_row_done = Signal()
        pipe_busy = Signal()
        store_start = Signal()
        flush_start = Signal()
        flush_done = Signal()
        flush_idle = Signal()
        next_row_step = Signal()

        in_rec, in_weights, in_rows = Signal(), Signal(), Signal()
        start_run = self.start & ~busy
        with m.FSM():
            with m.State("IDLE"):
                with m.If(start_run):
                    m.d.sync += [busy.eq(1), done.eq(0), error.eq(0), layer.eq(0), abort.eq(0),
                                 cycles.eq(0), clear_addr.eq(0)]
                    m.next = "CLEAR"
            with m.State("CLEAR"):  # strobes of a run cut short by a reset must not leak
                m.d.sync += clear_addr.eq(clear_addr + 1)
                m.d.comb += clearing.eq(1)
                with m.If(clear_addr == rb_words - 1):
                    m.next = "PRE_CMD"
            with m.State("PRE_CMD"):
                m.d.comb += [reader.cmd.valid.eq(1), rd_addr.eq(self.desc_base), rd_len.eq(PREAMBLE_BYTES)]
                with m.If(reader.cmd.ready):
                    m.next = "PRE_RECV"
            with m.State("PRE_RECV"):
                m.d.comb += reader.o.ready.eq(1)
                with m.If(reader.o.valid):
                    m.d.sync += raw.eq(Cat(raw[8:], reader.o.p.byte))
                    with m.If(reader.o.p.last):
                        m.next = "PRE_CHECK"
            with m.State("PRE_CHECK"):
                m.d.sync += n_layers.eq(pre.n_layers)
                with m.If(reader.error):
                    m.d.sync += error.eq(ErrorCode.AXI_ERROR)
                    m.next = "FINISH"
                with m.Elif(pre.magic != PREAMBLE_MAGIC):
                    m.d.sync += error.eq(ErrorCode.BAD_MAGIC)
                    m.next = "FINISH"
                with m.Elif(pre.version_major != FORMAT_VERSION[0]):
                    m.d.sync += error.eq(ErrorCode.VERSION_MISMATCH)
                    m.next = "FINISH"
                with m.Elif(pre.config_hash != cfg.config_hash):
                    m.d.sync += error.eq(ErrorCode.CONFIG_MISMATCH)
                    m.next = "FINISH"
                with m.Elif((pre.n_layers == 0) | (pre.n_layers > cfg.max_layers)):
                    m.d.sync += error.eq(ErrorCode.TOO_MANY_LAYERS)
                    m.next = "FINISH"
                with m.Else():
                    m.next = "DESC_CMD"
            with m.State("DESC_CMD"):
                m.d.sync += [layer_cycles.eq(0), layer_macs.eq(0)]
                m.d.comb += [rd_addr.eq(self.desc_base + PREAMBLE_BYTES + (layer << _log2(DESCRIPTOR_BYTES))),
                             rd_len.eq(DESCRIPTOR_BYTES), reader.cmd.valid.eq(~abort)]
                with m.If(abort):
                    m.next = "ABORTED"
                with m.Elif(reader.cmd.ready):
                    m.next = "DESC_RECV"
            with m.State("DESC_RECV"):
                m.d.comb += reader.o.ready.eq(1)
                with m.If(reader.o.valid):
                    m.d.sync += raw.eq(Cat(raw[8:], reader.o.p.byte))
                    with m.If(reader.o.p.last):
                        m.next = "DECODE"
            with m.State("DECODE"):
                m.d.sync += desc.eq(raw)
                known = 0
                for code in Opcode:
                    known = known | (raw[:8] == code)
                with m.If(reader.error):
                    m.d.sync += error.eq(ErrorCode.AXI_ERROR)
                    m.next = "FINISH"
                with m.Elif(~known):
                    m.d.sync += error.eq(ErrorCode.BAD_OPCODE)
                    m.next = "FINISH"
                with m.Else():
                    m.next = "CHECK"
            with m.State("CHECK"):
                m.d.comb += checker.start.eq(1)
                m.next = "CHECK_WAIT"
            with m.State("CHECK_WAIT"):
                with m.If(checker.done):
                    with m.If(checker.code != ErrorCode.NONE):
                        m.d.sync += error.eq(checker.code)
                        m.next = "FINISH"
                    with m.Elif(is_conv | is_dw | is_add):
                        m.next = "REC_CMD"
                    with m.Else():
                        m.next = "LAYER_SETUP"
            # requant records -> params banks
            with m.State("REC_CMD"):
                m.d.comb += [rd_addr.eq(self.params_base + desc.params_offset),
                             rd_len.eq(o.channels * REQUANT_RECORD_BYTES), reader.cmd.valid.eq(1)]
                with m.If(reader.cmd.ready):
                    m.next = "REC_RECV"
            with m.State("REC_RECV"):
                m.d.comb += [reader.o.ready.eq(1), in_rec.eq(1)]
                with m.If(reader.o.valid & reader.o.p.last):
                    with m.If(is_add):
                        m.next = "LAYER_SETUP"
                    with m.Else():
                        m.next = "W_CMD"
            # weights -> weight banks
            with m.State("W_CMD"):
                n_w = Signal(40)
                m.d.comb += [
                    n_w.eq(o.channels * taps * Mux(is_conv, i0.channels, 1)),
                    rd_addr.eq(self.params_base + desc.weights_offset),
                    rd_len.eq(Mux(desc.weight_bits == 8, n_w, (n_w + 1) >> 1)),
                    reader.cmd.valid.eq(1),
                ]
                with m.If(reader.cmd.ready):
                    m.next = "W_RECV"
            with m.State("W_RECV"):
                m.d.comb += in_weights.eq(1)  # reader.o.ready: the weight unpacker below
                with m.If(reader.o.valid & reader.o.ready & reader.o.p.last):
                    m.next = "LAYER_SETUP"
            with m.State("LAYER_SETUP"):
                m.d.sync += [oy.eq(0), next_row.eq(0), next_slot.eq(0), aux_pending.eq(is_add | is_deform),
                             add_in0_pending.eq(is_add),
                             base_slot.eq(Mux(is_deform | (desc.pad == 0), 0, rows - desc.pad))]
                m.next = "ROW_BEGIN"
            # rows of input for output row oy
            with m.State("ROW_BEGIN"):
                hi = Signal(signed(20))
                m.d.comb += hi.eq(Mux(is_deform, oy + cfg.max_dilation,
                                      Mux(is_copy, oy, (oy * desc.stride) - desc.pad + k - 1)))
                with m.If(abort):
                    m.next = "ABORTED"
                with m.Elif(is_add & add_in0_pending):
                    m.d.sync += [load_tensor.eq(0), load_slot.eq(0), load_dil.eq(0), add_in0_pending.eq(0)]
                    m.next = "LOAD_CMD"
                with m.Elif(~is_add & (next_row < i0.height) & (next_row <= hi)):
                    m.d.sync += [load_tensor.eq(0), load_slot.eq(next_slot), load_dil.eq(0),
                                 next_row.eq(next_row + 1), next_slot.eq(mod_rows(next_slot + 1, 1))]
                    m.next = "LOAD_CMD"
                with m.Elif(aux_pending):
                    m.d.sync += [load_tensor.eq(1), load_slot.eq(1), load_dil.eq(is_deform), aux_pending.eq(0)]
                    m.next = "LOAD_CMD"
                with m.Else():
                    m.d.comb += store_start.eq(1)
                    m.next = "COMPUTE"
            with m.State("LOAD_CMD"):
                row = Mux(is_add | load_tensor, oy, next_row - 1)
                m.d.comb += [
                    rd_addr.eq(self.arena_base + ld.addr + row * ld.width * ld.pixel_stride),
                    rd_len.eq(Mux(load_tensor, row_len1, row_len0)),
                    reader.raw.eq(~load_dil),
                    reader.cmd.valid.eq(1),
                ]
                with m.If(reader.cmd.ready):
                    with m.If(~load_dil):
                        m.d.sync += skips[load_slot].eq(rd_addr[:LB])
                    m.next = "LOAD_RECV"
            with m.State("LOAD_RECV"):
                m.d.comb += in_rows.eq(1)  # reader ready: the row writer / dilation unpacker below
                with m.If(load_dil & reader.o.valid & reader.o.p.last
                          | ~load_dil & reader.beats.valid & reader.beats.p.last):
                    m.next = "ROW_BEGIN"
            with m.State("COMPUTE"):
                m.d.comb += issuing.eq(1)
                with m.If(issue_done):
                    m.next = "DRAIN"
            with m.State("DRAIN"):
                # The row goes out while the next one is loaded and computed into the other half
                # of the row buffer; an upsampled row fills both halves, so it waits for its flush.
                with m.If(~pipe_busy & store_row_done & flush_idle):
                    m.d.comb += flush_start.eq(1)
                    with m.If(upsample):
                        m.next = "FLUSH"
                    with m.Else():
                        m.d.comb += next_row_step.eq(1)
                        m.next = "ROW_BEGIN"
                        with m.If(oy + 1 == ho):
                            m.next = "LAYER_END"
            with m.State("FLUSH"):
                with m.If(flush_done):
                    m.d.comb += next_row_step.eq(1)
                    m.next = "ROW_BEGIN"
                    with m.If(oy + 1 == ho):
                        m.next = "LAYER_END"
            with m.State("LAYER_END"):
                m.d.comb += [pc_w.addr.eq(layer), pc_w.data.eq(layer_cycles), pc_w.en.eq(flush_idle),
                             pm_w.addr.eq(layer), pm_w.data.eq(layer_macs), pm_w.en.eq(flush_idle)]
                with m.If(flush_idle):  # the last row's flush is done: the next layer may read it
                    with m.If(reader.error | writer.error):
                        m.d.sync += error.eq(ErrorCode.AXI_ERROR)
                        m.next = "FINISH"
                    with m.Else():
                        m.d.sync += layer.eq(layer + 1)
                        with m.If(layer + 1 == n_layers):
                            m.next = "FINISH"
                        with m.Else():
                            m.next = "DESC_CMD"
            with m.State("FINISH"):
                m.d.sync += [busy.eq(0), done.eq(1), done_pulse.eq(1)]
                m.next = "IDLE"
            with m.State("ABORTED"):
                with m.If(flush_idle):
                    m.d.sync += [busy.eq(0), abort.eq(0)]
                    m.next = "IDLE"
        with m.If(next_row_step):
            m.d.sync += [oy.eq(oy + 1), aux_pending.eq(is_add | is_deform), add_in0_pending.eq(is_add),
                         # one row kept (1x1 kernels, up to stride 4): always slot 0
                         base_slot.eq(Mux(rows == 1, 0, mod_rows(base_slot + Mux(is_deform, 1, desc.stride))))]
        m.d.comb += self.layers_done.eq(layer)


        new_layer = Signal()
        m.d.comb += new_layer.eq(busy & (layer_cycles == 0))

        # -- requant records -> params banks (REC_RECV) ---------------------------------------
        rec = Signal(64)
        rec_i = Signal(3)
        rec_c = Signal(16)
        rec_full = Cat(rec[8:], reader.o.p.byte)
        rec_take = in_rec & reader.o.valid
        with m.If(new_layer):
            m.d.sync += [rec_i.eq(0), rec_c.eq(0)]
        with m.Elif(rec_take):
            m.d.sync += [rec.eq(rec_full), rec_i.eq(rec_i + 1)]
            with m.If(rec_i == 7):
                m.d.sync += rec_c.eq(rec_c + 1)
        for b in range(P):
            m.d.comb += [pb_w[b].addr.eq(rec_c >> LP), pb_w[b].data.eq(rec_full),
                         pb_w[b].en.eq(rec_take & (rec_i == 7) & (rec_c[:LP] == b))]

        # -- weights -> weight banks (W_RECV) ---------------------------------------------------
        w_o, w_t, w_ci, w_cb = Signal(16), Signal(5), Signal(16), Signal(16)
        w_lane = Signal(range(P))
        w_high = Signal()
        w_stage = Signal(P * 8)
        cin_eff = Mux(is_conv, i0.channels, 1)
        cbw = Mux(is_conv, cb_in, 1)
        byte = reader.o.p.byte
        nib = Mux(w_high, byte[4:8], byte[0:4])
        w_val = Mux(desc.weight_bits == 8, byte, Cat(nib, nib[3].replicate(4)))
        # 4-bit weights go two per cycle (the whole byte) when both land in the same word.
        hi_nib = byte[4:8]
        w_pair = (desc.weight_bits == 4) & ~w_high & (w_lane != P - 1) & (w_ci + 1 < cin_eff)
        w_n = Mux(w_pair, 2, 1)
        w_last_in_chan = w_ci + w_n - 1 == cin_eff - 1
        w_last = (w_o == o.channels - 1) & (w_t == taps - 1) & w_last_in_chan
        w_take = in_weights & reader.o.valid
        with m.If(in_weights):
            m.d.comb += reader.o.ready.eq((desc.weight_bits == 8) | w_high | w_last | w_pair)
        with m.If(in_rows):
            m.d.comb += reader.o.ready.eq(1)
        w_word = Cat(*[Mux(w_lane == j, w_val,
                           Mux(w_pair & (w_lane + 1 == j), Cat(hi_nib, hi_nib[3].replicate(4)),
                               w_stage[8 * j:8 * j + 8])) for j in range(P)])
        w_commit = (w_lane + w_n - 1 == P - 1) | w_last_in_chan
        with m.If(new_layer):
            m.d.sync += [w_o.eq(0), w_t.eq(0), w_ci.eq(0), w_cb.eq(0), w_lane.eq(0), w_high.eq(0), w_stage.eq(0)]
        with m.Elif(w_take):
            m.d.sync += w_high.eq((desc.weight_bits == 4) & ~w_high & ~w_last & ~w_pair)
            with m.If(w_commit):
                m.d.sync += [w_stage.eq(0), w_lane.eq(0), w_cb.eq(w_cb + 1)]
            with m.Else():
                m.d.sync += [w_stage.eq(w_word), w_lane.eq(w_lane + w_n)]
            with m.If(w_last_in_chan):
                m.d.sync += [w_ci.eq(0), w_cb.eq(0)]
                with m.If(w_t == taps - 1):
                    m.d.sync += [w_t.eq(0), w_o.eq(w_o + 1)]
                with m.Else():
                    m.d.sync += w_t.eq(w_t + 1)
            with m.Else():
                m.d.sync += w_ci.eq(w_ci + w_n)
        w_addr = Signal(range(cfg.weight_depth))  # one address for all banks: one multiplier
        m.d.comb += w_addr.eq(((w_o >> LP) * taps + w_t) * cbw + w_cb)
        for b in range(P):
            m.d.comb += [wb_w[b].addr.eq(w_addr), wb_w[b].data.eq(w_word),
                         wb_w[b].en.eq(w_take & w_commit & (w_o[:LP] == b))]

        # -- input rows -> line buffer, raw beats (LOAD_RECV) ---------------------------------
        # Slot s holds a row's enclosing beats from lane s * slot_words * LW on; the row starts
        # skips[s] lanes in (validate.line_slot_words has the same sizing).
        bk = Signal(16)  # beat of the row
        beat_take = in_rows & ~load_dil & reader.beats.valid
        m.d.comb += [
            reader.beats.ready.eq(in_rows & ~load_dil),
            lb.w_addr.eq(load_slot * slot_words * LW + (bk << LB)),
            lb.w_data.eq(reader.beats.p.data), lb.w_mask.eq((1 << BB) - 1), lb.w_en.eq(beat_take),
        ]
        with m.If(~in_rows):
            m.d.sync += bk.eq(0)
        with m.Elif(beat_take):
            m.d.sync += bk.eq(bk + 1)

        # -- dilation row -> dilation buffer, bytes (LOAD_RECV of DEFORM_DW's in1) --------------
        u_x, u_p = Signal(16), Signal(16)
        u_take = in_rows & load_dil & reader.o.valid
        with m.If(~in_rows):
            m.d.sync += [u_x.eq(0), u_p.eq(0)]
        with m.Elif(u_take):
            with m.If(u_p == i1.pixel_stride - 1):
                m.d.sync += [u_p.eq(0), u_x.eq(u_x + 1)]
            with m.Else():
                m.d.sync += u_p.eq(u_p + 1)
        m.d.comb += [dil_w.addr.eq(u_x), dil_w.data.eq(byte), dil_w.en.eq(u_take & (u_p == 0))]

        # -- compute: issue one (pixel, out block, tap, in block) per cycle -------------------
        c_ox, c_ob, c_t, c_cb = Signal(16), Signal(16), Signal(5), Signal(16)
        c_ky, c_kx = Signal(2), Signal(2)
        issued_all = Signal()
        s1_valid, s1_first, s1_last, s1_inb, s1_tap1 = Signal(), Signal(), Signal(), Signal(), Signal()
        s1_ob = Signal(16)
        adv = Signal()
        m.d.comb += adv.eq(mac.i.ready)
        issue = Signal()
        m.d.comb += [issue.eq(issuing & adv & ~issued_all), issue_done.eq(issued_all)]

        m.d.comb += dil_r.addr.eq(c_ox)
        dil = Mux(dil_r.data > cfg.max_dilation, cfg.max_dilation, dil_r.data)
        iy, ix = Signal(signed(20)), Signal(signed(20))
        m.d.comb += [
            # ADD's two taps are its two operands at the same pixel, not a window.
            iy.eq(Mux(is_deform, oy - dil + c_ky * dil, Mux(is_add, oy, oy * desc.stride - desc.pad + c_ky))),
            ix.eq(Mux(is_deform, c_ox - dil + c_kx * dil, Mux(is_add, c_ox, c_ox * desc.stride - desc.pad + c_kx))),
        ]
        inb = (iy >= 0) & (iy < i0.height) & (ix >= 0) & (ix < i0.width)
        # The slot of row iy: the window's top row is in base_slot (deformable: the centre row).
        d_slot = Signal(signed(8))
        m.d.comb += d_slot.eq(base_slot + (c_ky - 1) * dil)
        d_slot_fixed = Mux(d_slot < 0, d_slot + rows, Mux(d_slot >= rows, d_slot - rows, d_slot))
        slot = Signal(5)
        m.d.comb += slot.eq(Mux(is_add, c_t[0], Mux(is_deform, d_slot_fixed, mod_rows(base_slot + c_ky, 1))))
        ps_t = Mux(is_add & c_t[0], i1.pixel_stride, i0.pixel_stride)
        m.d.comb += [lb.r_addr.eq(slot * slot_words * LW + skips[slot] + ix[:16] * ps_t
                                  + (Mux(is_conv, c_cb, c_ob) << LP)),
                     lb.r_en.eq(adv)]
        r_addr = Signal(range(cfg.weight_depth))
        m.d.comb += r_addr.eq((c_ob * taps + c_t) * cbw + c_cb)
        for b in range(P):
            m.d.comb += [wb_r[b].addr.eq(r_addr), wb_r[b].en.eq(adv)]
        last_tap = c_t == taps - 1
        last_cb = c_cb == cbi_n - 1
        n_in = Signal(16)
        n_out = Signal(16)
        m.d.comb += [
            n_in.eq(Mux(i0.channels - (c_cb << LP) >= P, P, i0.channels - (c_cb << LP))),
            n_out.eq(Mux(o.channels - (c_ob << LP) >= P, P, o.channels - (c_ob << LP))),
        ]
        with m.If(store_start):
            m.d.sync += [c_ox.eq(0), c_ob.eq(0), c_t.eq(0), c_cb.eq(0), c_ky.eq(0), c_kx.eq(0), issued_all.eq(0)]
        with m.Elif(issue):
            m.d.sync += layer_macs.eq(layer_macs + Mux(is_conv, n_in * n_out, Mux(is_dw, n_out, 0)))
            with m.If(~last_cb):
                m.d.sync += c_cb.eq(c_cb + 1)
            with m.Else():
                m.d.sync += c_cb.eq(0)
                with m.If(~last_tap):
                    m.d.sync += c_t.eq(c_t + 1)
                    with m.If(c_kx == k - 1):
                        m.d.sync += [c_kx.eq(0), c_ky.eq(c_ky + 1)]
                    with m.Else():
                        m.d.sync += c_kx.eq(c_kx + 1)
                with m.Else():
                    m.d.sync += [c_t.eq(0), c_kx.eq(0), c_ky.eq(0)]
                    with m.If(c_ob != ob_n - 1):
                        m.d.sync += c_ob.eq(c_ob + 1)
                    with m.Else():
                        m.d.sync += c_ob.eq(0)
                        with m.If(c_ox == wo - 1):
                            m.d.sync += issued_all.eq(1)
                        with m.Else():
                            m.d.sync += c_ox.eq(c_ox + 1)
        with m.If(adv):
            m.d.sync += [s1_valid.eq(issue), s1_first.eq((c_t == 0) & (c_cb == 0)), s1_last.eq(last_tap & last_cb),
                         s1_inb.eq(inb), s1_tap1.eq(c_t[0]), s1_ob.eq(c_ob)]

        # -- the MAC array, then the output block's requant records ------------------------------
        m.d.comb += [mac.mode.conv.eq(is_conv), mac.mode.depthwise.eq(is_dw), mac.mode.add.eq(is_add),
                     mac.mode.pool.eq(is_pool), mac.mode.in0_signed.eq(in0_signed),
                     mac.mode.in1_signed.eq(in1_signed), mac.mode.add_mult0.eq(desc.add_mult0),
                     mac.mode.add_mult1.eq(desc.add_mult1),
                     mac.i.valid.eq(s1_valid), mac.i.p.x.eq(lb.r_data[:8 * P]),
                     mac.i.p.w.eq(Cat(*[wb_r[b].data for b in range(P)])), mac.i.p.in_bounds.eq(s1_inb),
                     mac.i.p.second.eq(s1_tap1), mac.i.p.first.eq(s1_first), mac.i.p.last.eq(s1_last),
                     mac.i.p.tag.eq(s1_ob)]
        # One stage that reads the records of the finished block's channels (by its tag).
        lk_valid = Signal()
        lk_acc = Signal.like(mac.o.p.acc)
        lk_adv = ~lk_valid | rq.i.ready
        m.d.comb += mac.o.ready.eq(lk_adv)
        with m.If(lk_adv):
            m.d.sync += [lk_valid.eq(mac.o.valid), lk_acc.eq(mac.o.p.acc)]
        for b in range(P):
            m.d.comb += [pb_r[b].addr.eq(mac.o.p.tag), pb_r[b].en.eq(lk_adv)]

        identity = is_pool | is_copy
        m.d.comb += [
            rq.i.valid.eq(lk_valid),
            rq.clamp_lo.eq(Mux(identity, Mux(out_signed, -(1 << (cfg.act_bits - 1)), 0), desc.clamp_lo)),
            rq.clamp_hi.eq(Mux(identity, Mux(out_signed, (1 << (cfg.act_bits - 1)) - 1, (1 << cfg.act_bits) - 1),
                               desc.clamp_hi)),
        ]
        for b in range(P):
            lane = rq.i.payload[b]
            rec_b = pb_r[b].data
            m.d.comb += [lane.acc.eq(lk_acc[b]),
                         lane.bias.eq(Mux(identity, 0, rec_b.bias)),
                         lane.mult.eq(Mux(identity, 1, rec_b.mult)),
                         lane.shift.eq(Mux(identity, 0, rec_b.shift))]
        m.d.comb += [out_fifo.w_en.eq(rq.o.valid), out_fifo.w_data.eq(Cat(*rq.o.payload)),
                     rq.o.ready.eq(out_fifo.w_rdy)]

        # -- store: place each output byte in the row buffer -------------------------------------
        row_stride_out = Signal(32)
        row_a = Signal(aw)
        row_span = Signal(32)
        m.d.comb += [row_stride_out.eq(o.width * o.pixel_stride),
                     row_a.eq(self.arena_base + o.addr + Mux(upsample, oy << 1, oy) * row_stride_out),
                     row_span.eq((o.width - 1) * o.pixel_stride + geo.out_reach)]
        align_a = Signal(LB)
        align_b = Signal(LB)
        with m.If(store_start):
            m.d.sync += [align_a.eq(row_a[:LB]), align_b.eq((row_a + row_stride_out)[:LB])]
        st_ox, st_ob, st_pix, st_grp, st_r = Signal(16), Signal(16), Signal(32), Signal(32), Signal(16)
        st_j = Signal(range(P))
        st_u = Signal(2)
        st_h = Signal()  # which half of the block (two-way interleaved outputs)
        st_done = Signal()
        st_c = (st_ob << LP) + st_j
        st_valid_c = st_c < o.channels
        st_byte = out_fifo.r_data.word_select(st_j, 8)
        st_active = out_fifo.r_rdy & ~st_done & busy
        # An output whose channels are one run takes a whole block per cycle (per copy when
        # upsampling); a grouped one (ShuffleNet's interleaved stores) one byte per cycle.
        run = o.group_channels == o.channels
        half = P // 2
        pair = ((o.group_channels == 1) & (o.group_stride == 2) & ~run) if half else Const(0)
        n_valid = Signal(range(P + 1))
        m.d.comb += n_valid.eq(Mux(o.channels - (st_ob << LP) >= P, P, o.channels - (st_ob << LP)))
        m.d.comb += sw_half.eq(Mux(upsample, st_u[1], oy[0]))  # upsampled: a half per output row
        pos = Mux(upsample & st_u[1], align_b, align_a) + st_pix + Mux(st_u[0], o.pixel_stride, 0)
        block = Cat(*[Cat(out_fifo.r_data.word_select(j, 8), 1) for j in range(P)])
        with m.If(st_active & run):
            m.d.comb += [sw.w_addr.eq(pos + (st_ob << LP)), sw.w_data.eq(block),
                         sw.w_mask.eq((1 << n_valid) - 1), sw.w_en.eq(1)]
        with m.If(st_active & ~run & ~pair):
            m.d.comb += [sw.w_addr.eq(pos + st_grp + st_r), sw.w_data.eq(Cat(st_byte, 1)),
                         sw.w_mask.eq(st_valid_c), sw.w_en.eq(1)]
        # Two-way interleaved outputs (group_channels 1, group_stride 2: ShuffleNet's shuffle) take
        # half a block per cycle: its bytes two lanes apart span no more than a block's lanes.
        if half:
            hb = Signal(16)
            m.d.comb += hb.eq((st_ob << LP) + Mux(st_h, half, 0))
            halves = [out_fifo.r_data[8 * half * h: 8 * half * (h + 1)] for h in range(2)]
            sel = Mux(st_h, halves[1], halves[0])
            with m.If(st_active & pair):
                m.d.comb += [
                    sw.w_addr.eq(pos + (hb << 1)),
                    sw.w_data.eq(Cat(*[Cat(sel[8 * j:8 * j + 8], 1, Const(0, 9)) for j in range(half)])),
                    sw.w_mask.eq(Cat(*[Cat(hb + j < o.channels, 0) for j in range(half)])),
                    sw.w_en.eq(1),
                ]
        next_chan = st_active & (~st_valid_c | ~upsample | (st_u == 3))
        next_block = st_active & (~upsample | (st_u == 3)) & (~pair | st_h)
        with m.If(store_start):
            m.d.sync += [st_ox.eq(0), st_ob.eq(0), st_pix.eq(0), st_grp.eq(0), st_r.eq(0), st_j.eq(0), st_h.eq(0),
                         st_u.eq(0), st_done.eq(0)]
        with m.Elif(st_active & (run | pair)):
            with m.If(~next_block):
                m.d.sync += st_u.eq(st_u + 1)
                with m.If(pair & (~upsample | (st_u == 3))):
                    m.d.sync += [st_u.eq(0), st_h.eq(1)]
            with m.Else():
                m.d.sync += [st_u.eq(0), st_h.eq(0)]
                m.d.comb += out_fifo.r_en.eq(1)
                with m.If(st_ob == ob_n - 1):
                    m.d.sync += [st_ob.eq(0), st_ox.eq(st_ox + 1),
                                 st_pix.eq(st_pix + Mux(upsample, o.pixel_stride << 1, o.pixel_stride))]
                    with m.If(st_ox == wo - 1):
                        m.d.sync += st_done.eq(1)
                with m.Else():
                    m.d.sync += st_ob.eq(st_ob + 1)
        with m.Elif(st_active):
            with m.If(~next_chan):
                m.d.sync += st_u.eq(st_u + 1)
            with m.Else():
                m.d.sync += st_u.eq(0)
                with m.If(st_r == o.group_channels - 1):
                    m.d.sync += [st_r.eq(0), st_grp.eq(st_grp + o.group_stride)]
                with m.Else():
                    m.d.sync += st_r.eq(st_r + 1)
                with m.If(st_j == P - 1):
                    m.d.comb += out_fifo.r_en.eq(1)
                    m.d.sync += st_j.eq(0)
                    with m.If(st_ob == ob_n - 1):
                        m.d.sync += [st_ob.eq(0), st_ox.eq(st_ox + 1), st_grp.eq(0), st_r.eq(0),
                                     st_pix.eq(st_pix + Mux(upsample, o.pixel_stride << 1, o.pixel_stride))]
                        with m.If(st_ox == wo - 1):
                            m.d.sync += st_done.eq(1)
                    with m.Else():
                        m.d.sync += st_ob.eq(st_ob + 1)
                with m.Else():
                    m.d.sync += st_j.eq(st_j + 1)
        m.d.comb += [store_row_done.eq(st_done), pipe_busy.eq(s1_valid | mac.busy | lk_valid)]

        # -- flush: row buffer -> DRAM in bursts, strobes keep what is not ours ------------------
        # The row's addresses are latched at the start: the sequencer moves on to the next row.
        fl_half = Signal()
        fl_word = Signal(range(rb_words + 1))
        fl_dones = Signal(2)
        fl_two = Signal()  # an upsampled row: two output rows, one per half
        fl_a_addr, fl_b_addr = Signal(aw), Signal(aw)
        fl_a_beats, fl_b_beats = Signal(32), Signal(32)
        fl_a_half = Signal()
        fl_addr = Mux(fl_half, fl_b_addr, fl_a_addr)
        fl_beats = Mux(fl_half, fl_b_beats, fl_a_beats)
        fl_lane = fl_word << LB
        row_b = row_a + row_stride_out
        with m.If(flush_start):
            m.d.sync += [fl_a_addr.eq(row_a), fl_b_addr.eq(row_b), fl_two.eq(upsample),
                         fl_a_beats.eq((row_a[:LB] + row_span + BB - 1) >> LB),
                         fl_b_beats.eq((row_b[:LB] + row_span + BB - 1) >> LB),
                         fl_a_half.eq(~upsample & oy[0])]
        with m.If(writer.done):
            m.d.sync += fl_dones.eq(fl_dones + 1)
        m.d.comb += f_half.eq(Mux(fl_half, 1, fl_a_half))
        for h, buf in enumerate(rbh):
            with m.If(clearing):
                m.d.comb += [buf.w_addr.eq(clear_addr * RW), buf.w_data.eq(0), buf.w_mask.eq(-1), buf.w_en.eq(1)]
            with m.Elif(fw.w_en & (f_half == h)):
                m.d.comb += [buf.w_addr.eq(fw.w_addr), buf.w_data.eq(fw.w_data), buf.w_mask.eq(fw.w_mask),
                             buf.w_en.eq(1)]
            with m.Elif(sw.w_en & (sw_half == h)):
                m.d.comb += [buf.w_addr.eq(sw.w_addr), buf.w_data.eq(sw.w_data), buf.w_mask.eq(sw.w_mask),
                             buf.w_en.eq(1)]
            m.d.comb += [buf.r_addr.eq(fw.r_addr), buf.r_en.eq(fw.r_en & (f_half == h))]
        fr_data = Mux(f_half, rbh[1].r_data, rbh[0].r_data)
        with m.FSM(name="flush"):
            with m.State("IDLE"):
                m.d.comb += flush_idle.eq(1)
                with m.If(flush_start):
                    m.d.sync += [fl_half.eq(0), fl_word.eq(0), fl_dones.eq(0)]
                    m.next = "CMD"
            with m.State("CMD"):
                m.d.comb += [writer.cmd.valid.eq(1), writer.cmd.p.addr.eq(fl_addr >> LB << LB),
                             writer.cmd.p.length.eq(fl_beats << LB)]
                with m.If(writer.cmd.ready):
                    m.d.sync += fl_word.eq(0)
                    m.next = "READ"
            with m.State("READ"):
                m.d.comb += [fw.r_addr.eq(fl_lane), fw.r_en.eq(1)]
                m.next = "BEAT"
            with m.State("BEAT"):
                lanes = [fr_data[9 * j:9 * j + 9] for j in range(BB)]
                m.d.comb += [writer.i.valid.eq(1), writer.i.p.data.eq(Cat(*[v[:8] for v in lanes])),
                             writer.i.p.strb.eq(Cat(*[v[8] for v in lanes]))]
                with m.If(writer.i.ready):  # clear the strobes behind us: the next row starts empty
                    m.d.comb += [fw.w_addr.eq(fl_lane), fw.w_data.eq(0), fw.w_mask.eq((1 << BB) - 1),
                                 fw.w_en.eq(1)]
                    m.d.sync += fl_word.eq(fl_word + 1)
                    with m.If(fl_word == fl_beats - 1):
                        with m.If(fl_two & ~fl_half):
                            m.d.sync += fl_half.eq(1)
                            m.next = "CMD"
                        with m.Else():
                            m.next = "WAIT"
                    with m.Else():  # read the next word now: one beat per cycle
                        m.d.comb += [fw.r_addr.eq(fl_lane + BB), fw.r_en.eq(1)]
            with m.State("WAIT"):
                with m.If(fl_dones == Mux(fl_two, 2, 1)):
                    m.d.comb += flush_done.eq(1)
                    m.next = "IDLE"
        return m
