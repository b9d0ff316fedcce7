"""Errors raised when something violates the engine contract.

Every message names *what* is wrong and *where* (field, layer, file offset), so a user can act
on it without reading a traceback.
"""


class SpecError(ValueError):
    """A configuration, descriptor or parameter violates the contract."""


class ProgramFormatError(SpecError):
    """A program file cannot be read: truncated, corrupted, wrong version or wrong engine."""
