"""Writing Tcl from Python: quoting, the sizes Vivado reads, and @NAME@ template filling."""

from __future__ import annotations

import re

_PLACEHOLDER = re.compile(r"@([A-Z][A-Z0-9_]*)@")
_SIZE_SUFFIXES = ("", "K", "M", "G", "T", "P", "E")


def quote(value: object) -> str:
    """`value` as one Tcl word that Tcl reads back verbatim, whatever it contains.

    Board files are user input: a part string with a `[` or `$` must not run anything.
    """
    text = str(value)
    escaped = "".join("\\" + ch if ch in '\\"$[]{}' else ch for ch in text)
    return '"' + escaped.replace("\n", "\\n") + '"'


def comment_text(value: object) -> str:
    """`value` made safe for a Tcl comment: one line, no braces or brackets to unbalance a script."""
    return "".join(" " if ch in '\\"$[]{}\n\r' else ch for ch in str(value))


def size(nbytes: int) -> str:
    """A power-of-two byte count as Vivado writes ranges: 4096 -> 4K, 2**32 -> 4G, 2**64 -> 16E."""
    if nbytes <= 0 or nbytes & (nbytes - 1):
        raise ValueError(f"an address range must be a power of two, not {nbytes}")
    exponent = nbytes.bit_length() - 1
    unit = min(exponent // 10, len(_SIZE_SUFFIXES) - 1)
    return f"{nbytes >> (10 * unit)}{_SIZE_SUFFIXES[unit]}"


def hex_address(address: int) -> str:
    """0x40000000; 40-bit addresses keep their upper digits (0x0800000000)."""
    return f"0x{address:08X}" if address < 1 << 32 else f"0x{address:010X}"


def render(template: str, **values: object) -> str:
    """Fill @NAME@ placeholders (Tcl's own $ and {} stay untouched); every one must be given."""
    used = set(_PLACEHOLDER.findall(template))
    missing, unused = sorted(used - set(values)), sorted(set(values) - used)
    if missing or unused:
        raise KeyError(f"template placeholders missing {missing}, unused {unused}")
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), template)
