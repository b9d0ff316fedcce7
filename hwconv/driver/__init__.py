"""Host driver of the engine: one register-level driver over interchangeable backends.

backend.py         the Backend/Buffer interface every backend implements
golden_backend.py  register-level model of the engine running the golden model (no hardware)
pynq_backend.py    a PYNQ board: Overlay, allocate, the engine IP's MMIO
engine.py          EngineDriver: load a program, run, read counters, detect
"""

from .backend import Backend, BackendError, Buffer

__all__ = ["Backend", "BackendError", "Buffer"]
