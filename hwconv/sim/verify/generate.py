"""Constrained-random multi-layer programs, legal per spec.validate, aimed at the coverage bins.

`generate(config, seed, layers)` is a pure function of its arguments: the same seed always
gives the same program, so any failure is reproduced from its seed (and the layer count).

Each layer aims at one legal bin of the coverage cross (`coverage.legal_bins`, in a fixed
shuffled order): a program with seed s starts at bin (s // 2) * layers and walks on, and odd
seeds run under backpressure, so consecutive seeds sweep every bin of both halves. The layer
is then drawn around its bin:

- input: a tensor an earlier layer wrote (whole, or the channel slice it stored: a split), or
  a fresh program input (whole, or a slice of a wider one); channel counts around P (1, P-1,
  P, P+1, 2P+3, ...); shapes small enough to simulate quickly, except that about one layer in
  twelve is grown until a buffer (line, row or weight; EngineConfig) is nearly full;
- parameters: kernel, stride, padding (all legal values), 4/8-bit weights, a narrow clamp
  sometimes, 2x upsample on store;
- output: its own buffer, a channel slice of a wider buffer, or interleaved runs (ShuffleNet's
  concat halves); a later output of the same shape fills the rest of such a buffer (a real
  concat), and later layers read the concatenated buffer whole;
- deformable layers read a dilation map of the bin's class (0, below, at or past the clamp),
  or one computed by a 1x1 offset-predictor conv just before them (as CoDeNet does), whose
  clamp puts the map's largest value in the bin's class.

Every layer lands in the bin it aims at (tests/test_sim_verify.py checks this), so a run of
2 * ceil(bins per half / layers) consecutive seeds hits every legal bin.

Every candidate layer is checked by building it with ProgramBuilder (spec.validate); an illegal
draw is redrawn, so programs are legal by construction and the whole program is built again
at the end.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ...spec.config import EngineConfig
from ...spec.errors import SpecError
from ...spec.isa import channel_reach
from ...spec.params import act_range
from .coverage import legal_bins
from .spec import BufferSpec, LayerSpec, ProgramSpec, View, build

__all__ = ["DEFAULT_LAYERS", "bin_order", "generate", "target_bins"]

DEFAULT_LAYERS = 50
MAX_ELEMENTS = 1024        # input h*w*c of an ordinary (not at-the-limit) layer: keeps layers quick
LIMIT_PROBABILITY = 1 / 12
BACKPRESSURE = (0.2, 0.6)  # stall probability range for programs under backpressure
_TRIES = 40


@functools.lru_cache(maxsize=1)
def bin_order() -> dict[int, list[tuple]]:
    """Legal bins per backpressure value, in a fixed shuffled order (not seed-dependent)."""
    bins = legal_bins()
    order = np.random.default_rng(0x5EB1).permutation(len(bins))
    shuffled = [bins[i] for i in order]
    return {bp: [b for b in shuffled if b[-1] == bp] for bp in (0, 1)}


def target_bins(seed: int, layers: int) -> list[tuple]:
    bins = bin_order()[seed % 2]
    start = (seed // 2) * layers
    return [bins[(start + j) % len(bins)] for j in range(layers)]


@dataclass
class _Readable:
    view: View
    h: int
    w: int
    signed: bool
    concat: bool = False      # a buffer two or more layers wrote


class _Generator:
    def __init__(self, config: EngineConfig, seed: int):
        self.cfg = config
        self.rng = np.random.default_rng([seed, 0x6E4])
        self.spec = ProgramSpec(seed)
        if seed % 2:
            self.spec.backpressure = round(float(self.rng.uniform(*BACKPRESSURE)), 2)
        self.readable: list[_Readable] = []
        self.holes: list[tuple[View, int, int]] = []   # unwritten views of concat buffers
        self.writers: dict[int, int] = {}

    # -- helpers ---------------------------------------------------------------------------
    def _seed(self) -> int:
        return int(self.rng.integers(1 << 31))

    def _buffer(self, name: str, h: int, w: int, c: int, signed: bool, fill: str = "random") -> int:
        self.spec.buffers.append(BufferSpec(f"{name}{len(self.spec.buffers)}", h, w, c, signed,
                                            self._seed(), fill))
        return len(self.spec.buffers) - 1

    def _channels(self, least: int = 1) -> int:
        p = int(self.rng.choice([self.cfg.pe_in, self.cfg.pe_out]))
        choices = sorted({c for c in (1, 2, 3, max(1, p - 1), p, p + 1, 2 * p, 2 * p + 3)
                          if c >= least})
        return int(min(self.rng.choice(choices), self.cfg.max_channels))

    def _fresh(self, kind: str, h: int, w: int, c: int, signed: bool) -> View:
        if kind == "whole":
            return View(self._buffer("in", h, w, c, signed), 0, c)
        extra = int(self.rng.integers(1, 6))
        off = int(self.rng.integers(0, extra + 1))
        return View(self._buffer("wide", h, w, c + extra, signed), off, c)

    def _input(self, kind: str, signed: bool, max_elems: int,
               size: tuple[int, ...] | None = None, least: int = 1) -> tuple[View, int, int]:
        """An input of this kind and sign and at least `least` channels: an earlier layer's
        output (60 %) or a fresh one; `size` = (width, channels) asks for a fresh one of 1-3
        rows of that size."""
        if size is not None:
            h = int(self.rng.integers(1, 4))
            c = max(size[1], least)
            return self._fresh(kind, h, size[0], c, signed), h, size[0]
        pool = [r for r in self.readable if r.signed == signed and r.view.channels >= least
                and (r.view.channels != self.spec.buffers[r.view.buf].channels) == (kind == "slice")
                and r.h * r.w * r.view.channels <= max_elems and r.w <= self.cfg.max_width]
        if pool and self.rng.random() < 0.6:
            r = pool[int(self.rng.integers(len(pool)))]
            return r.view, r.h, r.w
        c = self._channels(least)
        h, w = (int(v) for v in self.rng.integers(1, 13, size=2))
        while h * w * c > max_elems:
            h, w = max(1, h // 2), max(1, w // 2)
        return self._fresh(kind, h, w, c, signed), h, w

    def _output(self, kind: str, h: int, w: int, c: int, signed: bool) -> View:
        """Where the layer stores: its own buffer, a slice or interleaved runs of a wider one."""
        assert kind != "interleaved" or c >= 2, "_draw gives an interleaved output 2+ channels"
        for i, (v, hh, ww) in enumerate(self.holes):
            grouped = bool(v.group)
            if kind != "own" and (hh, ww, v.channels) == (h, w, c) \
                    and grouped == (kind == "interleaved") \
                    and self.spec.buffers[v.buf].signed == signed and self.rng.random() < 0.8:
                del self.holes[i]
                return v
        if kind == "own":
            return View(self._buffer("t", h, w, c, signed), 0, c)
        if kind == "slice":
            extra = c if self.rng.random() < 0.5 else int(self.rng.integers(1, 6))
            first = bool(self.rng.random() < 0.5)
            buf = self._buffer("cat", h, w, c + extra, signed)
            mine = View(buf, 0 if first else extra, c)
            if extra == c:   # the other half is a hole a later output may fill
                self.holes.append((View(buf, c if first else 0, c), h, w))
            return mine
        g = int(self.rng.integers(1, c))
        if self.rng.random() < 0.6:        # ShuffleNet: two halves, runs of g, 2g apart
            buf = self._buffer("shuf", h, w, 2 * c, signed)
            first = bool(self.rng.random() < 0.5)
            other = View(buf, g if first else 0, c, g, 2 * g) if c % g == 0 else None
            if other is not None:
                self.holes.append((other, h, w))
            return View(buf, 0 if first else g, c, g, 2 * g)
        gs = g + int(self.rng.integers(1, 4))
        reach = channel_reach(c, g, gs)
        buf = self._buffer("grp", h, w, reach + int(self.rng.integers(0, 3)), signed)
        return View(buf, 0, c, g, gs)

    def _clamp(self, signed: bool) -> tuple[int, int] | None:
        if self.rng.random() >= 0.2:
            return None
        lo, hi = act_range(self.cfg.act_bits, signed)
        return lo, int(self.rng.integers(lo + 1, min(hi, lo + 20) + 1))

    def _dilation_clamp(self, dil: str) -> tuple[int, int]:
        """An offset predictor's clamp that puts its map's largest value in class `dil`
        (whatever its weights): the clamp bounds the maximum on both sides."""
        m = self.cfg.max_dilation
        if dil == "zero" or m == 0 and dil != "past_clamp":
            return 0, 0
        if dil == "at_clamp":
            return m, m
        if dil == "within" and m > 1:
            hi = int(self.rng.integers(1, m))
            return int(self.rng.integers(1, hi + 1)), hi
        lo = min(255, m + 1)
        return lo, int(self.rng.integers(lo, min(255, m + 4) + 1))

    # -- one layer ---------------------------------------------------------------------------
    def _draw(self, target: tuple, size: tuple[int, ...] | None = None) -> list[LayerSpec]:
        """The layers for `target`; `size` = (width, channels[, conv outputs]) of a fresh input
        (a layer grown to a buffer limit)."""
        op, kernel, stride, dil, sign, view, upsample = target[:7]
        in_kind, out_kind = view.split(">")
        s_in, s_out = sign[0] == "s", sign[2] == "s"
        # an interleaved store needs 2+ channels: the output's, which only conv chooses itself
        least = 2 if out_kind == "interleaved" and op != "conv" else 1
        x, h, w = self._input(in_kind, s_in, MAX_ELEMENTS, size, least)
        c = x.channels
        pad, bits, co = 0, 0, c
        if op in ("conv", "maxpool"):
            max_pad = kernel - 1 if op == "maxpool" else kernel // 2
            pad = int(self.rng.integers(0, max_pad + 1)) if self.rng.random() < 0.4 else max_pad
            if h + 2 * pad < kernel or w + 2 * pad < kernel:
                pad = max_pad
        elif op in ("dwconv", "deform"):
            pad = 1
        if op in ("conv", "dwconv", "deform"):
            bits = int(self.rng.choice([4, 8]))
        if op == "conv":
            co = size[2] if size is not None and len(size) > 2 else \
                self._channels() if size is None or size[0] > 2 else c
            if out_kind == "interleaved":
                co = max(co, 2)
        ho = (h + 2 * pad - kernel) // stride + 1
        wo = (w + 2 * pad - kernel) // stride + 1
        f = 2 if upsample else 1
        layers = []
        x1 = None
        if op == "add":    # the layer's input is a slice when either operand is one
            other_kind = "slice" if in_kind == "slice" and self.rng.random() < 0.5 else "whole"
            x1 = self._fresh(other_kind, h, w, c, bool(self.rng.random() < 0.5))
        elif op == "deform":
            if self.rng.random() < 0.25:    # an offset predictor: 1x1 conv -> uint8 map
                x1 = View(self._buffer("dil", h, w, 1, False), 0, 1)
                layers.append(LayerSpec("conv", x, x1, kernel=1, stride=1, pad=0, weight_bits=4,
                                        clamp=self._dilation_clamp(dil), seed=self._seed()))
            else:
                x1 = View(self._buffer("dil", h, w, 1, False, fill=dil), 0, 1)
        out_signed = s_in if op in ("maxpool", "copy") else s_out
        out = self._output(out_kind, ho * f, wo * f, co, out_signed)
        clamp = self._clamp(out_signed) if op not in ("maxpool", "copy") else None
        layers.append(LayerSpec(op, x, out, x1, kernel, stride, pad, bits, bool(upsample), clamp,
                                self._seed()))
        return layers

    def _at_limit(self, target: tuple, limit: str) -> list[LayerSpec] | None:
        """The layer of `target` on a fresh input grown until `limit` (a buffer) is nearly
        full: the largest width (line, row; then channels once the width is max_width) or
        channel count (weight) whose whole draw still builds as one layer, by bisection."""
        state = self.rng.bit_generator.state
        n_buf, holes = len(self.spec.buffers), list(self.holes)

        def draw(size: tuple[int, int]) -> list[LayerSpec] | None:
            self.rng.bit_generator.state = state
            del self.spec.buffers[n_buf:]
            self.holes = list(holes)
            layers = self._draw(target, size)
            return layers if self._legal(layers) else None

        def bisect(lo: int, hi: int, size_of) -> int | None:
            best = None
            while lo <= hi:
                mid = (lo + hi) // 2
                if draw(size_of(mid)) is not None:
                    best, lo = mid, mid + 1
                else:
                    hi = mid - 1
            return best

        c0 = self._channels()
        if limit == "weight":
            best = bisect(1, self.cfg.max_channels, lambda n: (1, n))
            size = None if best is None else (1, best)
            if best and target[0] == "conv":    # then as many output channels as still fit
                size = (1, best, bisect(best, self.cfg.max_channels, lambda n: (1, best, n)) or best)
        else:
            best = bisect(1, self.cfg.max_width, lambda n: (n, c0))
            size = None if best is None else (best, c0)
            if best == self.cfg.max_width:
                more = bisect(c0, self.cfg.max_channels, lambda n: (best, n))
                size = (best, more or c0)
        if size is None:
            self.rng.bit_generator.state = state
            del self.spec.buffers[n_buf:]
            self.holes = holes
            return None
        return draw(size)

    def _legal(self, layers: list[LayerSpec]) -> bool:
        """Builds, as exactly these layers (ProgramBuilder splits a layer too big for a buffer
        into several; a split layer is not one at the limit, and costs simulation time)."""
        trial = ProgramSpec(0, self.spec.buffers, layers)
        try:
            program, _ = build(self.cfg, trial)
        except SpecError:
            return False
        return len(program.layers) == len(layers)

    def add_layer(self, target: tuple) -> None:
        layers = None
        if self.rng.random() < LIMIT_PROBABILITY:
            ops = ("conv", "dwconv", "deform")
            limit = str(self.rng.choice(["line", "row"] + (["weight"] if target[0] in ops else [])))
            layers = self._at_limit(target, limit)
        for _ in range(_TRIES if layers is None else 0):
            n_buf, holes = len(self.spec.buffers), list(self.holes)
            layers = self._draw(target)
            if self._legal(layers):
                break
            del self.spec.buffers[n_buf:]
            self.holes = holes
            layers = None
        if layers is None:
            raise SpecError(f"seed {self.spec.seed}: no legal layer for bin {target} in "
                            f"{_TRIES} draws")
        for L in layers:
            self.spec.layers.append(L)
            buf = L.out.buf
            self.writers[buf] = self.writers.get(buf, 0) + 1
            B = self.spec.buffers[buf]
            whole = View(buf, 0, B.channels)
            self.readable = [r for r in self.readable if r.view != whole]
            self.readable.append(_Readable(whole, B.height, B.width, B.signed,
                                           self.writers[buf] > 1))
            if L.out != whole and not L.out.group:
                self.readable.append(_Readable(L.out, B.height, B.width, B.signed))


def generate(config: EngineConfig, seed: int, layers: int = DEFAULT_LAYERS) -> ProgramSpec:
    """The random program of `seed` with `layers` targeted layers (an offset predictor added
    before a deformable layer makes it one longer); see the module docstring."""
    if layers < 1:
        raise ValueError(f"layers={layers}: a program needs at least one layer")
    g = _Generator(config, seed)
    for target in target_bins(seed, layers):
        if len(g.spec.layers) + 2 > config.max_layers:
            break
        g.add_layer(target)
    return g.spec
