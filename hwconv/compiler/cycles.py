"""Analytical cycle model of the engine (`hwconv.rtl.engine.EngineCore` and its units), per layer.

It follows the engine's schedule step by step (docs/architecture.md, "The engine"), with DRAM
reduced to one number, `mem_latency` (cycles from a read request to its first beat, and from a
write's last beat to its response). `hwconv check` and `hwconv simulate` use it; the RTL tests
hold it to within 10% of the engine's own per-layer counters.

Per layer:
    fetch     descriptor read (128 bytes through the 1 byte/cycle reader) + the checker
    params    requant records (8 bytes per output channel, a byte per cycle) and weights (a bank
              word per cycle: a (channel, tap) row of up to P input channels, or a depthwise
              kernel row; or a bus beat per cycle where the beats are more)
    rows      per output row: bring in the input rows it needs (a bus beat per cycle, plus
              latency per row; where the line buffer has room, the next row's rows load while
              this row computes and only the excess shows), then compute and store side by side (compute issues one
              (pixel, out block, tap, in block) per cycle, a pair of out blocks per step for a 4-bit
              CONV (two products per multiplier), a depthwise kernel row per step, and a
              DEFORM_DW pixel takes at least DILATION_FETCH_CYCLES; the store places an output block per
              cycle, four times when upsampling; half a block into a two-way interleaved output,
              a byte into other grouped ones), then flush the row buffer (a bus beat per cycle
              plus the write latency) while the next row runs, into the other half of the row
              buffer (an upsampled row uses both halves and waits for its flush)
"""

from __future__ import annotations

from dataclasses import dataclass

from ..spec.config import DILATION_FETCH_CYCLES, EngineConfig, mac_pipeline_depth
from ..spec.isa import DESCRIPTOR_BYTES, PREAMBLE_BYTES, REQUANT_OPS, WEIGHTED_OPS, Flag, LayerDescriptor, Opcode
from ..spec.params import REQUANT_RECORD_BYTES, packed_weight_bytes
from ..spec.validate import blocks, packs_out_blocks, prefetches_rows, row_bytes

__all__ = ["LayerCycles", "layer_cycles", "program_cycles", "DEFAULT_MEM_LATENCY"]

# Cycles from an AXI read request to its first beat. 40 is typical of the Zynq UltraScale+ HP
# ports at 250 MHz; the simulation benches use their own RAM model's figure.
DEFAULT_MEM_LATENCY = 40
_CHECK_CYCLES = 3 * 17 + 14  # three 17-cycle divisions and the checker's pipelined stages (9)
# Per read: the sequencer's command register and the sink register its *_RECV state waits for,
# the reader's command register, the burst splitter's prepare cycle, the beat register and the
# skid buffer, and (row reads) ROW_BEGIN's two waiting cycles. Per output row: the issuer (6
# stages), row start, record lookup, requantiser (9), store, the row step pulse, DRAIN's
# registered condition and ROW_BEGIN's wait before the compute. Both fitted on a config-a frame
# (hwconv bench --rtl --model a, engine RTL at 0850e0e, docs/results/bench_rtl_a.json): mean
# error per layer 0.05 %, worst 0.36 %.
_READ_OVERHEAD = 11
_PIPE_TAIL = 23


_ROW_OVERHEAD = 6            # state changes between a row's steps


@dataclass(frozen=True)
class LayerCycles:
    fetch: int
    params: int
    loads: int
    compute: int
    store: int
    flush: int

    @property
    def total(self) -> int:
        return self.fetch + self.params + self.loads + max(self.compute, self.store) + self.flush

    @property
    def bound(self) -> str:
        """What limits the layer: the largest part of its time."""
        parts = {"fetch+params": self.fetch + self.params, "loads": self.loads,
                 "compute": self.compute, "store": self.store, "flush": self.flush}
        return max(parts, key=parts.get)


def _weight_cycles(rows: int, cin: int, p: int, bits: int, bus_bytes: int) -> int:
    """The weights from raw bus beats: a bank word (up to p weights of one (channel, tap) row) per
    cycle, or a beat per cycle where the beats are more; + 3 (the first word waits for two beats,
    then the loader's three stages)."""
    words = rows * blocks(cin, p)
    beats = -(-packed_weight_bytes(rows * cin, bits) // bus_bytes)
    return max(words, beats) + 3


def _read(nbytes: int, lat: int) -> int:
    return lat + _READ_OVERHEAD + nbytes if nbytes else 0




def layer_cycles(d: LayerDescriptor, cfg: EngineConfig, mem_latency: int = DEFAULT_MEM_LATENCY,
                 first: bool = False) -> LayerCycles:
    p, bb, lat = cfg.pe_in, cfg.bus_bytes, mem_latency
    op = d.opcode
    fetch = _read(DESCRIPTOR_BYTES, lat) + _CHECK_CYCLES + (_read(PREAMBLE_BYTES, lat) if first else 0)
    params = 0
    if op in REQUANT_OPS:
        params += _read(d.out.channels * REQUANT_RECORD_BYTES, lat) + 1  # + the records' check
    depthwise = op in (Opcode.DWCONV, Opcode.DEFORM_DW)
    if op in WEIGHTED_OPS:  # rows of weights: (channel, tap) rows of cin, or depthwise kernel rows
        rows, cin = ((d.out.channels * d.kernel * d.kernel, d.in0.channels) if op == Opcode.CONV
                     else (d.out.channels * d.kernel, d.kernel))
        params += lat + _READ_OVERHEAD + _weight_cycles(rows, cin, p, d.weight_bits, bb)

    ho, wo = d.compute_hw
    up = bool(d.flags & Flag.UPSAMPLE2X)
    # Steps per (pixel, out block): a depthwise kernel row per step, a tap per step otherwise.
    taps = 2 if op == Opcode.ADD else 1 if op == Opcode.COPY else d.kernel if depthwise else d.kernel * d.kernel
    cbi = blocks(d.in0.channels, p) if op == Opcode.CONV else 1
    ob = blocks(d.out.channels, p)

    # Input rows: each in0 row once (the line buffer keeps what later rows need), a bus beat per
    # cycle; ADD reads both operands' row and DEFORM_DW the dilation row (bytes) per output row.
    def beats(ref):
        return lat + _READ_OVERHEAD + -(-(row_bytes(ref) + bb // 2) // bb)

    row0 = beats(d.in0)
    if op == Opcode.ADD:
        loads = ho * (row0 + beats(d.in1))
    else:
        span = 2 * cfg.max_dilation + 1 if op == Opcode.DEFORM_DW else d.kernel
        last_needed = min(d.in0.height - 1, (ho - 1) * d.stride - d.pad + span - 1)
        if op == Opcode.DEFORM_DW:
            last_needed = min(d.in0.height - 1, ho - 1 + cfg.max_dilation)
        loads = (last_needed + 1) * row0
        if op == Opcode.DEFORM_DW:
            loads += ho * _read(row_bytes(d.in1), lat)

    tail = _PIPE_TAIL + mac_pipeline_depth(p)
    ob_steps = -(-ob // 2) if packs_out_blocks(d) else ob  # a pair of out blocks per multiplier
    per_pixel_steps = ob_steps * taps * cbi
    if op == Opcode.DEFORM_DW:  # a pixel waits for its dilation's fetch
        per_pixel_steps = max(per_pixel_steps, DILATION_FETCH_CYCLES)
    compute = ho * (wo * per_pixel_steps + tail)
    if d.out.group_channels == d.out.channels:  # one run: a block per cycle (per copy)
        per_pixel = ob * (4 if up else 1)
    elif d.out.group_channels == 1 and d.out.group_stride == 2 and p > 1:  # two-way interleave
        per_pixel = ob * 2 * (4 if up else 1)
    else:  # other grouped stores: a byte per cycle
        valid = [min(p, d.out.channels - b * p) for b in range(ob)]
        per_pixel = sum(v * (4 if up else 1) + (p - v) for v in valid)
    store = ho * (wo * per_pixel + tail)

    if prefetches_rows(d, cfg):
        # The rows before the first output row load first; each later row's new rows load while
        # the row before it computes, so only what a row's loads take beyond its compute shows.
        init_hi, step = (0, 1) if op == Opcode.COPY else (d.kernel - 1 - d.pad, d.stride)
        row_hi = [min(d.in0.height - 1, oy * step + init_hi) for oy in range(ho)]
        row_time = max(compute, store) / ho
        exposed = sum(max(0.0, (row_hi[oy + 1] - row_hi[oy]) * row0 - row_time) for oy in range(ho - 1))
        loads = (max(row_hi[0], -1) + 1) * row0 + int(exposed)

    out_row = row_bytes(d.out)
    beats = -(-(out_row + bb - 1) // bb)  # the row's bytes plus at most bb-1 of alignment
    per_row_flush = (2 if up else 1) * (beats + 4) + lat + _ROW_OVERHEAD
    if up:  # both halves of the row buffer: each row waits for its flush
        flush = ho * per_row_flush
    else:  # a row's flush runs during the next row's loads and compute; the last one is waited for
        row_time = (loads + max(compute, store)) / ho
        flush = per_row_flush + int((ho - 1) * max(0.0, per_row_flush - row_time))
    return LayerCycles(fetch, params, loads, compute, store, flush)


def program_cycles(layers: list[LayerDescriptor], cfg: EngineConfig,
                   mem_latency: int = DEFAULT_MEM_LATENCY) -> list[LayerCycles]:
    return [layer_cycles(d, cfg, mem_latency, first=i == 0) for i, d in enumerate(layers)]
