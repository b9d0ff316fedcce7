"""The engine contract: the single source of truth for every hardware/software fact.

RTL generator, golden model, compiler and driver import from here; none re-declares a width, an
opcode, a register offset or a descriptor field.
"""

from .config import EngineConfig
from .errors import ProgramFormatError, SpecError
from .isa import (DESCRIPTOR_BYTES, DESCRIPTOR_FIELD_OFFSETS, DESCRIPTOR_FIELDS, PREAMBLE_BYTES,
                  PREAMBLE_MAGIC, REQUANT_OPS, WEIGHTED_OPS, Flag, LayerDescriptor, Opcode, TensorRef)
from .params import (BLOB_ALIGN, REQUANT_MULT_BITS, REQUANT_RECORD_BYTES, REQUANT_SHIFT_BITS, act_range,
                     pack_requant, pack_weights, quantize_multiplier, unpack_requant, unpack_weights,
                     weight_range)
from .program import FILE_HEADER_BYTES, FORMAT_VERSION, Program, TensorInfo
from .registers import ENGINE_ID, ENGINE_VLNV, REGISTERS, ErrorCode, Register, offset, reg

__all__ = [name for name in dir() if not name.startswith("_")]
