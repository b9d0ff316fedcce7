"""Device memory as host and engine share it: the page, and tensors in the activation arena.

A tensor lives in the arena as a TensorRef says (strided pixels, channels in runs); `read_tensor`
and `write_tensor` are the one way the golden model, the driver and the simulation move (H, W, C)
integers in and out of it.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .isa import TensorRef

PAGE_BYTES = 4096  # an AXI burst never crosses a 4 KiB boundary; buffers start on one (pynq.allocate)


def _element_offsets(ref: TensorRef) -> np.ndarray:
    """(H, W, C) byte offsets of every element, relative to ref.addr."""
    pix = np.arange(ref.height * ref.width, dtype=np.int64) * ref.pixel_stride
    chan = np.asarray(ref.channel_offsets(), dtype=np.int64)
    return (pix[:, None] + chan[None, :]).reshape(ref.height, ref.width, ref.channels)


def _simple_view(arena: np.ndarray, ref: TensorRef) -> np.ndarray | None:
    """A strided (H, W, C) view when the channels form one contiguous run, else None."""
    if ref.group_channels != ref.channels:
        return None
    base = arena[ref.addr: ref.addr + ref.span]
    return as_strided(base, shape=(ref.height, ref.width, ref.channels),
                      strides=(ref.width * ref.pixel_stride, ref.pixel_stride, 1))


def read_tensor(arena: np.ndarray, ref: TensorRef, signed: bool) -> np.ndarray:
    """Copy a tensor out of the uint8 arena as int8 (signed) or uint8 (H, W, C)."""
    view = _simple_view(arena, ref)
    data = view.copy() if view is not None else arena[ref.addr + _element_offsets(ref)]
    return data.view(np.int8) if signed else data


def write_tensor(arena: np.ndarray, ref: TensorRef, values: np.ndarray) -> None:
    """Store (H, W, C) integer values (already in range) into the arena, two's complement bytes."""
    if values.shape != (ref.height, ref.width, ref.channels):
        raise ValueError(f"writing {values.shape} into a {ref.height}x{ref.width}x{ref.channels} tensor")
    raw = values.astype(np.int64).astype(np.uint8)  # wraps negatives to two's complement bytes
    view = _simple_view(arena, ref)
    if view is not None:
        # as_strided views of a contiguous arena write through.
        view[...] = raw
    else:
        arena[ref.addr + _element_offsets(ref)] = raw
