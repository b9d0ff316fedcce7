"""RTL arena vs golden arena: bit-exact match, or the first mismatching layer and (y, x, c).

The RTL leaves only its final arena, so a layer is judged by the bytes of its output that no
later layer overwrote (`owners`: for every arena byte, the last layer that stores to it). The
first layer, in program order, with a differing owned byte is reported with the first differing
element in (y, x, c) order of its stored output tensor (after any 2x upsampling), the RTL and
golden values and how many of its elements differ. A layer whose output is wholly overwritten
later cannot be judged ("unchecked"); a program built with `ProgramBuilder(reuse_memory=False)`
has none. Differing bytes that no layer stores to (inputs, padding between tensors) are counted
separately: the engine wrote where it should not, or clobbered an input.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..golden.engine import execute
from ..spec.memory import read_tensor, write_tensor
from ..spec.isa import Flag, TensorRef
from ..spec.program import Program
from ..spec.registers import ErrorCode

__all__ = ["Comparison", "Mismatch", "compare_arenas", "element_offsets", "golden_arena", "owners"]


def element_offsets(ref: TensorRef) -> np.ndarray:
    """(H, W, C) arena byte offsets of a tensor's elements."""
    pix = np.arange(ref.height * ref.width, dtype=np.int64) * ref.pixel_stride
    chan = np.asarray(ref.channel_offsets(), dtype=np.int64)
    return (ref.addr + pix[:, None] + chan[None, :]).reshape(ref.height, ref.width, ref.channels)


def owners(program: Program) -> np.ndarray:
    """For every arena byte, the index of the last layer storing to it (-1: none)."""
    own = np.full(program.arena_bytes, -1, dtype=np.int32)
    for i, d in enumerate(program.layers):
        own[element_offsets(d.out)] = i
    return own


def golden_arena(program: Program, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The arena after the golden model ran `program` on `inputs` (raises on an engine error)."""
    arena = np.zeros(program.arena_bytes, dtype=np.uint8)
    for name, value in inputs.items():
        write_tensor(arena, program.tensor(name).ref, np.asarray(value))
    res = execute(program.config, program.device_image(), program.params, arena)
    if res.error != ErrorCode.NONE:
        res.raise_for_error()
    return arena


@dataclass(frozen=True)
class Mismatch:
    layer: int
    name: str
    yxc: tuple[int, int, int]
    got: int
    want: int
    elements: int       # differing elements of this layer's (owned) output
    checked: int        # owned elements compared

    def describe(self) -> str:
        y, x, c = self.yxc
        return (f"layer {self.layer} ({self.name}): first difference at (y={y}, x={x}, c={c}): "
                f"RTL {self.got}, golden {self.want}; {self.elements} of {self.checked} "
                f"elements differ")


@dataclass
class Comparison:
    match: bool
    differing_bytes: int
    first: Mismatch | None = None
    layers: list[Mismatch] = field(default_factory=list)   # every mismatching layer, in order
    unchecked: list[int] = field(default_factory=list)      # layers fully overwritten later
    stray_bytes: int = 0                                    # differing bytes no layer stores
    first_stray: int | None = None                          # arena offset of the first one
    outputs: dict[str, bool] = field(default_factory=dict)  # output tensor name -> equal

    def describe(self, names: list[str] | None = None) -> str:
        if self.match:
            return "RTL arena == golden arena (bit-exact)"
        lines = [f"RTL differs from golden in {self.differing_bytes} arena byte(s)"]
        if self.first is not None:
            lines.append("first mismatching layer: " + self.first.describe())
            before = [i for i in self.unchecked if i < self.first.layer]
            if before:
                lines.append(f"  (layers {before} were overwritten by later layers and could not "
                             f"be checked; build the program with reuse_memory=False to see them)")
        if self.stray_bytes:
            lines.append(f"{self.stray_bytes} differing byte(s) outside every layer's output "
                         f"(first at arena offset 0x{self.first_stray:x}): an input was "
                         f"overwritten or the engine stored out of place")
        bad = [n for n, ok in self.outputs.items() if not ok]
        if bad:
            lines.append(f"outputs that differ: {', '.join(bad)}")
        return "\n".join(lines)


def compare_arenas(program: Program, got: bytes | np.ndarray, want: np.ndarray) -> Comparison:
    """Compare the RTL's final arena `got` with the golden one `want` (module docstring)."""
    got = np.frombuffer(bytes(got), dtype=np.uint8) if not isinstance(got, np.ndarray) else got
    if got.shape != want.shape:
        raise ValueError(f"RTL arena is {got.size} bytes, golden {want.size}")
    diff = got != want
    outputs = {t.name: bool(np.array_equal(read_tensor(got, t.ref, t.signed),
                                           read_tensor(want, t.ref, t.signed)))
               for t in program.outputs}
    n_diff = int(diff.sum())
    if n_diff == 0:
        return Comparison(True, 0, outputs=outputs)
    own = owners(program)
    result = Comparison(False, n_diff, outputs=outputs)
    for i, d in enumerate(program.layers):
        offs = element_offsets(d.out)
        mine = own[offs] == i
        if not mine.any():
            result.unchecked.append(i)
            continue
        bad = diff[offs] & mine
        if not bad.any():
            continue
        y, x, c = (int(v) for v in np.argwhere(bad)[0])
        signed = bool(d.flags & Flag.OUT_SIGNED)
        value = (lambda a: int(a.view(np.int8)[offs[y, x, c]]) if signed  # noqa: E731
                 else int(a[offs[y, x, c]]))
        result.layers.append(Mismatch(i, program.layer_names[i], (y, x, c), value(got), value(want),
                                      int(bad.sum()), int(mine.sum())))
    result.first = result.layers[0] if result.layers else None
    stray = diff & (own < 0)
    result.stray_bytes = int(stray.sum())
    if result.stray_bytes:
        result.first_stray = int(np.argmax(stray))
    return result
