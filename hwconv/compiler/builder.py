"""ProgramBuilder: assemble layers into a Program, plan the activation arena, pack the params blob.

Tensors are buffers in the arena or views of them (a channel range, optionally split into runs),
so concat and split cost nothing: a producer writes into a view of the concatenated buffer and a
consumer reads a view of a split. The arena is planned from liveness: buffers whose lifetimes do
not overlap share bytes (first fit, 64-byte aligned).

A dense conv or deformable depthwise layer too big for one of the engine's on-chip buffers
(`spec.validate`: weight buffer, line buffer, row buffer) is split by output channels into layers
named `name[lo:hi]`, each writing its channels into a view of one output tensor (CoDeNet's layer4,
464 -> 1024, needs 1856 weight words per bank; the engine holds 512). A deformable piece whose
15 input rows would not fit the line buffer reads a compact copy of its channels (a COPY layer
`name.in[lo:hi]`). Both are pure data movement: the results are the unsplit layer's, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..spec.config import EngineConfig
from ..spec.errors import SpecError
from ..spec.isa import Flag, LayerDescriptor, Opcode, TensorRef, channel_reach, conv_out_size
from ..spec.params import BLOB_ALIGN, act_range, align, pack_requant, pack_weights
from ..spec.program import Program, TensorInfo
from ..spec.validate import blocks, line_buffer_words, row_buffer_need, weight_words


@dataclass(eq=False)
class ArenaBlock:
    """An (H, W, C) block of the activation arena that Tensors view; the allocator gives it `addr`.
    (Not a device buffer: those are hwconv.driver's Buffer.)"""

    name: str
    height: int
    width: int
    channels: int
    writes: list[int] = field(default_factory=list)
    reads: list[int] = field(default_factory=list)
    pinned: bool = False  # program inputs/outputs live for the whole run
    addr: int = -1

    @property
    def nbytes(self) -> int:
        return self.height * self.width * self.channels


@dataclass(frozen=True, eq=False)
class Tensor:
    """A builder handle: a buffer, or a view of some of its channels."""

    buffer: ArenaBlock
    channel_offset: int
    channels: int
    signed: bool
    scale: float = 1.0
    group_channels: int = 0
    group_stride: int = 0

    @property
    def height(self) -> int:
        return self.buffer.height

    @property
    def width(self) -> int:
        return self.buffer.width

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.height, self.width, self.channels

    def ref(self) -> TensorRef:
        return TensorRef(addr=self.buffer.addr + self.channel_offset, height=self.height, width=self.width,
                         channels=self.channels, pixel_stride=self.buffer.channels,
                         group_channels=self.group_channels, group_stride=self.group_stride)


@dataclass
class _Layer:
    name: str
    opcode: Opcode
    in0: Tensor
    out: Tensor
    in1: Tensor | None = None
    kernel: int = 1
    stride: int = 1
    pad: int = 0
    weight_bits: int = 0
    upsample: bool = False
    weights: np.ndarray | None = None
    requant: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    clamp: tuple[int, int] = (0, 0)
    add_mults: tuple[int, int] = (0, 0)


def _ref(h: int, w: int, c: int, pixel_stride: int = 0) -> TensorRef:
    """A TensorRef of the given shape (address 0): for asking `spec.validate` what a layer needs."""
    return TensorRef(0, h, w, c, pixel_stride or c)


def _shape_ref(t: "Tensor") -> TensorRef:
    """`t`'s geometry as a TensorRef at address 0."""
    return TensorRef(0, t.height, t.width, t.channels, t.buffer.channels, t.group_channels, t.group_stride)


def _fits(d: LayerDescriptor, cfg: EngineConfig) -> bool:
    return (weight_words(d, cfg) <= cfg.weight_depth and line_buffer_words(d, cfg) <= cfg.line_buffer_depth
            and row_buffer_need(d, cfg) <= cfg.row_buffer_bytes // 2)


def channel_pieces(channels: int, unit: int, fits) -> list[tuple[int, int]]:
    """The fewest equal runs of `unit`-channel blocks [lo, hi) covering `channels` for which
    fits(lo, hi) holds for every run; one run (no split) if none does (validate then names the limit)."""
    n_blocks = blocks(channels, unit)
    for n in range(1, n_blocks + 1):
        per = blocks(n_blocks, n) * unit
        runs = [(lo, min(lo + per, channels)) for lo in range(0, channels, per)]
        if all(fits(lo, hi) for lo, hi in runs):
            return runs
    return [(0, channels)]


class ProgramBuilder:
    def __init__(self, config: EngineConfig, *, extra: dict | None = None, reuse_memory: bool = True):
        self.config = config
        self.reuse_memory = reuse_memory  # False: every buffer gets its own bytes (debugging aid)
        self.extra = dict(extra or {})
        self._layers: list[_Layer] = []
        self._buffers: list[ArenaBlock] = []
        self._io: list[tuple[str, str, Tensor]] = []
        self._names: set[str] = set()

    # -- tensors ----------------------------------------------------------------------------
    def buffer(self, name: str, height: int, width: int, channels: int, *, signed: bool,
               scale: float = 1.0) -> Tensor:
        """A fresh arena buffer; views of it are how concatenation is expressed."""
        if min(height, width, channels) < 1:
            raise SpecError(f"buffer {name!r}: shape {height}x{width}x{channels} must be positive")
        buf = ArenaBlock(name, height, width, channels)
        self._buffers.append(buf)
        return Tensor(buf, 0, channels, signed, scale)

    def view(self, t: Tensor, channel_offset: int, channels: int, *, group_channels: int = 0,
             group_stride: int = 0, scale: float | None = None) -> Tensor:
        """Channels [offset, offset + channels) of `t` (or runs of group_channels, group_stride apart)."""
        if t.group_channels and t.group_channels != t.channels:
            raise SpecError(f"view of {t.buffer.name!r}: cannot take a view of a grouped view")
        g = group_channels or channels
        gs = group_stride or g
        reach = channel_reach(channels, g, gs)
        if channel_offset < 0 or channel_offset + reach > t.channels:
            raise SpecError(f"view of {t.buffer.name!r}: channels {channel_offset}..{channel_offset + reach - 1} "
                            f"outside its {t.channels} channels")
        return Tensor(t.buffer, t.channel_offset + channel_offset, channels, t.signed,
                      t.scale if scale is None else scale, group_channels, group_stride)

    def _piece(self, t: Tensor, lo: int, channels: int) -> Tensor:
        """Channels [lo, lo + channels) of `t`, also of an interleaved (grouped) view, whose
        pieces start on a run boundary: the output of one piece of a split layer."""
        g = t.group_channels
        if not g or g == t.channels:
            return t if (lo, channels) == (0, t.channels) else self.view(t, lo, channels)
        if lo % g:
            raise SpecError(f"view of {t.buffer.name!r}: a piece at channel {lo} splits a run of {g}")
        return Tensor(t.buffer, t.channel_offset + (lo // g) * t.group_stride, channels, t.signed, t.scale, g,
                      t.group_stride)

    def input(self, name: str, height: int, width: int, channels: int, *, signed: bool = False,
              scale: float = 1.0) -> Tensor:
        t = self.buffer(name, height, width, channels, signed=signed, scale=scale)
        t.buffer.pinned = True
        t.buffer.writes.append(-1)
        self._io.append((name, "input", t))
        return t

    def output(self, name: str, t: Tensor) -> None:
        t.buffer.pinned = True
        self._io.append((name, "output", t))

    # -- layers -----------------------------------------------------------------------------
    def _new_name(self, name: str) -> str:
        if name in self._names:
            raise SpecError(f"layer name {name!r} is used twice")
        self._names.add(name)
        return name

    def _out(self, name: str, out: Tensor | None, h: int, w: int, c: int, signed: bool, scale: float,
             upsample: bool) -> Tensor:
        f = 2 if upsample else 1
        if out is None:
            return self.buffer(name, h * f, w * f, c, signed=signed, scale=scale)
        if out.shape != (h * f, w * f, c):
            raise SpecError(f"layer {name!r}: out view is {out.shape}, the op produces {(h * f, w * f, c)}")
        if out.signed != signed:
            raise SpecError(f"layer {name!r}: out view signedness {out.signed}, the op produces {signed}")
        return out

    def _requant_args(self, name: str, c: int, bias, mult, shift, out_signed: bool,
                      clamp: tuple[int, int] | None):
        def vec(v, what):
            a = np.broadcast_to(np.asarray(v, dtype=np.int64), (c,)).copy() if np.ndim(v) == 0 else \
                np.asarray(v, dtype=np.int64).reshape(-1)
            if a.size != c:
                raise SpecError(f"layer {name!r}: {what} has {a.size} entries for {c} output channels")
            return a

        lo, hi = clamp if clamp is not None else act_range(self.config.act_bits, out_signed)
        return (vec(bias, "bias"), vec(mult, "mult"), vec(shift, "shift")), (int(lo), int(hi))

    def _add(self, layer: _Layer) -> Tensor:
        i = len(self._layers)
        self._layers.append(layer)
        for t in (layer.in0, layer.in1):
            if t is not None:
                t.buffer.reads.append(i)
        layer.out.buffer.writes.append(i)
        return layer.out

    def conv(self, name: str, x: Tensor, weights: np.ndarray, *, bias=0, mult=1, shift=0, stride: int = 1,
             pad: int | None = None, weight_bits: int = 4, out_signed: bool = False,
             clamp: tuple[int, int] | None = None, scale: float = 1.0, upsample: bool = False,
             out: Tensor | None = None) -> Tensor:
        """Dense conv; weights (Cout, k, k, Cin) integers. Default padding keeps 'same' geometry.
        Split by output channels where one layer would not fit the engine (module docstring)."""
        name = self._new_name(name)
        weights = np.asarray(weights)
        if weights.ndim != 4 or weights.shape[1] != weights.shape[2] or weights.shape[3] != x.channels:
            raise SpecError(f"layer {name!r}: weights {weights.shape} must be (Cout, k, k, Cin={x.channels})")
        cout, k = weights.shape[0], weights.shape[1]
        pad = k // 2 if pad is None else pad
        ho, wo = conv_out_size(x.height, k, stride, pad), conv_out_size(x.width, k, stride, pad)
        rq, cl = self._requant_args(name, cout, bias, mult, shift, out_signed, clamp)
        y = self._out(name, out, ho, wo, cout, out_signed, scale, upsample)
        x_ref = _shape_ref(x)
        flags = Flag.UPSAMPLE2X if upsample else Flag(0)
        unit = self.config.pe_out
        if y.group_channels and y.group_channels != y.channels and y.group_channels % unit:
            unit = y.group_channels * unit  # pieces of an interleaved view start on a run boundary

        def fits(lo, hi):
            out_ref = _shape_ref(self._piece(y, lo, hi - lo))  # y is stored upsampled already
            return _fits(LayerDescriptor(Opcode.CONV, x_ref, out_ref, flags=flags, kernel=k, stride=stride,
                                         pad=pad), self.config)

        pieces = [(0, cout)] if fits(0, cout) else channel_pieces(cout, unit, fits)
        for lo, hi in pieces:
            part = name if len(pieces) == 1 else self._new_name(f"{name}[{lo}:{hi}]")
            yo = y if len(pieces) == 1 else self._piece(y, lo, hi - lo)
            self._add(_Layer(part, Opcode.CONV, x, yo, None, k, stride, pad, weight_bits, upsample,
                             weights[lo:hi], tuple(v[lo:hi] for v in rq), cl))
        return y

    def dwconv(self, name: str, x: Tensor, weights: np.ndarray, *, bias=0, mult=1, shift=0, stride: int = 1,
               weight_bits: int = 4, out_signed: bool = False, clamp: tuple[int, int] | None = None,
               scale: float = 1.0, upsample: bool = False, out: Tensor | None = None) -> Tensor:
        """Depthwise 3x3, padding 1; weights (C, 3, 3)."""
        name = self._new_name(name)
        weights = np.asarray(weights)
        if weights.shape != (x.channels, 3, 3):
            raise SpecError(f"layer {name!r}: weights {weights.shape} must be ({x.channels}, 3, 3)")
        ho, wo = conv_out_size(x.height, 3, stride, 1), conv_out_size(x.width, 3, stride, 1)
        rq, cl = self._requant_args(name, x.channels, bias, mult, shift, out_signed, clamp)
        y = self._out(name, out, ho, wo, x.channels, out_signed, scale, upsample)
        return self._add(_Layer(name, Opcode.DWCONV, x, y, None, 3, stride, 1, weight_bits, upsample,
                                weights, rq, cl))

    def deform(self, name: str, x: Tensor, dilation: Tensor, weights: np.ndarray, *, bias=0, mult=1,
               shift=0, weight_bits: int = 4, out_signed: bool = False, clamp: tuple[int, int] | None = None,
               scale: float = 1.0, upsample: bool = False, out: Tensor | None = None) -> Tensor:
        """Modified deformable depthwise 3x3 with a per-pixel integer dilation map (H, W, 1) unsigned."""
        name = self._new_name(name)
        weights = np.asarray(weights)
        if weights.shape != (x.channels, 3, 3):
            raise SpecError(f"layer {name!r}: weights {weights.shape} must be ({x.channels}, 3, 3)")
        if dilation.shape != (x.height, x.width, 1) or dilation.signed:
            raise SpecError(f"layer {name!r}: dilation map must be unsigned {x.height}x{x.width}x1, "
                            f"got {'signed' if dilation.signed else 'unsigned'} {dilation.shape}")
        rq, cl = self._requant_args(name, x.channels, bias, mult, shift, out_signed, clamp)
        y = self._out(name, out, x.height, x.width, x.channels, out_signed, scale, upsample)
        h, w, c = x.height, x.width, x.channels
        flags = Flag.UPSAMPLE2X if upsample else Flag(0)

        def desc(lo, hi, in_stride):
            return LayerDescriptor(Opcode.DEFORM_DW, _ref(h, w, hi - lo, in_stride),
                                   _shape_ref(self._piece(y, lo, hi - lo)), _ref(h, w, 1), flags=flags,
                                   kernel=3, pad=1)

        def fits(lo, hi):  # reading a compact copy of its channels if need be
            return _fits(desc(lo, hi, hi - lo), self.config)

        pieces = [(0, c)] if _fits(desc(0, c, x.buffer.channels), self.config) else \
            channel_pieces(c, self.config.pe_out, fits)
        if len(pieces) > 1 and x.group_channels and x.group_channels != x.channels:
            raise SpecError(f"layer {name!r}: too big for the engine in one layer, and it reads an "
                            "interleaved view, which cannot be split by channels")
        for lo, hi in pieces:
            if len(pieces) == 1:
                self._add(_Layer(name, Opcode.DEFORM_DW, x, y, dilation, 3, 1, 1, weight_bits, upsample,
                                 weights, rq, cl))
                break
            src = self.view(x, lo, hi - lo)
            if line_buffer_words(desc(lo, hi, x.buffer.channels), self.config) > self.config.line_buffer_depth:
                src = self.copy(f"{name}.in[{lo}:{hi}]", src)  # compact rows: 15 of them fit the line buffer
            self._add(_Layer(self._new_name(f"{name}[{lo}:{hi}]"), Opcode.DEFORM_DW, src, self._piece(y, lo, hi - lo),
                             dilation, 3, 1, 1, weight_bits, upsample, weights[lo:hi],
                             tuple(v[lo:hi] for v in rq), cl))
        return y

    def maxpool(self, name: str, x: Tensor, *, kernel: int = 3, stride: int = 2, pad: int = 1,
                upsample: bool = False, out: Tensor | None = None) -> Tensor:
        name = self._new_name(name)
        ho, wo = conv_out_size(x.height, kernel, stride, pad), conv_out_size(x.width, kernel, stride, pad)
        y = self._out(name, out, ho, wo, x.channels, x.signed, x.scale, upsample)
        return self._add(_Layer(name, Opcode.MAXPOOL, x, y, None, kernel, stride, pad, 0, upsample))

    def add(self, name: str, a: Tensor, b: Tensor, *, mult_a: int, mult_b: int, bias=0, mult=1, shift=0,
            out_signed: bool = False, clamp: tuple[int, int] | None = None, scale: float = 1.0,
            upsample: bool = False, out: Tensor | None = None) -> Tensor:
        """requant(a * mult_a + b * mult_b + bias): the int16 multipliers align the input scales."""
        name = self._new_name(name)
        if a.shape != b.shape:
            raise SpecError(f"layer {name!r}: operands differ, {a.shape} vs {b.shape}")
        rq, cl = self._requant_args(name, a.channels, bias, mult, shift, out_signed, clamp)
        y = self._out(name, out, a.height, a.width, a.channels, out_signed, scale, upsample)
        return self._add(_Layer(name, Opcode.ADD, a, y, b, 1, 1, 0, 0, upsample, None, rq, cl,
                                (int(mult_a), int(mult_b))))

    def copy(self, name: str, x: Tensor, *, upsample: bool = False, out: Tensor | None = None) -> Tensor:
        """Move a tensor (into a view of a concat buffer), optionally nearest-2x upsampled."""
        name = self._new_name(name)
        y = self._out(name, out, x.height, x.width, x.channels, x.signed, x.scale, upsample)
        return self._add(_Layer(name, Opcode.COPY, x, y, None, 1, 1, 0, 0, upsample))

    # -- planning and encoding ----------------------------------------------------------------
    def _plan_arena(self) -> int:
        n = len(self._layers)
        placed: list[tuple[int, int, int, int]] = []  # (start, end, addr, size)
        live = []
        for buf in self._buffers:
            if not buf.writes and not buf.pinned:
                continue  # never used
            if not buf.writes:
                raise SpecError(f"tensor {buf.name!r} is read but never written")
            start = -1 if buf.pinned else min(buf.writes)
            end = n if buf.pinned else max(buf.reads + buf.writes)
            live.append((start, end, buf))
        arena = 0
        for start, end, buf in sorted(live, key=lambda t: (t[0], -t[2].nbytes)):
            size = align(buf.nbytes, BLOB_ALIGN)
            busy = sorted((a, a + s) for (s0, e0, a, s) in placed
                          if not self.reuse_memory or not (e0 < start or end < s0))
            addr = 0
            for lo, hi in busy:
                if addr + size <= lo:
                    break
                addr = max(addr, hi)
            buf.addr = addr
            placed.append((start, end, addr, size))
            arena = max(arena, addr + size)
        return arena

    def build(self) -> Program:
        if not self._layers:
            raise SpecError("program has no layers")
        arena = self._plan_arena()
        blob = bytearray()
        descs, names = [], []
        for i, L in enumerate(self._layers):
            w_off = p_off = 0
            if L.weights is not None:
                w_off = len(blob)
                blob += pack_weights(L.weights, L.weight_bits, where=f"layer {i} ({L.name}) weights")
                blob += bytes(align(len(blob)) - len(blob))
            if L.requant is not None:
                p_off = len(blob)
                blob += pack_requant(*L.requant, where=f"layer {i} ({L.name}) requant")
                blob += bytes(align(len(blob)) - len(blob))
            flags = Flag(0)
            if L.upsample:
                flags |= Flag.UPSAMPLE2X
            if L.in0.signed:
                flags |= Flag.IN0_SIGNED
            if L.in1 is not None and L.in1.signed:
                flags |= Flag.IN1_SIGNED
            if L.out.signed:
                flags |= Flag.OUT_SIGNED
            descs.append(LayerDescriptor(
                opcode=L.opcode, in0=L.in0.ref(), out=L.out.ref(),
                in1=L.in1.ref() if L.in1 is not None else TensorRef(0, 0, 0, 0, 0, 0, 0),
                flags=flags, kernel=L.kernel, stride=L.stride, pad=L.pad, weight_bits=L.weight_bits,
                layer_id=i, weights_offset=w_off, params_offset=p_off, clamp_lo=L.clamp[0],
                clamp_hi=L.clamp[1], add_mult0=L.add_mults[0], add_mult1=L.add_mults[1]))
            names.append(L.name)
        tensors = [TensorInfo(name, role, t.ref(), t.signed, float(t.scale)) for name, role, t in self._io]
        prog = Program(self.config, descs, names, bytes(blob), arena, tensors, self.extra)
        prog.validate()
        return prog

    @property
    def layer_count(self) -> int:
        return len(self._layers)
