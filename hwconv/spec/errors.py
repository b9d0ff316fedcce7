"""Errors raised when something violates the engine contract.

Every message names *what* is wrong and *where* (field, layer, file offset), so a user can act
on it without reading a traceback.
"""


class SpecError(ValueError):
    """A configuration, descriptor or parameter violates the contract."""


class ProgramFormatError(SpecError):
    """A program file cannot be read: truncated, corrupted, wrong version or wrong engine."""


NAME_PRINT_MAX = 80  # characters of a name from a file shown in a table or message


def printable(name: object, limit: int = NAME_PRINT_MAX) -> str:
    """A name read from a file, safe to print: control characters (ANSI escapes, newlines, ...)
    and other non-printables escaped as in repr, cut at `limit` characters. A layer name must not
    be able to forge table lines or recolour a terminal."""
    text = name if isinstance(name, str) else repr(name)
    out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return out if len(out) <= limit else out[: limit - 3] + "..."
