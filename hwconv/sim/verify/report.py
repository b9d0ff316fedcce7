"""The regression's report: verdict, speed and the coverage table, as JSON and markdown."""

from __future__ import annotations

import json
from pathlib import Path

from ...fileio import atomic_write_text
from .coverage import AXES
from .run import RunSummary

__all__ = ["merge_data", "report_data", "write_data", "write_report"]


def report_data(s: RunSummary, board: str | None = None) -> dict:
    cov = s.coverage.summary()
    hits = s.coverage.hits()
    run_s = s.wall_s - s.build_s
    return {
        "engine": s.config.name, "board": board, "config_hash": f"0x{s.config.config_hash:08x}",
        "config": s.config.to_dict(),
        "seed": s.seed, "programs": s.programs, "layers_per_program": s.layers_per_program,
        "seeds_run": _ranges(sorted(o.seed for o in s.outcomes)),
        "not_run": [],
        "layers": s.layers, "mismatching_programs": len(s.failures),
        "failures": [{"seed": o.seed, "layers": o.layers, "why": o.why} for o in s.failures],
        "wall_seconds": round(s.wall_s, 1), "build_seconds": round(s.build_s, 1),
        "layers_per_second": round(s.layers / max(run_s, 1e-9), 3),
        "workers": s.workers,
        "simulated_cycles": sum(o.cycles for o in s.outcomes),
        "coverage": cov,
        "bins": [{"bin": dict(zip(AXES, b)), "hits": n} for b, n in hits.items()],
    }


def _ranges(seeds: list[int]) -> str:
    """'0..9, 12..15': the seeds that ran (a budget may stop a run early)."""
    parts, i = [], 0
    while i < len(seeds):
        j = i
        while j + 1 < len(seeds) and seeds[j + 1] == seeds[j] + 1:
            j += 1
        parts.append(f"{seeds[i]}..{seeds[j]}" if j > i else str(seeds[i]))
        i = j + 1
    return ", ".join(parts)


def _md(data: dict) -> str:
    cov = data["coverage"]
    lines = [
        f"# hwconv verify: {data['engine']}" + (f" ({data['board']})" if data["board"] else ""),
        "",
        f"- programs: {data['programs']} (seeds {data['seeds_run']}, "
        f"{data['layers_per_program']} targeted layers each), layers run: **{data['layers']}**",
        f"- mismatching programs: **{data['mismatching_programs']}**",
        f"- wall time {data['wall_seconds']} s (Verilator build {data['build_seconds']} s), "
        f"{data['workers']} worker{'s' if data['workers'] != 1 else ''}: **{data['layers_per_second']} layers/s**; "
        f"{data['simulated_cycles']:,} simulated engine cycles",
        f"- coverage: {cov['bins_hit']} of {cov['legal_bins']} legal bins hit (fewest hits in a "
        f"hit bin: {min([b['hits'] for b in data['bins'] if b['hits']] or [0])}); "
        f"{cov['unreachable_bins']} bins of the full cross are unreachable (below)",
        "",
    ]
    if data.get("merged_from", 0) > 1:
        lines.insert(2, f"- merged from {data['merged_from']} runs made side by side on the same "
                        f"engine build (disjoint seeds; wall time is the longest run's)")
    if data.get("not_run"):
        lines.insert(5, f"- programs queued but never run (pool stopped at the deadline, not "
                        f"mismatches): seeds {_ranges(sorted(data['not_run']))}")
    if data["failures"]:
        lines += ["## Failures", ""] + [f"- seed {f['seed']}: " + f["why"].replace("\n", "; ") for f in data["failures"]] + [""]
    lines += ["## Hits per axis value", "", "| axis | value: layers |", "|---|---|"]
    for axis, counts in cov["axes"].items():
        lines.append(f"| {axis} | " + ", ".join(f"{k}: {v}" for k, v in counts.items()) + " |")
    lines += ["", "## Other coverage", "", "| what | counts |", "|---|---|"]
    for k, v in cov["secondary"].items():
        lines.append(f"| {k} | " + (", ".join(f"{a}: {b}" for a, b in v.items()) or "none") + " |")
    lines += ["", "## Bins never hit", ""]
    lines += [f"- {tuple(b)}" for b in cov["bins_never_hit"]] or ["none: every legal bin was hit"]
    lines += ["", "## Unreachable bins (by the spec)", "", "| reason | bins |", "|---|---|"]
    lines += [f"| {r} | {n} |" for r, n in cov["unreachable_reasons"].items()]
    lines += ["", "## Hits per legal bin", "",
              "| " + " | ".join(AXES) + " | hits |", "|" + "---|" * (len(AXES) + 1)]
    for b in data["bins"]:
        lines.append("| " + " | ".join(str(v) for v in b["bin"].values()) + f" | {b['hits']} |")
    return "\n".join(lines) + "\n"


def _not_run(f: dict) -> bool:
    """A program whose batch never ran: its worker pool was stopped (killed at the deadline)
    before it simulated a layer. Not a mismatch; reported apart."""
    return f["layers"] == 0 and "BrokenProcessPool" in f["why"]


def separate_not_run(data: dict) -> dict:
    """`data` with never-run programs moved from failures to not_run (counts adjusted)."""
    data = dict(data)
    gone = [f for f in data["failures"] if _not_run(f)]
    if gone:
        data["failures"] = [f for f in data["failures"] if not _not_run(f)]
        data["not_run"] = data.get("not_run", []) + [f["seed"] for f in gone]
        data["programs"] -= len(gone)
        data["mismatching_programs"] -= len(gone)
        ran = [int(x) for x in _expand(data["seeds_run"]) if int(x) not in set(data["not_run"])]
        data["seeds_run"] = _ranges(sorted(ran))
    return data


def _expand(ranges: str) -> list[int]:
    out = []
    for part in ranges.replace(";", ",").split(","):
        part = part.strip()
        if part:
            lo, _, hi = part.partition("..")
            out += list(range(int(lo), int(hi or lo) + 1))
    return out


def merge_data(parts: list[dict]) -> dict:
    """One report of runs made side by side (same engine, disjoint seeds, started together):
    counts add up, the wall time is the longest run's, layers/s is layers over that time."""
    parts = [separate_not_run(p) for p in parts]
    first = parts[0]
    if any(p["config_hash"] != first["config_hash"] for p in parts):
        raise ValueError("reports of different engine configs cannot be merged")
    data = dict(first)
    for key in ("programs", "layers", "mismatching_programs", "simulated_cycles", "workers"):
        data[key] = sum(p[key] for p in parts)
    data["failures"] = [f for p in parts for f in p["failures"]]
    data["not_run"] = [s for p in parts for s in p.get("not_run", [])]
    data["seeds_run"] = "; ".join(p["seeds_run"] for p in parts)
    data["wall_seconds"] = max(p["wall_seconds"] for p in parts)
    data["build_seconds"] = max(p["build_seconds"] for p in parts)
    data["layers_per_second"] = round(sum(p["layers"] for p in parts) / max(
        1e-9, max(p["wall_seconds"] - p["build_seconds"] for p in parts)), 3)
    data["merged_from"] = len(parts)
    bins = {}
    for p in parts:
        for b in p["bins"]:
            key = tuple(b["bin"].values())
            bins.setdefault(key, {"bin": b["bin"], "hits": 0})["hits"] += b["hits"]
    data["bins"] = list(bins.values())
    cov = dict(first["coverage"])
    cov["layers"] = data["layers"]
    cov["bins_never_hit"] = [list(k) for k, b in bins.items() if b["hits"] == 0]
    cov["bins_hit"] = sum(b["hits"] > 0 for b in bins.values())
    hit = [b["hits"] for b in bins.values() if b["hits"]]
    cov["min_hits"] = min(hit) if hit else 0
    for table in ("axes", "secondary"):
        merged: dict = {}
        for p in parts:
            for name, counts in p["coverage"][table].items():
                m = merged.setdefault(name, {})
                for k, v in counts.items():
                    m[k] = m.get(k, 0) + v
        cov[table] = merged
    data["coverage"] = cov
    return data


def write_data(data: dict, out_dir: Path, stem: str) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.json", out_dir / f"{stem}.md"]
    atomic_write_text(paths[0], json.dumps(data, indent=1) + "\n")
    atomic_write_text(paths[1], _md(data))
    return paths


def write_report(s: RunSummary, out_dir: Path, stem: str = "verify",
                 board: str | None = None) -> list[Path]:
    """<stem>.json and <stem>.md in `out_dir` (atomic)."""
    return write_data(separate_not_run(report_data(s, board)), out_dir, stem)
