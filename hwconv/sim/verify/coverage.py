"""Functional coverage of the random regression: what each layer that ran exercised.

The cross is op x kernel x stride x dilation class x signedness x view kind x upsample x
backpressure (`AXES`). Each layer is classified from what actually ran, not from what the
generator meant: the descriptor (opcode, kernel, stride, flags, tensor views) and, for the
deformable op, the dilation values the golden model read (a map produced by an earlier layer
is classified by its real values). Bins the spec makes impossible are listed as unreachable
with the reason (`unreachable`), so the report names every bin: hit, never hit, or unreachable.

Counting is done with cocotb-coverage (a `CoverPoint` per axis and one over the legal bins of
the cross), sampled in the parent process from the per-layer records the workers return;
`Coverage` also keeps secondary tables that are not part of the cross (weight bits, channel
counts against P, buffer use near the limits, narrow clamps, real concatenations).
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from ...spec.memory import read_tensor
from ...spec.config import EngineConfig
from ...spec.isa import KERNELS, STRIDES, Flag, Opcode
from ...spec.program import Program
from ...spec.validate import line_buffer_words, row_buffer_need, weight_words

__all__ = ["AXES", "Coverage", "LayerRecord", "classify_layers", "legal_bins", "unreachable"]

OP_NAMES = {Opcode.CONV: "conv", Opcode.DWCONV: "dwconv", Opcode.DEFORM_DW: "deform",
            Opcode.MAXPOOL: "maxpool", Opcode.ADD: "add", Opcode.COPY: "copy"}
_OP_CODES = {v: k for k, v in OP_NAMES.items()}
AXES: dict[str, tuple] = {
    "op": tuple(OP_NAMES.values()),
    "kernel": (1, 2, 3),
    "stride": (1, 2, 4),
    "dilation": ("none", "zero", "within", "at_clamp", "past_clamp"),
    "sign": ("u>u", "u>s", "s>u", "s>s"),            # in0 signedness > out signedness
    "view": ("whole>own", "whole>slice", "whole>interleaved",
             "slice>own", "slice>slice", "slice>interleaved"),  # input view > output view
    "upsample": (0, 1),
    "backpressure": (0, 1),
}
_SECTIONS = itertools.count()
LIMIT_FRACTION = 0.9     # a buffer counts as "at its limit" when a layer uses this much of it


def unreachable(b: tuple) -> str | None:
    """Why bin `b` (a tuple in AXES order) cannot be hit, or None if the spec allows it."""
    op, kernel, stride, dil, sign = b[:5]
    code = _OP_CODES[op]
    if kernel not in KERNELS[code]:
        return f"{op} kernels are {KERNELS[code]} (spec.isa.KERNELS)"
    if stride not in STRIDES[code]:
        return f"{op} strides are {STRIDES[code]} (spec.isa.STRIDES)"
    if (op == "deform") != (dil != "none"):
        return "only the deformable op reads a dilation map"
    if op in ("maxpool", "copy") and sign[0] != sign[2]:
        return f"{op} keeps the input's sign (spec.validate)"
    return None


def all_bins() -> list[tuple]:
    return list(itertools.product(*AXES.values()))


def legal_bins() -> list[tuple]:
    return [b for b in all_bins() if unreachable(b) is None]


@dataclass(frozen=True)
class LayerRecord:
    """One layer that ran: its bin plus the secondary facts."""

    bin: tuple
    weight_bits: int
    channels: str          # in0 channels vs P: "<P", "=kP", "other"
    limits: tuple[str, ...]  # buffers used to >= LIMIT_FRACTION
    narrow_clamp: bool

    def to_list(self) -> list:
        return [list(self.bin), self.weight_bits, self.channels, list(self.limits),
                self.narrow_clamp]

    @classmethod
    def from_list(cls, v: list) -> "LayerRecord":
        return cls(tuple(v[0]), int(v[1]), str(v[2]), tuple(v[3]), bool(v[4]))


def _dilation_class(values: np.ndarray, max_dilation: int) -> str:
    top = int(values.max()) if values.size else 0
    if top == 0:
        return "zero"
    if top > max_dilation:
        return "past_clamp"
    return "at_clamp" if top == max_dilation else "within"


def _channel_class(c: int, p: int) -> str:
    return "<P" if c < p else "=kP" if c % p == 0 else "other"


def classify_layers(program: Program, golden: np.ndarray, backpressure: bool) -> list[LayerRecord]:
    """A record per layer of `program`, dilation classes read from the golden arena (the map a
    deformable layer read is intact there: every buffer has its own bytes)."""
    cfg: EngineConfig = program.config
    records = []
    for d in program.layers:
        op = OP_NAMES[d.opcode]
        dil = "none"
        if d.opcode == Opcode.DEFORM_DW:
            dil = _dilation_class(read_tensor(golden, d.in1, False), cfg.max_dilation)
        sign = ("s" if d.flags & Flag.IN0_SIGNED else "u") + ">" + \
               ("s" if d.flags & Flag.OUT_SIGNED else "u")
        ins = [d.in0] + ([d.in1] if d.opcode == Opcode.ADD else [])
        in_kind = "slice" if any(r.pixel_stride != r.channels for r in ins) else "whole"
        out_kind = ("interleaved" if d.out.group_channels < d.out.channels
                    else "slice" if d.out.pixel_stride != d.out.channels else "own")
        limits = []
        if line_buffer_words(d, cfg) >= LIMIT_FRACTION * cfg.line_buffer_depth:
            limits.append("line")
        if row_buffer_need(d, cfg) >= LIMIT_FRACTION * cfg.row_buffer_bytes // 2:
            limits.append("row")
        if weight_words(d, cfg) >= LIMIT_FRACTION * cfg.weight_depth:
            limits.append("weight")
        lo, hi = (-128, 127) if d.flags & Flag.OUT_SIGNED else (0, 255)
        narrow = op not in ("maxpool", "copy") and hi - lo > d.clamp_hi - d.clamp_lo
        records.append(LayerRecord(
            (op, d.kernel, d.stride, dil, sign, f"{in_kind}>{out_kind}", int(d.upsample),
             int(backpressure)),
            d.weight_bits, _channel_class(d.in0.channels, cfg.pe_in), tuple(limits), narrow))
    return records


@dataclass
class Coverage:
    """Hits per bin of the cross (through cocotb-coverage) and the secondary tables."""

    layers: int = 0
    secondary: dict[str, Counter] = field(default_factory=lambda: {
        "weight_bits": Counter(), "channels_vs_P": Counter(), "buffer_limit": Counter(),
        "narrow_clamp": Counter(), "concat_reads": Counter()})

    def __post_init__(self) -> None:
        from cocotb_coverage.coverage import CoverPoint, coverage_section

        # A fresh section per Coverage (cocotb-coverage keeps one global database, keyed by name).
        # The cross is one CoverPoint over the legal bins: cocotb-coverage's CoverCross would
        # enumerate all 25,920 products and test each against 24,432 ignored ones (quadratic).
        self._prefix = f"hwconv_verify{next(_SECTIONS)}"   # never reused (id() can be)
        points = [CoverPoint(f"{self._prefix}.{n}", xf=(lambda b, i=i: b[i]), bins=list(AXES[n]))
                  for i, n in enumerate(AXES)]
        cross = CoverPoint(f"{self._prefix}.cross", xf=lambda b: b, bins=legal_bins())

        @coverage_section(*points, cross)
        def sample(b: tuple) -> None:
            pass

        self._sample = sample

    def add(self, rec: LayerRecord) -> None:
        self.layers += 1
        self._sample(rec.bin)
        s = self.secondary
        s["weight_bits"][str(rec.weight_bits or "none")] += 1
        s["channels_vs_P"][rec.channels] += 1
        for lim in rec.limits:
            s["buffer_limit"][lim] += 1
        s["narrow_clamp"][str(rec.narrow_clamp)] += 1

    def add_concat_reads(self, n: int) -> None:
        self.secondary["concat_reads"]["layers reading a buffer two layers wrote"] += n

    def hits(self) -> dict[tuple, int]:
        """Hits of every legal bin (0 for those never hit)."""
        from cocotb_coverage.coverage import coverage_db

        detailed = coverage_db[f"{self._prefix}.cross"].detailed_coverage
        return {b: int(detailed.get(b, 0)) for b in legal_bins()}

    def axis_hits(self) -> dict[str, dict]:
        from cocotb_coverage.coverage import coverage_db

        return {n: {str(k): int(v) for k, v in coverage_db[f"{self._prefix}.{n}"]
                    .detailed_coverage.items()} for n in AXES}

    def summary(self) -> dict:
        hits = self.hits()
        missed = [b for b, n in hits.items() if n == 0]
        reasons = Counter(unreachable(b) for b in all_bins() if unreachable(b) is not None)
        return {"layers": self.layers, "legal_bins": len(hits), "bins_hit": len(hits) - len(missed),
                "bins_never_hit": [list(b) for b in missed],
                "unreachable_bins": sum(reasons.values()),
                "unreachable_reasons": dict(reasons),
                "min_hits": min(hits.values()) if hits else 0,
                "axes": self.axis_hits(),
                "secondary": {k: dict(v) for k, v in self.secondary.items()}}
