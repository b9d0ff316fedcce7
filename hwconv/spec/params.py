"""Encoding of layer parameters in the params blob: packed weights and requant records.

Weights: two's complement, flattened in OHWI order for CONV ([Cout][ky][kx][Cin], input channels
contiguous so a pe_in-wide run is one burst) and [C][ky][kx] for depthwise ops. 4-bit weights
pack two per byte, element 2i in the low nibble. 8-bit weights are one int8 per byte.

Requant record, one per output channel, REQUANT_RECORD_BYTES each:
    int32 bias (at scale s_in * s_w), uint32 word = mult[23:0] | shift[29:24], bits 31:30 reserved
    and zero (a record that sets them is refused by spec.validate.check_requant_records and by the
    engine with ErrorCode.BAD_REQUANT: they are not silently part of the shift).

Rounding rule (the whole contract rests on it):
    acc  = sum(w * x) + bias                      exact, fits acc_bits (proved by the compiler)
    prod = acc * mult                             exact in 64 bits
    y    = (prod + 2**(shift-1)) >> shift         arithmetic shift; shift = 0: y = prod
    out  = clamp(y, clamp_lo, clamp_hi)
i.e. round half towards +infinity of acc * mult / 2**shift.
"""

from __future__ import annotations

import math
import struct

import numpy as np

from .errors import SpecError

REQUANT_MULT_BITS = 24
REQUANT_SHIFT_BITS = 6
REQUANT_RECORD_FORMAT = "<iI"
REQUANT_RECORD_BYTES = struct.calcsize(REQUANT_RECORD_FORMAT)
BLOB_ALIGN = 64  # every layer's weights and records start on a 64-byte boundary (AXI bursts)

MULT_MAX = (1 << REQUANT_MULT_BITS) - 1
SHIFT_MAX = (1 << REQUANT_SHIFT_BITS) - 1
REQUANT_RESERVED_MASK = 0xFFFFFFFF & ~((1 << (REQUANT_MULT_BITS + REQUANT_SHIFT_BITS)) - 1)  # word bits 31:30


def align(n: int, to: int = BLOB_ALIGN) -> int:
    return -(-n // to) * to


def weight_range(bits: int) -> tuple[int, int]:
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def act_range(bits: int, signed: bool) -> tuple[int, int]:
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def packed_weight_bytes(n_weights: int, bits: int) -> int:
    return n_weights if bits == 8 else (n_weights + 1) // 2


def pack_weights(w: np.ndarray, bits: int, *, where: str = "weights") -> bytes:
    """Pack integer weights (any shape, already in blob order) into bytes."""
    if bits not in (4, 8):
        raise SpecError(f"{where}: weight_bits={bits}, must be 4 or 8")
    flat = np.asarray(w).reshape(-1)
    if not np.issubdtype(flat.dtype, np.integer):
        raise SpecError(f"{where}: weights must be integers, got {flat.dtype}")
    lo, hi = weight_range(bits)
    if flat.size and (flat.min() < lo or flat.max() > hi):
        bad = int(np.flatnonzero((flat < lo) | (flat > hi))[0])
        raise SpecError(f"{where}: weight #{bad} = {int(flat[bad])} outside the {bits}-bit range [{lo}, {hi}]")
    u = flat.astype(np.int64) & ((1 << bits) - 1)
    if bits == 8:
        return u.astype(np.uint8).tobytes()
    if u.size % 2:
        u = np.append(u, 0)
    return (u[0::2] | (u[1::2] << 4)).astype(np.uint8).tobytes()


def unpack_weights(raw: bytes | np.ndarray, n: int, bits: int) -> np.ndarray:
    """Inverse of pack_weights: n signed integers (int8 array)."""
    b = np.frombuffer(raw, dtype=np.uint8) if isinstance(raw, (bytes, bytearray, memoryview)) else raw
    b = b[:packed_weight_bytes(n, bits)]
    if bits == 8:
        return b[:n].view(np.int8).copy()
    nib = np.empty(b.size * 2, dtype=np.int8)
    nib[0::2] = (b & 0x0F).astype(np.int8)
    nib[1::2] = (b >> 4).astype(np.int8)
    nib[nib > 7] -= 16
    return nib[:n]


def pack_requant(bias: np.ndarray, mult: np.ndarray, shift: np.ndarray, *, where: str = "requant") -> bytes:
    bias, mult, shift = (np.asarray(a).reshape(-1).astype(np.int64) for a in (bias, mult, shift))
    if not (bias.size == mult.size == shift.size):
        raise SpecError(f"{where}: bias/mult/shift lengths differ ({bias.size}, {mult.size}, {shift.size})")
    checks = (
        (bias, -(1 << 31), (1 << 31) - 1, "bias", "int32"),
        (mult, 0, MULT_MAX, "mult", f"{REQUANT_MULT_BITS}-bit unsigned"),
        (shift, 0, SHIFT_MAX, "shift", f"{REQUANT_SHIFT_BITS}-bit unsigned"),
    )
    for arr, lo, hi, name, kind in checks:
        if arr.size and (arr.min() < lo or arr.max() > hi):
            c = int(np.flatnonzero((arr < lo) | (arr > hi))[0])
            raise SpecError(f"{where}: {name}[channel {c}] = {int(arr[c])} does not fit {kind} [{lo}, {hi}]")
    rec = np.empty(bias.size, dtype=[("bias", "<i4"), ("word", "<u4")])
    rec["bias"] = bias
    rec["word"] = mult | (shift << REQUANT_MULT_BITS)
    return rec.tobytes()


def unpack_requant(raw: bytes | np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rec = np.frombuffer(bytes(raw[: n * REQUANT_RECORD_BYTES]), dtype=[("bias", "<i4"), ("word", "<u4")])
    word = rec["word"].astype(np.int64)
    return rec["bias"].astype(np.int64), word & MULT_MAX, (word >> REQUANT_MULT_BITS) & SHIFT_MAX


def requant_reserved_bits(raw: bytes | np.ndarray, n: int) -> np.ndarray:
    """Per record, the reserved word bits (31:30) that are set; all zero in a valid blob."""
    rec = np.frombuffer(bytes(raw[: n * REQUANT_RECORD_BYTES]), dtype=[("bias", "<i4"), ("word", "<u4")])
    return rec["word"] & np.uint32(REQUANT_RESERVED_MASK)


def quantize_multiplier(real: float, *, where: str = "requant") -> tuple[int, int]:
    """(mult, shift) with mult / 2**shift closest to `real`, mult using all REQUANT_MULT_BITS.

    Exact for powers of two. Raises if `real` is not representable (<= 0, or too large/small).
    """
    if not math.isfinite(real) or real <= 0:
        raise SpecError(f"{where}: requant multiplier {real!r} must be a positive finite number")
    mant, exp = math.frexp(real)  # real = mant * 2**exp, mant in [0.5, 1)
    shift = REQUANT_MULT_BITS - exp
    if shift > SHIFT_MAX:  # tiny multipliers: the shift saturates and precision is given up
        shift = SHIFT_MAX
        mult = round(math.ldexp(real, SHIFT_MAX))
    else:
        mult = round(mant * (1 << REQUANT_MULT_BITS))
        if mult > MULT_MAX:  # mantissa rounded up to 1.0
            if shift == 0:  # at the top of the range the nearest representable value is MULT_MAX
                mult = MULT_MAX
            else:
                mult >>= 1
                shift -= 1
    if mult == 0:
        raise SpecError(f"{where}: requant multiplier {real!r} is too small to represent "
                        f"(below 2**-{SHIFT_MAX + 1})")
    # Trim trailing zero bits so exact (power-of-two) multipliers stay small.
    while shift > 0 and mult % 2 == 0:
        mult >>= 1
        shift -= 1
    if shift < 0:
        raise SpecError(f"{where}: requant multiplier {real!r} is too large (max {MULT_MAX})")
    return int(mult), int(shift)
