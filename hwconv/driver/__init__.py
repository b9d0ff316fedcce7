"""Host driver of the engine: one protocol implementation over interchangeable backends.

protocol.py        EngineProtocol: the register protocol as coroutines over a port (the only one;
                   the cocotb testbench uses it too)
engine.py          EngineDriver: its sync facade with buffers, tensors, load/run/detect
backends/          the Backend/Buffer interface (__init__.py) and the backends side by side:
                   golden.py (register model running the golden model), pynq.py (a PYNQ board:
                   Overlay, allocate, the engine IP's MMIO), pynq_offboard.py (pynq with the
                   golden model behind it, for tests), sim.py (the RTL in cocotb)
decode.py, preprocess.py   CenterNet decoding; letterbox and input quantisation
cli.py, deploy.py, deploy_cli.py, runner_template.py   run/validate/deploy and the board's runner
"""

from .backends import Backend, BackendError, Buffer

__all__ = ["Backend", "BackendError", "Buffer"]
