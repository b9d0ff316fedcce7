"""Run `EngineCore` in Amaranth's simulator against an AXI RAM model, and the same program on the
golden engine, so tests compare the two arenas byte for byte."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from amaranth.sim import Simulator

from hwconv.golden import execute
from hwconv.spec.memory import write_tensor
from hwconv.rtl.engine import EngineCore
from hwconv.spec import EngineConfig, Program
from hwconv.spec.registers import ErrorCode

from rtl_models import AxiRamModel

IMAGE_BASE = 0x1000


@dataclass
class EngineRun:
    arena: np.ndarray
    error: ErrorCode
    error_layer: int
    layers_done: int
    cycles: int
    layer_cycles: list[int]
    layer_macs: list[int]


def _align(n: int, to: int = 4096) -> int:
    return -(-n // to) * to


def initial_arena(program: Program, inputs: dict[str, np.ndarray]) -> np.ndarray:
    arena = np.zeros(program.arena_bytes, np.uint8)
    for name, value in inputs.items():
        write_tensor(arena, program.tensor(name).ref, value)
    return arena


def golden_arena(program: Program, image: bytes, arena: np.ndarray):
    arena = arena.copy()
    res = execute(program.config, image, program.params, arena)
    return arena, res


def run_engine(cfg: EngineConfig, image: bytes, params: bytes, arena: np.ndarray, *, stall: float = 0.0,
               latency: tuple[int, int] = (1, 3), seed: int = 0, max_cycles: int = 2_000_000,
               perf_layers: int = 0, arena_size: int | None = None) -> EngineRun:
    core = EngineCore(cfg)
    params_base = _align(IMAGE_BASE + len(image))
    arena_base = _align(params_base + len(params))
    size = _align(arena_base + len(arena) + cfg.bus_bytes)
    ram = AxiRamModel(core.bus, size, stall=stall, latency=latency, seed=seed)
    ram.load(IMAGE_BASE, image)
    ram.load(params_base, params)
    ram.load(arena_base, arena)
    sim = Simulator(core)
    sim.add_clock(1e-8)
    ram.add_to(sim)
    out: dict = {}

    async def bench(ctx):
        ctx.set(core.desc_base, IMAGE_BASE)
        ctx.set(core.params_base, params_base)
        ctx.set(core.params_size, len(params))
        ctx.set(core.arena_base, arena_base)
        ctx.set(core.arena_size, len(arena) if arena_size is None else arena_size)
        await ctx.tick()
        ctx.set(core.start, 1)
        await ctx.tick()
        ctx.set(core.start, 0)
        for _ in range(max_cycles):
            await ctx.tick()
            if ctx.get(core.done):
                break
        else:
            raise AssertionError(f"engine not done after {max_cycles} cycles "
                                 f"(layers_done={ctx.get(core.layers_done)})")
        out["error"] = ErrorCode(ctx.get(core.error))
        out["layer"] = ctx.get(core.error_layer)
        out["layers_done"] = ctx.get(core.layers_done)
        out["cycles"] = ctx.get(core.cycles)
        cyc, macs = [], []
        for i in range(perf_layers):
            ctx.set(core.perf_select, i)
            await ctx.tick().repeat(3)   # the memory's read, then its output register
            cyc.append(ctx.get(core.perf_layer_cycles))
            macs.append(ctx.get(core.perf_layer_macs))
        out["cyc"], out["macs"] = cyc, macs

    sim.add_testbench(bench)
    sim.run()
    got = np.frombuffer(ram.dump(arena_base, len(arena)), np.uint8).copy()
    return EngineRun(got, out["error"], out["layer"], out["layers_done"], out["cycles"], out["cyc"], out["macs"])
