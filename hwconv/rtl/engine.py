"""EngineCore: runs a whole program (preamble + layer descriptors) from DRAM from one start.

This module is the sequencer (preamble and descriptor fetch, the layer and row loops) and the
wiring of the engine's units (docs/notes/engine_units.md has the diagram):

- `DescriptorChecker` checks each descriptor with the golden model's rules and error codes and
  computes the layer geometry record (`geometry.py`) every unit reads;
- `ParamLoader` unpacks the requant records and weights into their banks (bank o holds output
  channels o, o + P, ...) and joins each finished block with its records;
- `RowLoader` brings input rows into the line buffer (row y in slot y % rows; rows already there
  stay), DEFORM_DW's dilation row into its buffer and ADD's second operand row into slot 1;
- `WindowIssuer` issues one (pixel, out block, tap, in block) per cycle to the `MacArray`, whose
  finished blocks go (with their records) through the `Requantizer` into the `Store`, which
  places each byte at its (possibly grouped, upsampled) address in a row buffer with byte
  strobes; the `RowFlusher` writes the row back in full bursts, the strobes keeping every byte
  outside the tensor (other channels of a concat) as it was;
- `PerfCounters` keep the run's and each layer's cycles and MACs.

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

from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ..spec.config import EngineConfig
from ..spec.isa import DESCRIPTOR_BYTES, PREAMBLE_BYTES, PREAMBLE_MAGIC, Opcode
from ..spec.params import REQUANT_RECORD_BYTES
from ..spec.program import FORMAT_VERSION
from ..spec.registers import ErrorCode
from .axi4 import AXI4Signature, connect_part
from .byte_reader import ByteReader
from .checker import DescriptorChecker
from .dma import DMAWriter
from .mac_array import MacArray
from .onehot import OneHotFSM
from .param_loader import ParamLoader
from .perf_counters import PerfCounters
from .row_flusher import RowFlusher
from .row_loader import RowLoader
from .store import Store
from .window_issuer import WindowIssuer
from .layouts import descriptor_layout, preamble_layout
from .requant import Requantizer

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
        LB = _log2(cfg.bus_bytes)
        aw = cfg.addr_width

        m.submodules.reader = reader = ByteReader(cfg)
        m.submodules.writer = writer = DMAWriter(cfg)
        m.submodules.checker = checker = DescriptorChecker(cfg)
        m.submodules.params = pl = ParamLoader(cfg)
        m.submodules.issuer = wi = WindowIssuer(cfg)
        m.submodules.mac = mac = MacArray(cfg)
        m.submodules.rq = rq = Requantizer(cfg)
        connect_part(m, self.bus, reader.bus)
        connect_part(m, self.bus, writer.bus)

        # -- on-chip memories ------------------------------------------------------------------
        # Input rows as they lie in DRAM (from the beat each starts in), any P bytes per cycle.
        m.submodules.rows = rl = RowLoader(cfg)
        # Output rows: placed by the store into the row buffer, which the flusher writes back.
        m.submodules.store = st = Store(cfg)
        m.submodules.flusher = fl = RowFlusher(cfg)
        m.submodules.perf = perf = PerfCounters(cfg)
        m.d.comb += [perf.select.eq(self.perf_select), self.perf_layer_cycles.eq(perf.sel_cycles),
                     self.perf_layer_macs.eq(perf.sel_macs)]

        # -- run state -------------------------------------------------------------------------
        raw = Signal(DESCRIPTOR_BYTES * 8)
        desc = Signal(descriptor_layout())
        pre = preamble_layout()(raw)
        layer = Signal(32)
        busy, done, abort = Signal(), Signal(), Signal()
        # A register, not decoded from the state: 4-state simulators see no X at time 0.
        done_pulse = Signal()
        m.d.sync += done_pulse.eq(0)
        m.d.comb += self.done_pulse.eq(done_pulse)
        error = Signal(8)
        m.d.comb += [self.busy.eq(busy), self.done.eq(done), self.error.eq(error),
                     self.error_layer.eq(layer), self.cycles.eq(perf.cycles), perf.busy.eq(busy), perf.layer.eq(layer),
                     self.stall_cycles.eq(reader.stall_cycles + writer.stall_cycles)]
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
        ho, rows = geo.ho, geo.rows

        # -- the sequencer ---------------------------------------------------------------------
        oy = Signal(16)
        next_row = Signal(17)         # next in0 row to bring into the line buffer
        aux_pending = Signal()        # ADD: in0 + in1 rows of oy; DEFORM: the dilation row
        add_in0_pending = Signal()
        load_tensor = Signal()        # 0: in0, 1: in1
        load_slot = Signal(5)
        load_dil = Signal()
        next_slot = Signal(5)         # next_row % rows
        base_slot = Signal(5)         # (oy * stride - pad) % rows: the slot of the window's top row

        # The next row's window slot, (base_slot + step) % rows, worked out over three registered
        # steps while a row runs (a row takes far more than three cycles between two steps of
        # base_slot), so the step itself only loads a register.
        base_sum, base_mod1, base_next = Signal(7), Signal(6), Signal(5)
        one_row = Signal()            # one row kept (1x1 kernels, up to stride 4): always slot 0
        m.d.sync += [base_sum.eq(base_slot + Mux(is_deform, 1, desc.stride)),
                     base_mod1.eq(Mux(base_sum >= rows, base_sum - rows, base_sum)),
                     base_next.eq(Mux(one_row, 0, Mux(base_mod1 >= rows, base_mod1 - rows, base_mod1))),
                     one_row.eq(rows == 1)]

        # The byte reader's command is registers: a *_CMD state loads them (and who takes the
        # bytes) in one cycle and moves on; the reader takes the command when it is free. So
        # neither the command's adders and muxes nor the state decode reach into the reader
        # (they were the whole-engine estimate's worst paths: state -> command / ready -> the
        # line buffer's and params banks' write enables).
        rd_addr, rd_len, rd_raw, rd_valid = Signal(aw), Signal(32), Signal(), Signal()
        m.d.comb += [reader.cmd.valid.eq(rd_valid), reader.cmd.p.addr.eq(rd_addr),
                     reader.cmd.p.length.eq(rd_len), reader.raw.eq(rd_raw),
                     reader.clear.eq(self.start & ~busy), writer.clear.eq(self.start & ~busy)]
        with m.If(reader.cmd.ready):
            m.d.sync += rd_valid.eq(0)
        # Who takes the reader's bytes, set with the command and cleared with its last byte.
        in_seq, in_rec, in_weights, in_rows = Signal(), Signal(), Signal(), Signal()

        read_sources = []   # (state flag, address, length, raw): the reader's commands

        def read(flag, addr, length, sink, raw=0):
            # The command registers take an AND-OR of the *_CMD states' sources (registers
            # all), built below the FSMs with rd_valid: no priority mux behind the state flags.
            read_sources.append((flag, addr, length, raw))
            m.d.sync += sink.eq(1)

        # The last byte (or raw beat) taken clears the sink; a *_RECV state waits for that register,
        # a cycle later, so the takers' ready (a unit's state) does not reach the sequencer's state.
        with m.If(reader.o.valid & reader.o.ready & reader.o.p.last
                  | reader.beats.valid & reader.beats.ready & reader.beats.p.last):
            m.d.sync += [in_seq.eq(0), in_rec.eq(0), in_weights.eq(0), in_rows.eq(0)]
        with m.If(in_seq & reader.o.valid):  # the preamble / descriptor bytes, shifted in
            m.d.sync += raw.eq(Cat(raw[8:], reader.o.p.byte))

        # compute / store state shared with the datapath below
        issue_done = Signal()
        store_row_done = Signal()
        pipe_busy = Signal()
        row_start = Signal()          # a registered pulse: the issuer and the store start a row
        m.d.sync += row_start.eq(0)
        flush_start = Signal()
        flush_done = Signal()
        flush_idle = Signal()
        next_row_step = Signal()      # a registered pulse: the row counters step (the cycle after DRAIN / FLUSH)
        m.d.sync += next_row_step.eq(0)
        # The window's last input row for output row oy (oy * stride - pad + k - 1; deformable
        # oy + max_dilation; COPY oy), stepped with oy rather than computed from it.
        row_hi = Signal(signed(20))
        last_row = Signal()           # oy + 1 == ho, registered (oy holds for a row's states)
        ho_m1 = Signal(16)            # the layer's ho - 1, registered: last_row is one compare
        m.d.sync += [ho_m1.eq(ho - 1), last_row.eq(oy == ho_m1)]
        # Row addresses step by a row at a time (no multiplier): the next in0 / in1 row to load,
        # the output row (two when upsampling) being computed.
        in0_row_addr, in1_row_addr, row_a = Signal(aw), Signal(aw), Signal(aw)
        ld_addr, ld_len = Signal(aw), Signal(32)     # the row LOAD_CMD reads

        rows_go, rows_done = Signal(), Signal()  # registered pulses: the row loop starts / has ended
        rows_aborted = Signal()       # the row loop ended on a soft reset
        m.d.sync += [rows_go.eq(0), rows_done.eq(0)]
        new_layer = Signal()          # a registered pulse: the layer's counters in the units restart
        m.d.sync += new_layer.eq(0)
        start_run = self.start & ~busy

        # The preamble's and the opcode's checks and the last-layer compare, registered from
        # registers that hold for many cycles before they are used (`raw` is complete the cycle
        # a *_RECV state sees its sink clear; `layer` steps in LAYER_END only): the states that
        # use them decide from a flag, not through a 32-bit compare.
        pre_code, pre_bad, op_known, last_layer = Signal(8), Signal(), Signal(), Signal()
        n_layers_m1 = Signal(32)
        desc_addr = Signal(aw)        # the next descriptor to read: steps as it is read (no shift-add)
        pre_checks = [(pre.magic != PREAMBLE_MAGIC, ErrorCode.BAD_MAGIC),
                      (pre.version_major != FORMAT_VERSION[0], ErrorCode.VERSION_MISMATCH),
                      (pre.config_hash != cfg.config_hash, ErrorCode.CONFIG_MISMATCH),
                      ((pre.n_layers == 0) | (pre.n_layers > cfg.max_layers), ErrorCode.TOO_MANY_LAYERS)]
        # two stages (each check's compare, then the first failing one's code): PRE_SETTLE
        # waits the extra cycle
        code = ErrorCode.NONE
        for i, (bad, c) in reversed(list(enumerate(pre_checks))):
            bad_r = Signal(name=f"pre_bad{i}")
            m.d.sync += bad_r.eq(bad)
            code = Mux(bad_r, c, code)
        known = 0
        for op in Opcode:
            known = known | (raw[:8] == op)
        m.d.sync += [pre_code.eq(code), pre_bad.eq(code != ErrorCode.NONE), op_known.eq(known),
                     last_layer.eq(layer == n_layers_m1)]
        # The layer loop is one-hot (OneHotFSM): the error code, the layer count and the reader's
        # command decide from a state's own register, and each state's next value depends on
        # its few incoming transitions (Amaranth's binary state decode was the worst path).
        fsm = OneHotFSM(m, ["IDLE", "CLEAR", "PRE_CMD", "PRE_RECV", "PRE_SETTLE", "PRE_CHECK", "DESC_CMD", "DESC_RECV",
                            "DECODE", "CHECK", "CHECK_WAIT", "REC_CMD", "REC_RECV", "REC_CHECK", "W_CMD",
                            "W_RECV", "LAYER_SETUP", "ROWS", "LAYER_END", "FINISH", "ABORTED"], name="layer")
        at = fsm.flags
        goto = fsm.goto
        with fsm.state("IDLE"):
            with m.If(start_run):
                m.d.sync += [busy.eq(1), done.eq(0), abort.eq(0)]
                m.d.comb += [fl.clear.eq(1), perf.run_start.eq(1)]
                goto("CLEAR")
        with fsm.state("CLEAR"):  # strobes of a run cut short by a reset must not leak
            with m.If(fl.idle):
                goto("PRE_CMD")
        with fsm.state("PRE_CMD"):
            read(at["PRE_CMD"], self.desc_base, PREAMBLE_BYTES, in_seq)
            goto("PRE_RECV")
        with fsm.state("PRE_RECV"):
            with m.If(~in_seq):
                goto("PRE_SETTLE")
        with fsm.state("PRE_SETTLE"):
            goto("PRE_CHECK")
        with fsm.state("PRE_CHECK"):
            m.d.sync += n_layers_m1.eq(pre.n_layers - 1)
            with m.If(reader.error | pre_bad):
                goto("FINISH")
            with m.Elif(abort):
                goto("ABORTED")
            with m.Else():
                goto("DESC_CMD")
        # A soft reset stops the run before the next layer: the states that lead to DESC_CMD
        # check it, so the command itself (and the reader's valid) waits on no condition.
        with fsm.state("DESC_CMD"):
            m.d.comb += perf.layer_start.eq(1)
            m.d.sync += new_layer.eq(1)
            read(at["DESC_CMD"], desc_addr, DESCRIPTOR_BYTES, in_seq)
            m.d.sync += desc_addr.eq(desc_addr + DESCRIPTOR_BYTES)   # the next layer's
            goto("DESC_RECV")
        with fsm.state("DESC_RECV"):
            with m.If(~in_seq):
                goto("DECODE")
        with fsm.state("DECODE"):
            m.d.sync += desc.eq(raw)
            with m.If(reader.error | ~op_known):
                goto("FINISH")
            with m.Else():
                goto("CHECK")
        with fsm.state("CHECK"):
            m.d.comb += checker.start.eq(1)
            goto("CHECK_WAIT")
        with fsm.state("CHECK_WAIT"):
            with m.If(checker.done):
                with m.If(checker.bad):
                    goto("FINISH")
                with m.Elif(is_conv | is_dw | is_add):
                    goto("REC_CMD")
                with m.Else():
                    goto("LAYER_SETUP")
        # requant records -> params banks; their addresses registered (desc holds from DECODE,
        # three cycles before REC_CMD)
        rec_addr, rec_len, w_addr = Signal(aw), Signal(32), Signal(aw)
        m.d.sync += [rec_addr.eq(self.params_base + desc.params_offset),
                     rec_len.eq(o.channels * REQUANT_RECORD_BYTES),
                     w_addr.eq(self.params_base + desc.weights_offset)]
        with fsm.state("REC_CMD"):
            read(at["REC_CMD"], rec_addr, rec_len, in_rec)
            goto("REC_RECV")
        with fsm.state("REC_RECV"):
            with m.If(~in_rec):
                goto("REC_CHECK")
        with fsm.state("REC_CHECK"):  # spec.validate.check_requant_records: reserved bits clear
            with m.If(pl.bad_record):
                goto("FINISH")
            with m.Elif(is_add):
                goto("LAYER_SETUP")
            with m.Else():
                goto("W_CMD")
        # weights -> weight banks
        with fsm.state("W_CMD"):
            # Raw beats: the loader drops the bytes around the blob and writes up to a bank
            # word per cycle (it registers the start and the skip).
            read(at["W_CMD"], w_addr, geo.weight_bytes, in_weights, raw=1)
            m.d.comb += [pl.w_start.eq(1), pl.w_skip.eq(w_addr[:LB])]
            goto("W_RECV")
        with fsm.state("W_RECV"):
            with m.If(~in_weights & ~pl.w_busy):
                goto("LAYER_SETUP")
        with fsm.state("LAYER_SETUP"):
            m.d.sync += rows_go.eq(1)
            goto("ROWS")
        with fsm.state("ROWS"):  # the row loop below runs the layer's rows
            with m.If(rows_done & rows_aborted):
                goto("ABORTED")
            with m.Elif(rows_done):
                goto("LAYER_END")
        with fsm.state("LAYER_END"):
            m.d.comb += perf.record.eq(flush_idle)
            with m.If(flush_idle):  # the last row's flush is done: the next layer may read it
                with m.If(reader.error | writer.error | last_layer):
                    goto("FINISH")
                with m.Elif(abort):
                    goto("ABORTED")
                with m.Else():
                    goto("DESC_CMD")
        with fsm.state("FINISH"):
            m.d.sync += [busy.eq(0), done.eq(1), done_pulse.eq(1)]
            goto("IDLE")
        with fsm.state("ABORTED"):
            with m.If(flush_idle):
                m.d.sync += [busy.eq(0), abort.eq(0)]
                goto("IDLE")

        # The error code and the layer count, from the one-hot flags: at most one judging state
        # holds at a time, so the code is an AND-OR of each state's own.
        axi_error = reader.error | writer.error
        judged = [(at["PRE_CHECK"], reader.error | pre_bad, Mux(reader.error, ErrorCode.AXI_ERROR, pre_code)),
                  (at["DECODE"], reader.error | ~op_known,
                   Mux(reader.error, ErrorCode.AXI_ERROR, ErrorCode.BAD_OPCODE)),
                  (at["CHECK_WAIT"], checker.done & checker.bad, checker.code),
                  (at["REC_CHECK"], pl.bad_record, ErrorCode.BAD_REQUANT),
                  (at["LAYER_END"], flush_idle & axi_error, ErrorCode.AXI_ERROR)]
        fail, fail_code = 0, 0
        for flag, cond, c in judged:
            fail = fail | flag & cond
            fail_code = fail_code | Mux(flag, c, 0)
        with m.If(fail):
            m.d.sync += error.eq(fail_code)
        with m.If(at["LAYER_END"] & flush_idle & ~axi_error):
            m.d.sync += layer.eq(layer + 1)
        with m.If(start_run):
            m.d.sync += [error.eq(0), layer.eq(0), desc_addr.eq(self.desc_base + PREAMBLE_BYTES)]

        # -- the row loop: its own small FSM (a short state decode), started by the layer's ----
        # Whether ROW_BEGIN loads another row is worked out into registers while it waits a
        # cycle (`decide`): no row compare sits between the state and the next one.
        # One-hot: what ROW_BEGIN does next (ADD's in0 row, the next in0 row, the in1 / dilation
        # row, or the row's compute), from the registers it reads, which hold while it waits.
        go_add0, go_in0, go_aux, go_compute = Signal(), Signal(), Signal(), Signal()
        add0 = is_add & add_in0_pending
        want_in0 = ~is_add & (next_row < i0.height) & (next_row <= row_hi)
        m.d.sync += [go_add0.eq(add0), go_in0.eq(~add0 & want_in0), go_aux.eq(~add0 & ~want_in0 & aux_pending),
                     go_compute.eq(~add0 & ~want_in0 & ~aux_pending)]
        settle, decide, drained = Signal(), Signal(), Signal()
        # The row loop's starting values and steps, registered from the descriptor and the
        # geometry (they hold for the layer from CHECK on; the loop starts cycles later), so
        # no descriptor arithmetic sits in front of the counters. next_slot_inc is
        # (next_slot + 1) % rows, ready two cycles after next_slot changes: ROW_BEGIN waits two.
        init_in0_addr, init_in1_addr, init_out_addr = Signal(aw), Signal(aw), Signal(aw)
        init_base_slot, init_row_hi = Signal(5), Signal(signed(20))
        out_addr_step, row_hi_step, next_slot_inc, rows_m1 = Signal(aw), Signal(3), Signal(5), Signal(5)
        m.d.sync += [init_in0_addr.eq(self.arena_base + i0.addr), init_in1_addr.eq(self.arena_base + i1.addr),
                     init_out_addr.eq(self.arena_base + o.addr),
                     init_base_slot.eq(Mux(is_deform | (desc.pad == 0), 0, rows - desc.pad)),
                     init_row_hi.eq(Mux(is_deform, cfg.max_dilation, Mux(is_copy, 0, k - 1 - desc.pad))),
                     out_addr_step.eq(Mux(upsample, geo.out_row_stride << 1, geo.out_row_stride)),
                     row_hi_step.eq(Mux(is_deform | is_copy, 1, desc.stride)),
                     rows_m1.eq(rows - 1),   # next_slot < rows: the wrap is one equality
                     next_slot_inc.eq(Mux(next_slot == rows_m1, 0, next_slot + 1))]
        # While a row computes, the next row's new input rows load into the slots beyond its window
        # (geo.prefetch: validate.prefetches_rows), so the next row starts on rows already in.
        go_pf, prefetching = Signal(), Signal()
        pf_hi = Signal(signed(20))    # the next output row's last input row
        m.d.sync += [pf_hi.eq(row_hi + row_hi_step),
                     go_pf.eq(geo.prefetch & ~last_row & (next_row < i0.height) & (next_row <= pf_hi))]

        rows_fsm = OneHotFSM(m, ["IDLE", "ROW_BEGIN", "LOAD_CMD", "LOAD_RECV", "COMPUTE", "DRAIN", "FLUSH"],
                             name="rows")
        rows_goto = rows_fsm.goto
        with rows_fsm.state("IDLE"):
            with m.If(rows_go):  # the layer's row counters and addresses (only this FSM sets them)
                m.d.sync += [in0_row_addr.eq(init_in0_addr), in1_row_addr.eq(init_in1_addr),
                             row_a.eq(init_out_addr)]
                m.d.sync += [oy.eq(0), next_row.eq(0), next_slot.eq(0), aux_pending.eq(is_add | is_deform),
                             add_in0_pending.eq(is_add), base_slot.eq(init_base_slot), row_hi.eq(init_row_hi)]
                m.d.sync += rows_aborted.eq(0)
                rows_goto("ROW_BEGIN")
        # rows of input for output row oy
        with rows_fsm.state("ROW_BEGIN"):
            # two cycles before deciding: the row counters step in the first (next_row_step),
            # the choice is registered from them in the second
            m.d.sync += [settle.eq(1), decide.eq(settle)]
            with m.If(abort):
                m.d.sync += [rows_done.eq(1), rows_aborted.eq(1), settle.eq(0), decide.eq(0)]
                rows_goto("IDLE")
            with m.Elif(decide):
                m.d.sync += [settle.eq(0), decide.eq(0)]
                # (the row's address and length are registered here for LOAD_CMD's command)
                with m.If(go_add0):
                    m.d.sync += add_in0_pending.eq(0)
                    rows_goto("LOAD_CMD")
                with m.If(go_in0):  # the next in0 row (its registers: `load_in0` below)
                    rows_goto("LOAD_CMD")
                with m.If(go_aux):
                    m.d.sync += aux_pending.eq(0)
                    rows_goto("LOAD_CMD")
                with m.If(go_compute):
                    m.d.sync += row_start.eq(1)
                    rows_goto("COMPUTE")
        # The load's command, whichever state chose it (ROW_BEGIN: ADD's in0 row, the next in0
        # row, the in1 / dilation row; COMPUTE: the next output row's in0 row): one writer of its
        # registers, from registers worked out while the choice settles (`nx_*`).
        nx_addr, nx_len, nx_slot = Signal(aw), Signal(32), Signal(5)
        aux_now = ~add0 & ~want_in0 & aux_pending     # go_aux's next value (both registered at once)
        m.d.sync += [nx_addr.eq(Mux(aux_now, in1_row_addr, in0_row_addr)),
                     nx_len.eq(Mux(aux_now, geo.row_len1, geo.row_len0)),
                     nx_slot.eq(Mux(add0, 0, Mux(aux_now, 1, next_slot)))]
        take_load, load_in0 = Signal(), Signal()
        begin_ok = rows_fsm.flags["ROW_BEGIN"] & decide & ~abort
        pf_now = rows_fsm.flags["COMPUTE"] & go_pf
        m.d.comb += [take_load.eq(begin_ok & (go_add0 | go_in0 | go_aux) | pf_now),
                     load_in0.eq(begin_ok & go_in0 | pf_now)]
        with m.If(take_load):
            m.d.sync += [ld_addr.eq(nx_addr), ld_len.eq(nx_len), load_slot.eq(nx_slot),
                         load_tensor.eq(go_aux), load_dil.eq(go_aux & is_deform)]
        with m.If(load_in0):
            m.d.sync += [next_row.eq(next_row + 1), next_slot.eq(next_slot_inc)]
        with rows_fsm.state("LOAD_CMD"):
            # The row loader is told now: the previous row's bytes are all in, and this row's
            # first beat is cycles away (the reader's command stage, the DMA, the bus).
            read(rows_fsm.flags["LOAD_CMD"], ld_addr, ld_len, in_rows, raw=~load_dil)
            m.d.comb += [rl.start.eq(1), rl.slot.eq(load_slot), rl.dilation.eq(load_dil),
                         rl.skip.eq(ld_addr[:LB])]
            with m.If(load_tensor):
                m.d.sync += in1_row_addr.eq(in1_row_addr + geo.in1_row_stride)
            with m.Else():
                m.d.sync += in0_row_addr.eq(in0_row_addr + geo.in0_row_stride)
            rows_goto("LOAD_RECV")
        with rows_fsm.state("LOAD_RECV"):
            with m.If(~in_rows):
                m.d.sync += prefetching.eq(0)
                with m.If(prefetching):
                    rows_goto("COMPUTE")
                with m.Else():
                    rows_goto("ROW_BEGIN")
        with rows_fsm.state("COMPUTE"):
            with m.If(go_pf):  # the next row's rows, one load at a time (registers: `load_in0`)
                m.d.sync += prefetching.eq(1)
                rows_goto("LOAD_CMD")
            with m.Elif(issue_done & ~row_start):  # done is the last row's while the issuer starts
                rows_goto("DRAIN")
        with rows_fsm.state("DRAIN"):
            # The row goes out while the next one is loaded and computed into the other half
            # of the row buffer; an upsampled row fills both halves, so it waits for its flush.
            # The condition is registered (it holds once true: nothing enters the pipe and
            # only this state starts a flush), so the units' flags do not reach the state.
            m.d.sync += drained.eq(~pipe_busy & store_row_done & flush_idle)
            with m.If(drained):
                m.d.sync += drained.eq(0)
                m.d.comb += flush_start.eq(1)
                with m.If(upsample):
                    rows_goto("FLUSH")
                with m.Else():
                    m.d.sync += next_row_step.eq(1)
                    rows_goto("ROW_BEGIN")
                    with m.If(last_row):
                        m.d.sync += rows_done.eq(1)
                        rows_goto("IDLE")
        with rows_fsm.state("FLUSH"):
            with m.If(flush_done):
                m.d.sync += next_row_step.eq(1)
                rows_goto("ROW_BEGIN")
                with m.If(last_row):
                    m.d.sync += rows_done.eq(1)
                    rows_goto("IDLE")
        with m.If(next_row_step):
            m.d.sync += [row_a.eq(row_a + out_addr_step), row_hi.eq(row_hi + row_hi_step)]
            m.d.sync += [oy.eq(oy + 1), aux_pending.eq(is_add | is_deform), add_in0_pending.eq(is_add),
                         base_slot.eq(base_next)]
        m.d.comb += self.layers_done.eq(layer)
        any_read = 0
        cmd_addr, cmd_len, cmd_raw = 0, 0, 0
        for flag, addr, length, raw in read_sources:
            any_read = any_read | flag
            cmd_addr, cmd_len, cmd_raw = (cmd_addr | Mux(flag, addr, 0), cmd_len | Mux(flag, length, 0),
                                          cmd_raw | flag & raw)
        with m.If(any_read):
            m.d.sync += [rd_valid.eq(1), rd_addr.eq(cmd_addr), rd_len.eq(cmd_len), rd_raw.eq(cmd_raw)]



        # -- requant records and weights -> their banks (REC_RECV, W_RECV) ----------------------
        # Records as bytes, weights as raw beats.
        m.d.comb += [pl.desc.eq(desc), pl.geo.eq(geo), pl.new_layer.eq(new_layer),
                     pl.records.eq(in_rec),
                     pl.i.valid.eq(reader.o.valid & in_rec), pl.i.p.eq(reader.o.p),
                     pl.beats.valid.eq(reader.beats.valid & in_weights), pl.beats.p.eq(reader.beats.p)]
        # One sink at a time: an AND-OR of registers and the takers' ready, not a priority mux.
        m.d.comb += reader.o.ready.eq(in_seq | in_rec & pl.i.ready | in_rows & rl.bytes.ready)

        # -- input rows -> line buffer, dilation row -> its buffer (LOAD_RECV) ------------------
        m.d.comb += [rl.desc.eq(desc), rl.geo.eq(geo),
                     rl.beats.valid.eq(reader.beats.valid & in_rows), rl.beats.p.eq(reader.beats.p),
                     reader.beats.ready.eq(in_weights & pl.beats.ready | in_rows & rl.beats.ready),
                     rl.bytes.valid.eq(reader.o.valid & in_rows), rl.bytes.p.eq(reader.o.p)]

        # -- compute: the window issuer feeds the MAC array a step per cycle ---------------------
        m.d.comb += [wi.start.eq(row_start), wi.oy.eq(oy), wi.base_slot.eq(base_slot),
                     wi.desc.eq(desc), wi.geo.eq(geo), wi.slot_base.eq(rl.slot_base), wi.skips.eq(rl.skips),
                     rl.dil_addr.eq(wi.dil_addr), wi.dil_data.eq(rl.dil_data),
                     rl.r_addr.eq(wi.r_addr), rl.r_en.eq(wi.r_en), wi.r_data.eq(rl.r_data),
                     pl.w_addr.eq(wi.w_addr), pl.w_en.eq(wi.w_en), wi.w_data.eq(pl.w_data),
                     pl.w_addr2.eq(wi.w_addr2), wi.w_data2.eq(pl.w_data2),
                     issue_done.eq(wi.done), perf.macs.eq(wi.macs)]
        wiring.connect(m, wi.o, mac.i)

        # -- the MAC array, then the output block's requant records ------------------------------
        # Per-layer inputs of the units below are registered copies (desc and geo hold for the layer).
        m.d.sync += [mac.mode.conv.eq(is_conv), mac.mode.depthwise.eq(is_dw), mac.mode.add.eq(is_add),
                     mac.mode.pool.eq(is_pool), mac.mode.packed.eq(geo.packed), mac.mode.in0_signed.eq(in0_signed),
                     mac.mode.in1_signed.eq(in1_signed), mac.mode.add_mult0.eq(desc.add_mult0),
                     mac.mode.add_mult1.eq(desc.add_mult1)]
        # The requant records of the finished block's channels join it on the way to the requantiser.
        wiring.connect(m, mac.o, pl.lookup_i)
        wiring.connect(m, pl.lookup_o, rq.i)
        identity = is_pool | is_copy
        m.d.sync += [
            rq.clamp_lo.eq(Mux(identity, Mux(out_signed, -(1 << (cfg.act_bits - 1)), 0), desc.clamp_lo)),
            rq.clamp_hi.eq(Mux(identity, Mux(out_signed, (1 << (cfg.act_bits - 1)) - 1, (1 << cfg.act_bits) - 1),
                               desc.clamp_hi)),
        ]
        # The requantiser's output is its own FIFO (valid and payload registers) and the store's
        # ready comes from registers: they connect directly.
        m.d.comb += rq.o.ready.eq(st.i.ready & busy)

        # -- store: each output byte to its place in the row buffer; flush: the row to DRAM -------
        row_stride_out, row_span = geo.out_row_stride, geo.out_row_len
        with m.If(row_start):
            m.d.sync += [st.align_a.eq(row_a[:LB]), st.align_b.eq((row_a + row_stride_out)[:LB])]
        m.d.comb += [st.desc.eq(desc), st.geo.eq(geo), st.start.eq(row_start), st.odd_row.eq(oy[0]),
                     st.i.valid.eq(rq.o.valid & busy), st.i.p.eq(Cat(*rq.o.payload)),
                     store_row_done.eq(st.done),
                     fl.s_en.eq(st.w_en), fl.s_addr.eq(st.w_addr), fl.s_data.eq(st.w_data), fl.s_mask.eq(st.w_mask),
                     fl.s_half.eq(st.w_half),
                     fl.start.eq(flush_start), fl.row_addr.eq(row_a), fl.row_stride.eq(row_stride_out),
                     fl.row_len.eq(row_span), fl.upsample.eq(upsample), fl.odd_row.eq(oy[0]),
                     flush_idle.eq(fl.idle), flush_done.eq(fl.done), fl.written.eq(writer.done)]
        # Registered: DRAIN waits for it, a cycle late at worst (nothing enters the pipe then).
        m.d.sync += pipe_busy.eq(wi.busy | mac.busy | pl.lookup_o.valid)
        wiring.connect(m, fl.cmd, writer.cmd)
        wiring.connect(m, fl.beats, writer.i)
        return m
