"""Shrink a failing program: fewest layers first, then the smallest shapes that still fail.

Every round builds all candidate reductions of the current program and runs them as one
simulator batch (`run.run_specs`: the simulator starts once per round, not per candidate), and
keeps the smallest candidate that still fails (any failure: mismatch, hang, violation, error).
Rounds repeat until no candidate fails.

1. Layers: cut everything after the first failing layer and try each layer up to it alone (its
   inputs become fresh program inputs); only if none of those fails, the program without each
   single layer (the cheap candidates first: under load a round of near-whole programs costs
   minutes).
2. Shapes, once one layer is left: input height, width and channels halved or less one, output
   channels (conv) likewise, 8-bit weights to 4, upsample off, narrow clamp off, plain views,
   backpressure off.

`minimise` returns the smallest failing spec and its outcome; `write_failure` stores both
programs as .hwc files with the mismatch report and the specs (JSON).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable

from ...fileio import atomic_write_text
from ...spec.config import EngineConfig
from ...spec.errors import SpecError
from ...spec.isa import channel_reach
from .run import Outcome, run_specs
from .spec import LayerSpec, ProgramSpec, View, build

__all__ = ["minimise", "size_of", "write_failure"]

MAX_ROUNDS = 40


def size_of(config: EngineConfig, spec: ProgramSpec) -> tuple[int, int, int]:
    """(layers, tensor elements, features): what 'smaller' means, in that order. Features
    count what a plainer program would not have: backpressure, 8-bit weights, upsample, a
    narrow clamp, views that are not whole buffers. Builds the program (SpecError if illegal)."""
    program, _ = build(config, spec)
    elements = sum(b.height * b.width * b.channels for b in spec.buffers)
    features = int(spec.backpressure > 0) + sum(
        (L.weight_bits == 8) + L.upsample + (L.clamp is not None)
        + sum(v.offset > 0 or v.group > 0 or v.channels != spec.buffers[v.buf].channels
              for v in (L.in0, L.in1, L.out) if v is not None)
        for L in spec.layers)
    return len(program.layers), elements, features


def _used(spec: ProgramSpec) -> ProgramSpec:
    """`spec` with only the buffers its layers use (indices renumbered)."""
    used = sorted({v.buf for L in spec.layers for v in (L.in0, L.in1, L.out) if v is not None})
    new = {old: i for i, old in enumerate(used)}

    def view(v):
        return None if v is None else dataclasses.replace(v, buf=new[v.buf])

    layers = [dataclasses.replace(L, in0=view(L.in0), in1=view(L.in1), out=view(L.out))
              for L in spec.layers]
    return ProgramSpec(spec.seed, [spec.buffers[i] for i in used], layers, spec.backpressure)


def _layer_tiers(spec: ProgramSpec, first_bad: int | None) -> list[list[ProgramSpec]]:
    """Layer reductions, cheapest first: (1) cut after the first failing layer, and each layer
    up to it alone; (2) each of those layers removed."""
    n = len(spec.layers)
    last = n - 1 if first_bad is None else min(first_bad, n - 1)
    alone, removed = [], []
    if last + 1 < n:
        alone.append(dataclasses.replace(spec, layers=spec.layers[:last + 1]))
    if n > 1:
        alone += [dataclasses.replace(spec, layers=[spec.layers[j]]) for j in range(last, -1, -1)]
        kept = spec.layers[:last + 1]
        removed = [dataclasses.replace(spec, layers=kept[:j] + kept[j + 1:])
                   for j in range(len(kept))]
    return [[_used(s) for s in alone], [_used(s) for s in removed]]


def _out_hw(L: LayerSpec, h: int, w: int) -> tuple[int, int]:
    ho = (h + 2 * L.pad - L.kernel) // L.stride + 1
    wo = (w + 2 * L.pad - L.kernel) // L.stride + 1
    f = 2 if L.upsample else 1
    return ho * f, wo * f


def _reshape(spec: ProgramSpec, h: int, w: int, c: int, co: int | None = None,
             plain_views: bool = False, **layer_changes) -> ProgramSpec | None:
    """The one-layer `spec` on an input of h x w x c (conv: co outputs), every tensor resized
    to match; None if that shape is impossible."""
    L = dataclasses.replace(spec.layers[0], **layer_changes)
    bufs = [dataclasses.replace(b) for b in spec.buffers]
    if min(h, w, c) < 1:
        return None
    co = (co or L.out.channels) if L.op == "conv" else c
    ho, wo = _out_hw(L, h, w)
    if min(ho, wo) < 1:
        return None

    def resize(v: View, hh: int, ww: int, ch: int, plain: bool) -> View:
        b = bufs[v.buf]
        if plain:
            b.height, b.width, b.channels = hh, ww, ch
            return View(v.buf, 0, ch)
        extra = b.channels - _reach(v)
        g = min(v.group, ch - 1) if v.group else 0
        gs = (v.group_stride - v.group + g) if g else 0
        nv = View(v.buf, min(v.offset, max(0, extra + v.offset)), ch, g, gs)
        b.height, b.width, b.channels = hh, ww, nv.offset + _reach(nv) + max(0, extra - v.offset)
        return nv

    in0 = resize(L.in0, h, w, c, plain_views)
    in1 = None
    if L.in1 is not None:
        in1 = resize(L.in1, h, w, 1 if L.op == "deform" else c, plain_views or L.op == "deform")
    out = resize(L.out, ho, wo, co, plain_views)
    if len({v.buf for v in (in0, in1, out) if v is not None}) != len([v for v in (in0, in1, out) if v is not None]):
        return None
    return ProgramSpec(spec.seed, bufs, [dataclasses.replace(L, in0=in0, in1=in1, out=out)],
                       spec.backpressure)


def _reach(v: View) -> int:
    if not v.group:
        return v.channels
    return channel_reach(v.channels, v.group, v.group_stride)


def _shape_candidates(spec: ProgramSpec) -> list[ProgramSpec]:
    if len(spec.layers) != 1:
        return []
    L = spec.layers[0]
    b = spec.buffers[L.in0.buf]
    h, w, c = b.height, b.width, L.in0.channels
    co = L.out.channels
    out = []
    for hh, ww, cc in ((h // 2, w, c), (h - 1, w, c), (h, w // 2, c), (h, w - 1, c),
                       (h, w, c // 2), (h, w, c - 1)):
        out.append(_reshape(spec, hh, ww, cc))
    if L.op == "conv":
        out += [_reshape(spec, h, w, c, co // 2), _reshape(spec, h, w, c, co - 1)]
    if L.weight_bits == 8:
        out.append(_reshape(spec, h, w, c, weight_bits=4))
    if L.upsample:
        out.append(_reshape(spec, h, w, c, upsample=False))
    if L.clamp is not None:
        out.append(_reshape(spec, h, w, c, clamp=None))
    out.append(_reshape(spec, h, w, c, plain_views=True))
    if spec.backpressure:
        out.append(dataclasses.replace(spec, backpressure=0.0))
    return [s for s in out if s is not None]


def _first_bad_layer(outcome: Outcome) -> int | None:
    why = outcome.why
    marker = "first mismatching layer: layer "
    if marker in why:
        return int(why.split(marker, 1)[1].split(" ", 1)[0])
    return None


def minimise(config: EngineConfig, spec: ProgramSpec, outcome: Outcome, work: Path, *,
             log: Callable[[str], None] | None = None) -> tuple[ProgramSpec, Outcome]:
    """The smallest failing reduction of failing `spec` (module docstring)."""
    say = log or (lambda s: None)
    best, best_out = spec, outcome
    best_size = size_of(config, spec)
    for rnd in range(MAX_ROUNDS):
        tiers = _layer_tiers(best, _first_bad_layer(best_out)) + [_shape_candidates(best)]
        found = None
        for t, cands in enumerate(tiers):
            legal = []
            for s in cands:
                try:
                    size = size_of(config, s)
                except SpecError:
                    continue
                if size < best_size:
                    legal.append((size, s))
            if not legal:
                continue
            legal.sort(key=lambda x: x[0])
            outs = run_specs(config, [(f"cand{i}", s) for i, (_, s) in enumerate(legal)],
                             work / f"round{rnd}-{t}")
            failing = [(size, s, o) for (size, s), o in zip(legal, outs) if not o.ok]
            say(f"minimise round {rnd}.{t}: {len(legal)} candidates, {len(failing)} still fail")
            if failing:
                found = failing[0]
                break
        if found is None:
            break
        best_size, best, best_out = found
        say(f"  now {best_size[0]} layer(s), {best_size[1]} tensor elements, {best_size[2]} "
            f"features")
    return best, best_out


def write_failure(config: EngineConfig, folder: Path, original: ProgramSpec, outcome: Outcome,
                  small: ProgramSpec, small_outcome: Outcome, command: str) -> list[Path]:
    """original.hwc / minimised.hwc, their specs and the mismatch reports, atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem, spec, out in (("original", original, outcome), ("minimised", small, small_outcome)):
        program, _ = build(config, spec)
        program.save(folder / f"{stem}.hwc")
        atomic_write_text(folder / f"{stem}.spec.json", json.dumps(spec.to_dict(), indent=1) + "\n")
        paths += [folder / f"{stem}.hwc", folder / f"{stem}.spec.json"]
    p, _ = build(config, small)
    lines = [f"reproduce: {command}", "",
             f"original: seed {original.seed}, {outcome.layers} layers", outcome.why, "",
             f"minimised: {len(p.layers)} layer(s), arena {p.arena_bytes} B, backpressure "
             f"{small.backpressure}", small_outcome.why, "", "minimised layers:"]
    lines += [f"  {name}: {describe_layer(d)}" for name, d in zip(p.layer_names, p.layers)]
    atomic_write_text(folder / "report.txt", "\n".join(lines) + "\n")
    return paths + [folder / "report.txt"]


def describe_layer(d) -> str:
    """One line for a descriptor: op, shapes, views, parameters."""
    def ref(r):
        view = ""
        if r.group_channels < r.channels:
            view = f" runs of {r.group_channels} every {r.group_stride}"
        elif r.pixel_stride != r.channels:
            view = f" slice of {r.pixel_stride}"
        return f"{r.height}x{r.width}x{r.channels}{view}"

    parts = [d.opcode.name, f"in {ref(d.in0)}"]
    if d.in1.channels:
        parts.append(f"in1 {ref(d.in1)}")
    parts += [f"out {ref(d.out)}", f"k{d.kernel} s{d.stride} p{d.pad}",
              f"w{d.weight_bits}" if d.weight_bits else "", f"flags {d.flags!r}",
              f"clamp [{d.clamp_lo}, {d.clamp_hi}]"]
    return ", ".join(p for p in parts if p)
