"""Static checks of a descriptor against an engine: the same checks the engine makes at runtime.

`check_descriptor` returns (ErrorCode, message) rather than raising, so the program reader, the
golden machine and the RTL tests all map a violation to the same error code.
"""

from __future__ import annotations

import numpy as np

from .config import EngineConfig
from .errors import SpecError
from .isa import (KERNELS, REQUANT_OPS, STRIDES, WEIGHTED_OPS, Flag, LayerDescriptor, Opcode, TensorRef,
                  conv_out_size)
from .params import REQUANT_RECORD_BYTES, act_range, packed_weight_bytes, requant_reserved_bits
from .registers import ErrorCode


def weight_count(d: LayerDescriptor) -> int:
    if d.opcode == Opcode.CONV:
        return d.out.channels * d.kernel * d.kernel * d.in0.channels
    if d.opcode in (Opcode.DWCONV, Opcode.DEFORM_DW):
        return d.out.channels * d.kernel * d.kernel
    return 0


def weight_shape(d: LayerDescriptor) -> tuple[int, ...]:
    if d.opcode == Opcode.CONV:
        return (d.out.channels, d.kernel, d.kernel, d.in0.channels)
    if d.opcode in (Opcode.DWCONV, Opcode.DEFORM_DW):
        return (d.out.channels, d.kernel, d.kernel)
    return (0,)


def used_inputs(d: LayerDescriptor) -> tuple[str, ...]:
    return ("in0", "in1") if d.opcode in (Opcode.ADD, Opcode.DEFORM_DW) else ("in0",)


def blocks(n: int, size: int) -> int:
    return -(-n // size)


# Ops whose next output row's input rows are loaded while the current row computes, when the
# line buffer has room for them (`prefetches_rows`).
PREFETCH_OPS = frozenset({Opcode.CONV, Opcode.DWCONV, Opcode.MAXPOOL, Opcode.COPY})


def window_rows(d: LayerDescriptor, cfg: EngineConfig) -> int:
    """Input rows one output row's window reads: a k x k window k, the deformable window
    2 * max_dilation + 1; ADD one row of each operand."""
    if d.opcode == Opcode.ADD:
        return 2
    if d.opcode == Opcode.DEFORM_DW:
        return 2 * cfg.max_dilation + 1
    return d.kernel


def prefetches_rows(d: LayerDescriptor, cfg: EngineConfig) -> bool:
    """Whether the engine loads the next output row's `stride` new input rows while the current
    row computes: a PREFETCH_OPS op whose window plus those rows fit the line buffer's slots."""
    rows = window_rows(d, cfg) + d.stride
    return (d.opcode in PREFETCH_OPS and rows <= cfg.line_slots
            and rows * line_slot_words(d, cfg) <= cfg.line_buffer_depth)


def line_buffer_rows(d: LayerDescriptor, cfg: EngineConfig) -> int:
    """Input rows the engine keeps on chip for `d` (row y lives in slot y % rows): the window's,
    plus `stride` more when it prefetches the next row's."""
    return window_rows(d, cfg) + (d.stride if prefetches_rows(d, cfg) else 0)


def row_bytes(ref: TensorRef) -> int:
    """Bytes from a row's first channel to one past its last: what the engine reads of a row."""
    return (ref.width - 1) * ref.pixel_stride + ref.reach


def line_slot_words(d: LayerDescriptor, cfg: EngineConfig) -> int:
    """Line buffer words per row slot: an input row is kept as it lies in DRAM, from the bus beat
    it starts in (so up to bus_bytes - 1 bytes before it)."""
    rows = [d.in0, d.in1] if d.opcode == Opcode.ADD else [d.in0]
    return max(-(-(row_bytes(r) + cfg.bus_bytes - 1) // cfg.line_word_bytes) for r in rows)


def line_buffer_words(d: LayerDescriptor, cfg: EngineConfig) -> int:
    """Words the layer's window rows take (what must fit; prefetched rows are added only when
    they fit too): window rows x words per row."""
    return window_rows(d, cfg) * line_slot_words(d, cfg)


def packs_out_blocks(d: LayerDescriptor) -> bool:
    """Whether the MAC array packs two output blocks into each multiplier for `d`: two 4-bit
    weights share a DSP operand (a 4-bit CONV; 8-bit weights and the channel-wise ops do not)."""
    return d.opcode == Opcode.CONV and d.weight_bits == 4


def weight_words(d: LayerDescriptor, cfg: EngineConfig) -> int:
    """Words each weight bank holds for `d`: CONV stores [out block][tap][in block] words of
    pe_in weights, the depthwise ops [block][kernel row] words of a row's `kernel` weights."""
    if d.opcode == Opcode.CONV:
        return blocks(d.out.channels, cfg.pe_out) * d.kernel * d.kernel * blocks(d.in0.channels, cfg.pe_in)
    if d.opcode in (Opcode.DWCONV, Opcode.DEFORM_DW):
        return blocks(d.out.channels, cfg.pe_out) * d.kernel
    return 0


def row_buffer_need(d: LayerDescriptor, cfg: EngineConfig) -> int:
    """Bytes of one output row as stored (its span plus the bus-alignment offset)."""
    return row_bytes(d.out) + cfg.bus_bytes - 1


def check_descriptor(d: LayerDescriptor, cfg: EngineConfig, *, arena_size: int,
                     params_size: int) -> tuple[ErrorCode, str]:
    """(ErrorCode.NONE, "") if the engine can run `d`, else the code and a message naming the field."""
    op = d.opcode
    bad = ErrorCode.BAD_DESCRIPTOR
    if d.kernel not in KERNELS[op]:
        return bad, f"{op.name} kernel={d.kernel}, supported: {KERNELS[op]}"
    if d.stride not in STRIDES[op]:
        return bad, f"{op.name} stride={d.stride}, supported: {STRIDES[op]}"
    max_pad = d.kernel - 1 if op == Opcode.MAXPOOL else d.kernel // 2
    if op == Opcode.DEFORM_DW and d.pad != 1:
        return bad, "DEFORM_DW pad must be 1 (same-size output, zeros outside the image)"
    if not 0 <= d.pad <= max_pad:
        return bad, f"{op.name} pad={d.pad}, must be in [0, {max_pad}]"
    if op in WEIGHTED_OPS and d.weight_bits not in (4, 8):
        return bad, f"weight_bits={d.weight_bits}, must be 4 or 8"
    refs = ("out",) + used_inputs(d)
    for name in refs:
        ref: TensorRef = getattr(d, name)
        try:
            ref.check(name)
        except SpecError as exc:
            return bad, str(exc)
        if ref.channels > cfg.max_channels:
            return bad, f"{name}.channels={ref.channels} exceeds the engine's max_channels={cfg.max_channels}"
        if ref.width > cfg.max_width and name != "out":
            return bad, f"{name}.width={ref.width} exceeds the engine's max_width={cfg.max_width}"
    if d.upsample and (d.out.height % 2 or d.out.width % 2):
        return bad, f"UPSAMPLE2X needs an even out tensor, got {d.out.height}x{d.out.width}"
    ho, wo = d.compute_hw
    if wo > cfg.max_width:
        return bad, f"computed width {wo} exceeds the engine's max_width={cfg.max_width}"

    i0, i1 = d.in0, d.in1
    if op in (Opcode.CONV, Opcode.DWCONV, Opcode.MAXPOOL):
        want = (conv_out_size(i0.height, d.kernel, d.stride, d.pad),
                conv_out_size(i0.width, d.kernel, d.stride, d.pad))
    else:
        want = (i0.height, i0.width)
    if (ho, wo) != want:
        return bad, (f"{op.name}: in0 {i0.height}x{i0.width} with kernel {d.kernel}, stride {d.stride}, "
                     f"pad {d.pad} gives {want[0]}x{want[1]}, but out computes {ho}x{wo}")
    if op != Opcode.CONV and d.out.channels != i0.channels:
        return bad, f"{op.name}: out.channels={d.out.channels} != in0.channels={i0.channels}"
    if op == Opcode.DEFORM_DW:
        if i1.channels != 1 or (i1.height, i1.width) != (i0.height, i0.width):
            return bad, (f"DEFORM_DW dilation map in1 must be {i0.height}x{i0.width}x1, "
                         f"got {i1.height}x{i1.width}x{i1.channels}")
        if d.flags & Flag.IN1_SIGNED:
            return bad, "DEFORM_DW dilation map in1 must be unsigned"
    if op == Opcode.ADD and (i1.height, i1.width, i1.channels) != (i0.height, i0.width, i0.channels):
        return bad, (f"ADD operands differ: in0 {i0.height}x{i0.width}x{i0.channels}, "
                     f"in1 {i1.height}x{i1.width}x{i1.channels}")
    if op in (Opcode.MAXPOOL, Opcode.COPY) and bool(d.flags & Flag.IN0_SIGNED) != bool(d.flags & Flag.OUT_SIGNED):
        return bad, f"{op.name} keeps the scale and sign: in0 and out signedness must match"
    if op in REQUANT_OPS:
        lo, hi = act_range(cfg.act_bits, bool(d.flags & Flag.OUT_SIGNED))
        if not lo <= d.clamp_lo <= d.clamp_hi <= hi:
            return bad, f"clamp [{d.clamp_lo}, {d.clamp_hi}] must lie within the output range [{lo}, {hi}]"

    # What the engine's on-chip buffers hold (EngineConfig: line/weight/row buffer bytes).
    for name in used_inputs(d):
        ref = getattr(d, name)
        if ref.group_channels != ref.channels:
            return bad, (f"{name}: the engine reads inputs whose channels are one run "
                         f"(group_channels={ref.group_channels} < channels={ref.channels})")
    need = line_buffer_words(d, cfg)
    if need > cfg.line_buffer_depth:
        return bad, (f"{op.name}: {line_buffer_rows(d, cfg)} rows of in0 ({i0.width} x {i0.channels}, pixel "
                     f"stride {i0.pixel_stride}) need {need * cfg.line_word_bytes} bytes of line buffer, "
                     f"the engine has {cfg.line_buffer_bytes}")
    need = weight_words(d, cfg)
    if need > cfg.weight_depth:
        return bad, (f"{op.name}: weights need {need} words per bank, the engine's weight buffer holds "
                     f"{cfg.weight_depth} (weight_buffer_bytes={cfg.weight_buffer_bytes})")
    need = row_buffer_need(d, cfg)
    if need > cfg.row_buffer_bytes // 2:
        return bad, (f"{op.name}: an output row spans {need} bytes, the engine's row buffer holds "
                     f"{cfg.row_buffer_bytes // 2} per row")

    for name in refs:
        ref = getattr(d, name)
        if ref.addr + ref.span > arena_size:
            return (ErrorCode.ARENA_OUT_OF_BOUNDS,
                    f"{name} reaches byte {ref.addr + ref.span} of a {arena_size}-byte arena")
    if op in WEIGHTED_OPS:
        end = d.weights_offset + packed_weight_bytes(weight_count(d), d.weight_bits)
        if end > params_size:
            return ErrorCode.PARAMS_OUT_OF_BOUNDS, f"weights reach byte {end} of a {params_size}-byte params blob"
    if op in REQUANT_OPS:
        end = d.params_offset + d.out.channels * REQUANT_RECORD_BYTES
        if end > params_size:
            return (ErrorCode.PARAMS_OUT_OF_BOUNDS,
                    f"requant records reach byte {end} of a {params_size}-byte params blob")
    return ErrorCode.NONE, ""


def check_requant_records(d: LayerDescriptor, params: bytes | np.ndarray) -> tuple[ErrorCode, str]:
    """(ErrorCode.NONE, "") if the layer's requant records are well formed, else BAD_REQUANT naming
    the first channel whose word sets the reserved bits 31:30. Call after check_descriptor (which
    proves the records lie inside the params blob). The golden engine and the RTL refuse the
    layer before computing it; the program reader refuses the file."""
    if d.opcode not in REQUANT_OPS:
        return ErrorCode.NONE, ""
    raw = params[d.params_offset: d.params_offset + d.out.channels * REQUANT_RECORD_BYTES]
    bad = np.flatnonzero(requant_reserved_bits(raw, d.out.channels))
    if bad.size:
        c = int(bad[0])
        word = int.from_bytes(bytes(raw[c * REQUANT_RECORD_BYTES + 4: (c + 1) * REQUANT_RECORD_BYTES]), "little")
        return (ErrorCode.BAD_REQUANT,
                f"requant record of output channel {c} sets reserved bits 31:30 (word 0x{word:08x}); "
                f"{bad.size} record(s) of this layer do")
    return ErrorCode.NONE, ""


def accumulator_bound(d: LayerDescriptor, weights: np.ndarray | None, bias: np.ndarray, act_bits: int) -> np.ndarray:
    """Largest |accumulator| per output channel over all possible inputs (exact, not estimated)."""
    def max_abs(flag: Flag) -> int:
        lo, hi = act_range(act_bits, bool(d.flags & flag))
        return max(-lo, hi)

    bias = np.abs(np.asarray(bias, dtype=np.int64))
    if d.opcode == Opcode.ADD:
        return abs(d.add_mult0) * max_abs(Flag.IN0_SIGNED) + abs(d.add_mult1) * max_abs(Flag.IN1_SIGNED) + bias
    w = np.abs(np.asarray(weights, dtype=np.int64)).reshape(d.out.channels, -1)
    return w.sum(axis=1) * max_abs(Flag.IN0_SIGNED) + bias


def check_accumulator(d: LayerDescriptor, weights, bias, cfg: EngineConfig, *, where: str) -> None:
    """Prove no accumulator of layer `d` can overflow cfg.acc_bits, or name the channel that can."""
    bound = accumulator_bound(d, weights, bias, cfg.act_bits)
    limit = (1 << (cfg.acc_bits - 1)) - 1
    if bound.size and bound.max() > limit:
        c = int(np.argmax(bound))
        raise SpecError(f"{where}: accumulator of output channel {c} can reach {int(bound[c])}, "
                        f"beyond the {cfg.acc_bits}-bit accumulator (max {limit})")
