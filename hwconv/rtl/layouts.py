"""Amaranth layouts of the binary formats the engine reads, derived from the spec's field tables.

`descriptor_layout()` views the 1024 bits of a fetched descriptor as named fields
(``d.in0.width``, ``d.clamp_lo``), with the bit positions computed from
`hwconv.spec.isa.DESCRIPTOR_FIELDS`: moving a field in the spec moves it here.
"""

from __future__ import annotations

import struct

from amaranth.hdl import signed, unsigned
from amaranth.lib import data

from ..spec.isa import (DESCRIPTOR_BYTES, DESCRIPTOR_FIELDS, PREAMBLE_BYTES, PREAMBLE_FIELDS,
                        TENSOR_REF_BYTES, TENSOR_REF_FIELDS)
from ..spec.params import REQUANT_MULT_BITS, REQUANT_RECORD_FORMAT, REQUANT_SHIFT_BITS

__all__ = ["descriptor_layout", "preamble_layout", "requant_record_layout", "tensor_ref_layout"]


def _shape(fmt: str, name: str):
    if fmt.endswith("s"):
        if int(fmt[:-1]) != TENSOR_REF_BYTES:
            raise ValueError(f"field {name}: {fmt} is not a tensor reference")
        return tensor_ref_layout()
    if fmt not in ("B", "H", "I", "b", "h", "i"):
        raise ValueError(f"field {name}: struct format {fmt!r} has no layout")
    bits = 8 * struct.calcsize("<" + fmt)
    return signed(bits) if fmt.islower() else unsigned(bits)


def _layout(table, total_bytes: int) -> data.StructLayout:
    fields = {name: _shape(fmt, name) for name, fmt in table}
    used = sum(struct.calcsize("<" + f) for _, f in table)
    if used < total_bytes:
        fields["_reserved"] = unsigned(8 * (total_bytes - used))
    return data.StructLayout(fields)


def tensor_ref_layout() -> data.StructLayout:
    return _layout(TENSOR_REF_FIELDS, TENSOR_REF_BYTES)


def descriptor_layout() -> data.StructLayout:
    return _layout(DESCRIPTOR_FIELDS, DESCRIPTOR_BYTES)


def preamble_layout() -> data.StructLayout:
    return _layout(PREAMBLE_FIELDS, PREAMBLE_BYTES)


def requant_record_layout() -> data.StructLayout:
    """One channel's record (spec.params): int32 bias, then mult[23:0] | shift << 24."""
    assert REQUANT_RECORD_FORMAT == "<iI"
    return data.StructLayout({"bias": signed(32), "mult": unsigned(REQUANT_MULT_BITS),
                              "shift": unsigned(REQUANT_SHIFT_BITS),
                              "_reserved": unsigned(32 - REQUANT_MULT_BITS - REQUANT_SHIFT_BITS)})
