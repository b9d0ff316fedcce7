"""Integer-exact reference of the engine: the single source of truth for what the RTL computes."""

from .engine import EngineError, RunResult, execute, run_program

__all__ = ["EngineError", "RunResult", "execute", "run_program"]
