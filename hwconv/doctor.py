"""`hwconv doctor`: which external tools are present, their versions, what a missing one disables.

It reports and never fails: every tool is optional for some part of hwconv, so a missing one is
information, not an error (exit status 0).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Sequence

from .toolchain import Tool, collect

_HEADER = ("tool", "status", "version", "if missing, disables")


def _status(tool: Tool) -> str:
    if tool.found:
        return "ok"
    # Found on disk but its probe failed: say so, it needs a different fix than "install it".
    return "broken" if tool.path else "missing"


def _row(tool: Tool) -> tuple[str, str, str, str]:
    return (tool.name, _status(tool), tool.version or "-", "" if tool.found else tool.disables)


def report(tools: Sequence[Tool]) -> str:
    """Plain-text table, then one line per missing tool saying how to get it."""
    rows = [_HEADER, *(_row(t) for t in tools)]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [
        "  ".join([*(cell.ljust(w) for cell, w in zip(r[:3], widths)), r[3]]).rstrip()
        for r in rows
    ]
    missing = [t for t in tools if not t.found]
    lines.append("")
    lines.append(f"{len(tools) - len(missing)} of {len(tools)} tools found.")
    if missing:
        lines.append("To get the missing ones:")
        lines.extend(f"  {t.name}: {t.hint}" for t in missing)
    return "\n".join(lines)


def to_json(tools: Sequence[Tool]) -> str:
    return json.dumps([asdict(t) for t in tools], indent=2)


def main_doctor(as_json: bool = False) -> int:
    tools = collect()
    print(to_json(tools) if as_json else report(tools))
    return 0
