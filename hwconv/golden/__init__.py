"""Integer-exact reference of the engine: the single source of truth for what the RTL computes."""

from .engine import EngineError, RunResult, execute, run_program
from .memory import read_tensor, write_tensor

__all__ = ["EngineError", "RunResult", "execute", "run_program", "read_tensor", "write_tensor"]
