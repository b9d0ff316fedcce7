"""Simulation of the generated engine RTL: the cocotb testbench, the runner, RTL-vs-golden checks.

- `runner`: build the Verilog of an EngineConfig for Verilator or Icarus once (cached under
  ~/.cache/hwconv/sim, see runner.build_root), run cocotb test modules on it through cocotb's
  Python runner, measure speed.
- `testbench`: `EngineTestbench`, the transport (clock/reset, AXI4-Lite master, checked AXI DRAM,
  random backpressure) under the driver's one protocol implementation (`tb.host`).
- `layout`: where a program's image, params and arena go in the simulated DRAM.
- the driver's blocking backend on the testbench is hwconv.driver.backends.sim (`SimBackend`).
- `compare`: RTL arena vs golden model, first mismatching layer and (y, x, c).
- `programs`: random one-op programs and corrupted device images for RTL tests.
- `simulate` / `cli`: `hwconv simulate` (cocotb module `cocotb_program` runs the program).
- `speed`: simulated cycles per second per simulator (cocotb module `cocotb_speed`).

Modules that import cocotb are only imported where a simulation runs, so `import hwconv.sim`
stays cheap.
"""
