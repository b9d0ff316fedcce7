"""Constrained-random verification of the RTL engine at scale (`hwconv verify`).

- `spec`: a random program as plain data (buffers, views, layers) and `build` through
  ProgramBuilder into a Program plus inputs.
- `generate`: seeded multi-layer programs aimed at the coverage bins, legal per spec.validate.
- `coverage`: the bins (op x kernel x stride x dilation class x signedness x view x upsample x
  backpressure), per-layer classification, counting with cocotb-coverage.
- `run`: batches on every core (process pool, one simulator per batch), golden comparison.
- `cocotb_verify`: the cocotb module that runs a batch on the bench.
- `minimise`: shrink a failing program (layers, then shapes) and write both as .hwc.
- `report`, `cli`: JSON/markdown report; `hwconv verify` / `python -m hwconv.sim.verify`.
"""
