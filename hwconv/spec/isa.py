"""The engine's instruction set: opcodes, tensor references and the binary layer descriptor.

Layout facts live in the field tables below (`TENSOR_REF_FIELDS`, `DESCRIPTOR_FIELDS`,
`PREAMBLE_FIELDS`); the RTL derives its bit slices from the same tables, so nothing re-declares
an offset. All multi-byte fields are little-endian.

Activation memory is channels-last. A tensor reference addresses element (y, x, c) at byte

    addr + (y * width + x) * pixel_stride + (c // group_channels) * group_stride + c % group_channels

relative to the arena base. `pixel_stride` > `channels` makes a view into a wider tensor (concat
and split are views, no copy); channel groups place runs of channels apart, which is how the
compiler lays out ShuffleNet's shuffled concat so that every later split is a contiguous view.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, replace

from .errors import SpecError


class Opcode(enum.IntEnum):
    CONV = 0x01       # dense k x k convolution (k = 1, 3), stride 1/2/4, zero padding
    DWCONV = 0x02     # depthwise k x k convolution
    DEFORM_DW = 0x03  # depthwise 3x3 whose dilation is read per pixel from the in1 tensor
    MAXPOOL = 0x04    # k x k max pool, stride s, padding ignored (never wins)
    ADD = 0x05        # element-wise in0 * add_mult0 + in1 * add_mult1 (+ bias), requantised
    COPY = 0x06       # move a tensor (with the UPSAMPLE flag: nearest 2x upsample)


class Flag(enum.IntFlag):
    UPSAMPLE2X = 0x01   # store every computed pixel as a 2x2 block (nearest upsample)
    IN0_SIGNED = 0x02   # in0 holds int8 (otherwise uint8)
    IN1_SIGNED = 0x04
    OUT_SIGNED = 0x08


# Ops that multiply-accumulate and requantise (they carry weights/params and a clamp range).
REQUANT_OPS = frozenset({Opcode.CONV, Opcode.DWCONV, Opcode.DEFORM_DW, Opcode.ADD})
WEIGHTED_OPS = frozenset({Opcode.CONV, Opcode.DWCONV, Opcode.DEFORM_DW})
# Which kernel sizes and strides each op accepts.
KERNELS = {
    Opcode.CONV: (1, 3),
    Opcode.DWCONV: (3,),
    Opcode.DEFORM_DW: (3,),
    Opcode.MAXPOOL: (2, 3),
    Opcode.ADD: (1,),
    Opcode.COPY: (1,),
}
# The depthwise ops' kernel row: the MAC array takes one row of a depthwise kernel per beat (a
# lane's first DEPTHWISE_ROW_TAPS multipliers), read from as many line-buffer ports.
DEPTHWISE_ROW_TAPS = max(max(KERNELS[Opcode.DWCONV]), max(KERNELS[Opcode.DEFORM_DW]))
STRIDES = {
    Opcode.CONV: (1, 2, 4),
    Opcode.DWCONV: (1, 2),
    Opcode.DEFORM_DW: (1,),
    Opcode.MAXPOOL: (1, 2),
    Opcode.ADD: (1,),
    Opcode.COPY: (1,),
}


def conv_out_size(size: int, kernel: int, stride: int, pad: int) -> int:
    """Output rows (or columns) of a kernel x kernel window at `stride` over `size` padded by `pad`."""
    return (size + 2 * pad - kernel) // stride + 1


def channel_reach(channels: int, group_channels: int, group_stride: int) -> int:
    """Bytes of a pixel from its first channel to one past its last, for channels stored in runs
    of `group_channels`, `group_stride` bytes apart (one run: group_channels == channels)."""
    last = channels - 1
    return (last // group_channels) * group_stride + last % group_channels + 1


# (name, struct format) in order; the byte offsets follow from the formats.
TENSOR_REF_FIELDS = (
    ("addr", "I"),            # byte offset from the arena base
    ("height", "H"),
    ("width", "H"),
    ("channels", "H"),
    ("pixel_stride", "H"),    # bytes from one pixel to the next
    ("group_channels", "H"),  # channels per contiguous run
    ("group_stride", "H"),    # bytes from one run to the next
)
TENSOR_REF_FORMAT = "<" + "".join(f for _, f in TENSOR_REF_FIELDS)
TENSOR_REF_BYTES = struct.calcsize(TENSOR_REF_FORMAT)

DESCRIPTOR_BYTES = 128
DESCRIPTOR_FIELDS = (
    ("opcode", "B"),
    ("flags", "B"),
    ("kernel", "B"),
    ("stride", "B"),
    ("pad", "B"),
    ("weight_bits", "B"),
    ("layer_id", "H"),
    ("in0", f"{TENSOR_REF_BYTES}s"),
    ("in1", f"{TENSOR_REF_BYTES}s"),
    ("out", f"{TENSOR_REF_BYTES}s"),
    ("weights_offset", "I"),  # byte offset of this layer's weights in the params blob
    ("params_offset", "I"),   # byte offset of this layer's per-channel requant records
    ("clamp_lo", "h"),        # requantised outputs are clamped to [clamp_lo, clamp_hi]
    ("clamp_hi", "h"),
    ("add_mult0", "h"),       # ADD only: integer multipliers that align the two input scales
    ("add_mult1", "h"),
)
_DESC_FORMAT_USED = "<" + "".join(f for _, f in DESCRIPTOR_FIELDS)
DESCRIPTOR_FORMAT = _DESC_FORMAT_USED + f"{DESCRIPTOR_BYTES - struct.calcsize(_DESC_FORMAT_USED)}x"
assert struct.calcsize(DESCRIPTOR_FORMAT) == DESCRIPTOR_BYTES


def field_offsets(table, prefix: str = "") -> dict[str, tuple[int, int]]:
    """{field: (byte_offset, byte_width)} of a field table, for RTL slicing and docs."""
    out, pos = {}, 0
    for name, fmt in table:
        width = struct.calcsize("<" + fmt)
        out[prefix + name] = (pos, width)
        pos += width
    return out


# The device image starts with a preamble the engine checks before running anything.
PREAMBLE_MAGIC = 0x50435748  # "HWCP" little-endian
PREAMBLE_BYTES = DESCRIPTOR_BYTES
PREAMBLE_FIELDS = (
    ("magic", "I"),
    ("version_major", "H"),
    ("version_minor", "H"),
    ("config_hash", "I"),
    ("n_layers", "I"),
)
_PRE_USED = "<" + "".join(f for _, f in PREAMBLE_FIELDS)
PREAMBLE_FORMAT = _PRE_USED + f"{PREAMBLE_BYTES - struct.calcsize(_PRE_USED)}x"


@dataclass(frozen=True)
class TensorRef:
    """Where a tensor (or a view of one) lives in the activation arena."""

    addr: int
    height: int
    width: int
    channels: int
    pixel_stride: int = 0    # 0 = channels (dense)
    group_channels: int = 0  # 0 = channels (one run)
    group_stride: int = 0    # 0 = group_channels

    def __post_init__(self) -> None:
        # Normalise the "0 = default" shorthands so equal views compare equal.
        if self.pixel_stride == 0:
            object.__setattr__(self, "pixel_stride", self.channels)
        if self.group_channels == 0:
            object.__setattr__(self, "group_channels", self.channels)
        if self.group_stride == 0:
            object.__setattr__(self, "group_stride", self.group_channels)

    @property
    def n_groups(self) -> int:
        return -(-self.channels // self.group_channels) if self.group_channels else 0

    def channel_offsets(self) -> list[int]:
        g = self.group_channels
        return [(c // g) * self.group_stride + c % g for c in range(self.channels)]

    @property
    def span(self) -> int:
        """Bytes from addr to one past the last element."""
        if self.height * self.width * self.channels == 0:
            return 0
        return (self.height * self.width - 1) * self.pixel_stride + self.reach

    @property
    def reach(self) -> int:
        """Bytes of one pixel from its first channel to one past its last."""
        return channel_reach(self.channels, self.group_channels, self.group_stride)

    def check(self, what: str) -> None:
        """Structural checks that do not need the engine config."""
        for name, fmt in TENSOR_REF_FIELDS:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool):
                raise SpecError(f"{what}.{name} = {v!r}: must be an integer")
            limit = 1 << (8 * struct.calcsize("<" + fmt))
            if not 0 <= v < limit:
                raise SpecError(f"{what}.{name} = {v}: must be in [0, {limit - 1}]")
        for name in ("height", "width", "channels"):
            if getattr(self, name) < 1:
                raise SpecError(f"{what}.{name} = {getattr(self, name)}: must be >= 1")
        if self.group_channels < 1 or self.group_channels > self.channels:
            raise SpecError(
                f"{what}.group_channels = {self.group_channels}: must be in [1, channels={self.channels}]")
        if self.group_stride < self.group_channels:
            raise SpecError(
                f"{what}.group_stride = {self.group_stride} < group_channels = {self.group_channels}: "
                "channel runs would overlap")
        reach = self.reach
        if reach > self.pixel_stride:
            raise SpecError(
                f"{what}.pixel_stride = {self.pixel_stride}: the channels reach byte {reach} of the "
                "pixel, so pixels would overlap")

    def pack(self) -> bytes:
        vals = [getattr(self, n) for n, _ in TENSOR_REF_FIELDS]
        try:
            return struct.pack(TENSOR_REF_FORMAT, *vals)
        except struct.error as exc:
            raise SpecError(f"tensor reference {self} does not fit the descriptor fields: {exc}") from None

    @classmethod
    def unpack(cls, raw: bytes) -> "TensorRef":
        vals = struct.unpack(TENSOR_REF_FORMAT, raw)
        return cls(**dict(zip((n for n, _ in TENSOR_REF_FIELDS), vals)))

    def with_(self, **changes) -> "TensorRef":
        return replace(self, **changes)


_EMPTY_REF = TensorRef(0, 0, 0, 0, 0, 0, 0)


@dataclass(frozen=True)
class LayerDescriptor:
    """One engine instruction. `in1` is ADD's second operand or DEFORM_DW's dilation map."""

    opcode: Opcode
    in0: TensorRef
    out: TensorRef
    in1: TensorRef = _EMPTY_REF
    flags: Flag = Flag(0)
    kernel: int = 1
    stride: int = 1
    pad: int = 0
    weight_bits: int = 0
    layer_id: int = 0
    weights_offset: int = 0
    params_offset: int = 0
    clamp_lo: int = 0
    clamp_hi: int = 0
    add_mult0: int = 0
    add_mult1: int = 0

    @property
    def upsample(self) -> bool:
        return bool(self.flags & Flag.UPSAMPLE2X)

    @property
    def compute_hw(self) -> tuple[int, int]:
        """Height/width the op computes (the stored out tensor is 2x that when upsampling)."""
        f = 2 if self.upsample else 1
        return self.out.height // f, self.out.width // f

    def pack(self) -> bytes:
        vals = []
        for name, _ in DESCRIPTOR_FIELDS:
            v = getattr(self, name)
            vals.append(v.pack() if isinstance(v, TensorRef) else int(v))
        try:
            return struct.pack(DESCRIPTOR_FORMAT, *vals)
        except struct.error as exc:
            raise SpecError(f"layer {self.layer_id}: a descriptor field is out of range: {exc}") from None

    @classmethod
    def unpack(cls, raw: bytes, *, where: str = "descriptor") -> "LayerDescriptor":
        if len(raw) != DESCRIPTOR_BYTES:
            raise SpecError(f"{where}: {len(raw)} bytes, a descriptor is {DESCRIPTOR_BYTES}")
        vals = dict(zip((n for n, _ in DESCRIPTOR_FIELDS), struct.unpack(DESCRIPTOR_FORMAT, raw)))
        try:
            vals["opcode"] = Opcode(vals["opcode"])
        except ValueError:
            raise SpecError(f"{where}: unknown opcode 0x{vals['opcode']:02x}; known: "
                            + ", ".join(f"{o.name}=0x{o.value:02x}" for o in Opcode)) from None
        known = int(sum(Flag))
        if vals["flags"] & ~known:
            raise SpecError(f"{where}: unknown flag bits 0x{vals['flags'] & ~known:02x}")
        vals["flags"] = Flag(vals["flags"])
        for ref in ("in0", "in1", "out"):
            vals[ref] = TensorRef.unpack(vals[ref])
        return cls(**vals)


DESCRIPTOR_FIELD_OFFSETS = field_offsets(DESCRIPTOR_FIELDS)
TENSOR_REF_FIELD_OFFSETS = field_offsets(TENSOR_REF_FIELDS)
PREAMBLE_FIELD_OFFSETS = field_offsets(PREAMBLE_FIELDS)
