"""Whole programs on the RTL engine, bit-exact against the golden model.

Marked `engine`. Fast subset: a CoDeNet-shaped program on a 32x32 input, three random programs of
every op, reset in the middle of a program, the four error programs. Behind `slow`: the tiny
CoDeNet config at 128x128, many more random programs, other PE configurations.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hwconv.spec import EngineConfig
from hwconv.toolchain import verilator_env

CONFIG = EngineConfig()
# Other datapath shapes: PE tiles that do not divide the channel counts, a narrower DRAM bus.
OTHER_CONFIGS = [EngineConfig(pe_in=4, pe_out=8, axi_data_width=64),
                 EngineConfig(pe_in=8, pe_out=4, weight_bits=8, max_dilation=3)]
MODULE = Path(__file__).stem
OPS = ("conv", "dwconv", "deform", "maxpool", "add", "copy")
ERRORS = ("bad_magic", "config_hash", "bad_opcode", "arena_out_of_bounds")

pytestmark = [
    pytest.mark.engine,
    pytest.mark.skipif(not verilator_env(), reason="verilator not installed"),
]


def _run(testcase: str, config: EngineConfig = CONFIG, timeout_s: float = 300, **env) -> None:
    from hwconv.sim.runner import run

    label = "-".join(f"{k}={v}" for k, v in sorted(env.items()))
    run(MODULE, config=config, testcase=testcase, timeout_s=timeout_s,
        name=f"{MODULE}.{testcase}.{config.name}.{label}",
        env={f"HWCONV_TEST_{k.upper()}": str(v) for k, v in env.items()})


# -- pytest side -------------------------------------------------------------------------------
def test_small_codenet_program_arena_matches_golden():
    _run("codenet_program_matches_golden", size=32, backpressure=0)


def test_small_codenet_program_under_backpressure():
    _run("codenet_program_matches_golden", size=32, backpressure=0.4)


@pytest.mark.parametrize("op", OPS)
def test_random_op_programs(op):
    _run("random_op_programs", op=op, seeds="0,1,2")


def test_reset_mid_program_then_clean_rerun():
    _run("reset_mid_program_then_clean_rerun")


@pytest.mark.parametrize("kind", ERRORS)
def test_error_program_stops_with_its_code(kind):
    _run("error_program", kind=kind)


@pytest.mark.slow
def test_tiny_codenet_program_arena_matches_golden():
    _run("codenet_program_matches_golden", size=128, backpressure=0, timeout_s=3600)


@pytest.mark.slow
@pytest.mark.parametrize("op", OPS)
def test_many_random_op_programs(op):
    _run("random_op_programs", op=op, seeds=",".join(map(str, range(3, 33))), timeout_s=1800)


@pytest.mark.slow
@pytest.mark.parametrize("config", OTHER_CONFIGS, ids=lambda c: f"{c.name}-axi{c.axi_data_width}")
@pytest.mark.parametrize("op", OPS)
def test_random_op_programs_other_pe_configs(config, op):
    _run("random_op_programs", config=config, op=op, seeds=",".join(map(str, range(10))),
         timeout_s=1800)


@pytest.mark.slow
@pytest.mark.parametrize("config", OTHER_CONFIGS, ids=lambda c: f"{c.name}-axi{c.axi_data_width}")
def test_small_codenet_program_other_pe_configs(config):
    _run("codenet_program_matches_golden", config=config, size=32, backpressure=0.3)


# -- cocotb side (runs inside the simulator) -----------------------------------------------------
import cocotb  # noqa: E402
import numpy as np  # noqa: E402

from hwconv.compiler.synthetic import BackboneShape, codenet_program  # noqa: E402
from hwconv.compiler.cost import layer_macs  # noqa: E402
from hwconv.sim.testbench import EngineTestbench  # noqa: E402
from hwconv.sim.compare import compare_arenas, golden_arena  # noqa: E402
from hwconv.sim.programs import (corrupt_image, expected_error, random_inputs,  # noqa: E402
                                 random_op_program)
from hwconv.sim.runner import config_from_env  # noqa: E402
from hwconv.spec.registers import ErrorCode  # noqa: E402

TIMEOUT_CYCLES = 20_000_000


def _env(name: str, default: str | None = None) -> str:
    value = os.environ.get(f"HWCONV_TEST_{name.upper()}", default)
    if value is None:
        raise RuntimeError(f"HWCONV_TEST_{name.upper()} is not set")
    return value


def _codenet(cfg: EngineConfig, size: int):
    shape = BackboneShape(size, 4, (8, 16, 32, 64), (1, 1, 1), (32, 16, 16), 16, 2)
    prog, _ = codenet_program(cfg, shape, reuse_memory=False)
    return prog, random_inputs(prog, size)


async def _run_and_compare(tb: EngineTestbench, prog, inputs, what: str) -> None:
    await tb.load_program(prog, inputs)
    st = await tb.host.run(TIMEOUT_CYCLES)
    tb.check_no_violations()
    assert st.ok and st.layers_done == len(prog.layers), f"{what}: {st.describe()}"
    cmp = compare_arenas(prog, tb.arena(), golden_arena(prog, inputs))
    assert cmp.match, f"{what}: {cmp.describe()}"
    counters = await tb.host.counters(len(prog.layers))
    assert counters.cycles > 0 and counters.layers_done == len(prog.layers)
    assert [c.macs for c in counters.layers] == [layer_macs(d) for d in prog.layers], \
        f"{what}: PERF_LAYER_MACS differs from the spec's count"
    assert sum(c.cycles for c in counters.layers) <= counters.cycles, \
        f"{what}: per-layer cycles add up to more than CYCLES"


@cocotb.test()
async def codenet_program_matches_golden(dut):
    cfg = config_from_env()
    prog, inputs = _codenet(cfg, int(_env("size")))
    tb = EngineTestbench.for_program(dut, prog)
    await tb.reset()
    p = float(_env("backpressure", "0"))
    if p:
        tb.set_backpressure(p, seed=11)
    await _run_and_compare(tb, prog, inputs, f"CoDeNet-shaped {_env('size')}px program")


@cocotb.test()
async def random_op_programs(dut):
    cfg = config_from_env()
    op = _env("op")
    tb = EngineTestbench(dut, cfg, ram_bytes=4 << 20)
    await tb.reset()
    for seed in (int(s) for s in _env("seeds").split(",")):
        prog, inputs = random_op_program(cfg, op, seed)
        # Every other program under random backpressure on all AXI channels.
        tb.set_backpressure(0.5 if seed % 2 else 0.0, seed=seed)
        d = prog.layers[0]
        what = (f"{op} seed {seed} (in {d.in0.height}x{d.in0.width}x{d.in0.channels}, "
                f"out {d.out.height}x{d.out.width}x{d.out.channels}, k{d.kernel} s{d.stride} "
                f"p{d.pad}, flags {d.flags!r}, {d.weight_bits}-bit weights)")
        await _run_and_compare(tb, prog, inputs, what)


@cocotb.test()
async def reset_mid_program_then_clean_rerun(dut):
    cfg = config_from_env()
    prog, inputs = _codenet(cfg, 32)
    want = golden_arena(prog, inputs)
    tb = EngineTestbench.for_program(dut, prog)
    await tb.reset()
    for kind in ("hard", "soft"):
        await tb.load_program(prog, inputs)
        await tb.host.start()
        while (await tb.host.read("LAYERS_DONE")) < 2:
            st = await tb.host.status()
            assert st.busy, f"the program ended before the {kind} reset: {st.describe()}"
            await tb.cycles(200)
        if kind == "hard":
            await tb.reset()
        else:
            await tb.host.soft_reset(20_000)   # EngineTimeout if it stays busy
        st = await tb.host.status()
        assert not st.busy and not st.done, f"after a {kind} reset: {st.describe()}"
        # A clean rerun from a freshly loaded arena.
        await tb.load_program(prog, inputs)
        st = await tb.host.run(TIMEOUT_CYCLES)
        tb.check_no_violations()
        assert st.ok, f"rerun after a {kind} reset: {st.describe()}"
        cmp = compare_arenas(prog, tb.arena(), want)
        assert cmp.match, f"rerun after a {kind} reset: {cmp.describe()}"


@cocotb.test()
async def error_program(dut):
    cfg = config_from_env()
    kind = _env("kind")
    prog, inputs = _codenet(cfg, 32)
    layer = 3
    image = corrupt_image(prog, kind, layer)
    want = expected_error(prog, image, inputs)
    assert want.error != ErrorCode.NONE
    tb = EngineTestbench.for_program(dut, prog)
    await tb.reset()
    await tb.load_program(prog, inputs, image=image)
    st = await tb.host.run(TIMEOUT_CYCLES)           # an EngineTimeout fails the test: no hang
    tb.check_no_violations()
    assert st.done and not st.busy, st.describe()
    assert st.error == want.error and st.error_layer == want.error_layer, \
        f"{kind}: engine says {st.describe()}, golden {want.error.name} at layer {want.error_layer}"
    assert st.layers_done == want.layers_done, f"{kind}: {st.describe()}, golden {want.layers_done} done"
    assert tb.irq(), "an error run must raise the done interrupt"
    # The engine recovers: the good program runs correctly next.
    await _run_and_compare(tb, prog, inputs, f"good program after {kind}")
    assert np.array_equal(np.frombuffer(tb.arena(), np.uint8), golden_arena(prog, inputs))
