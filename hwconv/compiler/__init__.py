"""From layers to an engine program: tensor views, arena planning, params packing."""

from .builder import ProgramBuilder, Tensor

__all__ = ["ProgramBuilder", "Tensor"]
