"""The layer geometry record: what every engine unit needs to know about the running layer beyond
its descriptor, computed once per layer by the `DescriptorChecker` and held (registered) until
the next layer's check. Units read fields by name (``geo.taps``, ``geo.row_len0``); nothing
recomputes them."""

from __future__ import annotations

from amaranth.hdl import unsigned
from amaranth.lib import data

__all__ = ["geometry_layout"]


def geometry_layout() -> data.StructLayout:
    return data.StructLayout({
        # the op's class
        "conv": unsigned(1),
        "depthwise": unsigned(1),    # DWCONV or DEFORM_DW: a weight per channel and tap
        "deform": unsigned(1),
        "pool": unsigned(1),
        "add": unsigned(1),
        "copy": unsigned(1),
        "upsample": unsigned(1),
        "in0_signed": unsigned(1),
        "in1_signed": unsigned(1),
        "out_signed": unsigned(1),
        # loop bounds
        "taps": unsigned(5),         # steps per (pixel, out block): ADD 2, COPY 1, depthwise
                                     # kernel (a kernel row per step), else kernel * kernel
        "rows": unsigned(5),         # input rows kept in the line buffer (validate.line_buffer_rows)
        "prefetch": unsigned(1),     # the next row's rows load during this row (validate.prefetches_rows)
        "cb_in": unsigned(16),       # blocks of P input channels
        "ob_n": unsigned(16),        # blocks of P output channels
        "cbi_n": unsigned(16),       # input blocks summed per tap (CONV: cb_in, others 1)
        "packed": unsigned(1),       # two out blocks per multiplier (spec.validate.packs_out_blocks)
        "ob_steps": unsigned(16),    # the issuer's out-block loop: pairs of blocks when packed
        "block_words": unsigned(32), # CONV: a weight bank's words per out block (taps x cb_in)
        "ho": unsigned(16),          # output rows / columns computed (before a 2x upsample)
        "wo": unsigned(16),
        # byte spans
        "row_len0": unsigned(32),    # bytes of one in0 / in1 row, first pixel's first channel on
        "row_len1": unsigned(32),
        "slot_words": unsigned(16),  # line-buffer words per kept row (validate.line_slot_words)
        "out_reach": unsigned(17),   # bytes from an output pixel's first to one past its last channel
        "out_row_len": unsigned(32), # bytes of one output row, first pixel's first channel on
        # row to row, in bytes (width * pixel_stride): addresses step, nothing multiplies
        "in0_row_stride": unsigned(32),
        "in1_row_stride": unsigned(32),
        "out_row_stride": unsigned(32),
        "weight_bytes": unsigned(32),  # the layer's packed weights
    })
