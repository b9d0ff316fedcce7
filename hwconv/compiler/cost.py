"""Work per layer: MACs and bytes moved, from the descriptor alone (the cycle model builds on it)."""

from __future__ import annotations

from ..spec.isa import LayerDescriptor, Opcode
from ..spec.validate import packs_out_blocks


def layer_macs(d: LayerDescriptor) -> int:
    ho, wo = d.compute_hw
    if d.opcode == Opcode.CONV:
        return ho * wo * d.out.channels * d.kernel * d.kernel * d.in0.channels
    if d.opcode in (Opcode.DWCONV, Opcode.DEFORM_DW):
        return ho * wo * d.out.channels * d.kernel * d.kernel
    return 0


def peak_macs_per_cycle(d: LayerDescriptor, pe_in: int, pe_out: int) -> int:
    """The array's peak for `d`'s op: pe_in x pe_out products a cycle, two per multiplier for a
    packed 4-bit CONV (spec.validate.packs_out_blocks). MAC utilisation is measured against it."""
    return pe_in * pe_out * (2 if packs_out_blocks(d) else 1)


def ideal_cycles(d: LayerDescriptor, pe_in: int, pe_out: int) -> int:
    """Lower bound: MACs spread perfectly over the array (dense: its peak, `peak_macs_per_cycle`;
    depthwise: one MAC per channel lane per tap, pe_out lanes x 9 taps as in CoDeNet's 16x9 array)."""
    macs = layer_macs(d)
    if d.opcode == Opcode.CONV:
        return -(-macs // peak_macs_per_cycle(d, pe_in, pe_out))
    if d.opcode in (Opcode.DWCONV, Opcode.DEFORM_DW):
        return -(-macs // (pe_out * 9))
    ho, wo = d.compute_hw
    return -(-(ho * wo * d.out.channels) // pe_out)
