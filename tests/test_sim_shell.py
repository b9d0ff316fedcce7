"""The cocotb system testbench on the generated top: registers, start/done/irq, counters, resets.

Each pytest test runs one cocotb test of this file in Verilator (Icarus for the last), through
hwconv.sim.runner. The runs point the engine at a zeroed image, so each stops with BAD_MAGIC.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from hwconv.spec import EngineConfig
from hwconv.spec.program import FORMAT_VERSION
from hwconv.spec.registers import ENGINE_ID, ErrorCode, reg
from hwconv.toolchain import find_iverilog, verilator_env

CONFIG = EngineConfig()                  # the Ultra96-V2 reference configuration
MODULE = Path(__file__).stem
IMAGE_BASE = 0x1000                      # hwconv.sim.layout.RAM_BASE

needs_verilator = pytest.mark.skipif(not verilator_env(), reason="verilator not installed")
needs_icarus = pytest.mark.skipif(not find_iverilog().found, reason="iverilog not installed")


def _run(testcase: str, sim: str = "verilator", **kw) -> None:
    from hwconv.sim.runner import run

    run(MODULE, config=CONFIG, sim=sim, testcase=testcase, name=f"{MODULE}.{testcase}",
        timeout_s=120, **kw)


# -- pytest side -------------------------------------------------------------------------------
@needs_verilator
def test_id_registers_under_backpressure():
    _run("id_registers_under_backpressure")


@needs_verilator
def test_start_done_irq_counters():
    _run("start_done_irq_counters")


@needs_verilator
def test_reset_mid_run_then_clean_rerun():
    _run("reset_mid_run_then_clean_rerun")


@needs_verilator
def test_hang_is_reported_not_waited_for():
    _run("hang_is_reported_not_waited_for")


@needs_icarus
def test_start_done_irq_counters_on_icarus():
    _run("start_done_irq_counters", sim="icarus")


@needs_verilator
def test_failing_cocotb_test_is_reported_with_its_message():
    from hwconv.sim.runner import SimulationFailed

    with pytest.raises(SimulationFailed, match="deliberately_failing.*CONFIG_HASH is 0x"):
        _run("deliberately_failing")


def test_a_held_run_folder_is_left_to_its_holder(tmp_path):
    from hwconv.sim.runner import claim_run_dir

    runs = tmp_path / "runs"
    (runs / "t").mkdir(parents=True)
    (runs / "t" / "results.xml").write_text("an older run's results")
    with claim_run_dir(runs, "t") as first:
        assert first == runs / "t" and not any(first.iterdir())   # claimed, so emptied
        (first / "results.xml").write_text("this run's results")
        with claim_run_dir(runs, "t") as second, claim_run_dir(runs, "t") as third:
            assert (second.name, third.name) == ("t.2", "t.3")
        assert (first / "results.xml").read_text() == "this run's results"
    with claim_run_dir(runs, "t") as again:                      # released: the name is free
        assert again == runs / "t"


@needs_verilator
def test_a_run_beside_another_of_the_same_name_keeps_to_its_own_folder():
    """A bench beside a test suite: while one run holds a name's folder (here the test holds it),
    a second run of that name on the same build writes elsewhere, passes, and deletes nothing."""
    from hwconv.sim.runner import build, claim_run_dir, run

    name = f"{MODULE}.concurrent"
    with claim_run_dir(build(CONFIG).build_dir / "runs", name) as held:
        (held / "results.xml").write_text("the other run's results")
        r = run(MODULE, config=CONFIG, testcase="start_done_irq_counters", name=name, timeout_s=120)
        assert r.passed and r.run_dir == held.with_name(name + ".2")
        assert (held / "results.xml").read_text() == "the other run's results"


# -- cocotb side (runs inside the simulator; pytest collects none of it: no test_ names) --------
import cocotb  # noqa: E402

from hwconv.driver.protocol import EngineTimeout  # noqa: E402
from hwconv.sim.testbench import EngineTestbench  # noqa: E402
from hwconv.sim.layout import Region  # noqa: E402
from hwconv.sim.runner import config_from_env  # noqa: E402


def _expected_constants(cfg: EngineConfig) -> dict[str, int]:
    major, minor = reg("VERSION").field("major")[0], reg("VERSION").field("minor")[0]
    return {"ID": ENGINE_ID, "VERSION": FORMAT_VERSION[0] << major | FORMAT_VERSION[1] << minor,
            "CONFIG_HASH": cfg.config_hash}


async def _testbench(dut) -> EngineTestbench:
    tb = EngineTestbench(dut, config_from_env(), ram_bytes=1 << 20)
    await tb.reset()
    return tb


async def _point_at_zero_image(tb: EngineTestbench) -> None:
    """A zeroed, mapped image at DESC_BASE: the engine stops with BAD_MAGIC."""
    if not any(r.name == "image" for r in tb.map.regions):
        tb.map.add(Region("image", IMAGE_BASE, 4096, writable=False))
    await tb.host.write64("DESC_BASE", IMAGE_BASE)


@cocotb.test()
async def id_registers_under_backpressure(dut):
    tb = await _testbench(dut)
    tb.set_backpressure(0.6, seed=7)
    want = _expected_constants(tb.config)
    rng = random.Random(3)
    rw = ["DESC_BASE_LO", "PARAMS_SIZE", "ARENA_SIZE", "PERF_SELECT"]
    written = {}
    for i in range(24):
        name = rng.choice(list(want))
        got = await tb.host.read(name)
        assert got == want[name], f"read {i}: {name} = 0x{got:08x}, expected 0x{want[name]:08x}"
        target = rng.choice(rw)
        written[target] = rng.getrandbits(32)
        await tb.host.write(target, written[target])
    for name, value in written.items():
        got = await tb.host.read(name)
        assert got == value, f"{name} reads 0x{got:08x} after writing 0x{value:08x}"
    # Read-only registers ignore writes.
    await tb.host.write("ID", 0)
    assert await tb.host.read("ID") == ENGINE_ID


async def _one_run(tb: EngineTestbench) -> dict:
    await _point_at_zero_image(tb)
    await tb.host.start(irq=True)
    st = await tb.host.wait_done(10_000)
    counters = await tb.host.counters(0)
    return {"status": st, "counters": counters,
            "layer_macs": await tb.host.read64("PERF_LAYER_MACS")}


@cocotb.test()
async def start_done_irq_counters(dut):
    tb = await _testbench(dut)
    assert not tb.irq(), "irq is high straight after reset"
    r = await _one_run(tb)
    st, counters = r["status"], r["counters"]
    assert st.done and not st.busy, st.describe()
    assert tb.irq(), "done with IRQ_ENABLE.done set, but irq is low"
    assert await tb.host.field("IRQ_STATUS", "done") == 1
    await tb.host.write("IRQ_STATUS", 1)                      # W1C
    await tb.cycles(2)
    assert not tb.irq(), "irq stays high after IRQ_STATUS was cleared"
    assert await tb.host.field("IRQ_STATUS", "done") == 0
    assert await tb.host.field("STATUS", "done") == 1, "clearing the interrupt cleared STATUS.done"
    assert counters.cycles > 0, "CYCLES is 0 after a run"
    assert st.error == ErrorCode.BAD_MAGIC and st.error_layer == 0, st.describe()
    # With IRQ_ENABLE.done clear the line stays low; the run still ends in IRQ_STATUS.done.
    await tb.host.start(irq=False)
    st2 = await tb.host.wait_done(10_000)
    assert st2 == st, f"same run, different status: {st2.describe()} vs {st.describe()}"
    assert not tb.irq(), "irq rose with IRQ_ENABLE.done clear"
    assert (await tb.host.counters(0)).cycles == counters.cycles, "same run, different CYCLES"


@cocotb.test()
async def reset_mid_run_then_clean_rerun(dut):
    tb = await _testbench(dut)
    reference = await _one_run(tb)

    # Hard reset one cycle into a run: everything returns to its reset value.
    await _point_at_zero_image(tb)
    await tb.host.start(irq=True)
    assert not tb.irq(), "the run finished before the reset: nothing was interrupted"
    await tb.reset()
    st = await tb.host.status()
    assert not st.busy and not st.done and not tb.irq(), st.describe()
    assert await tb.host.read("DESC_BASE_LO") == 0, "hard reset kept DESC_BASE"
    assert await tb.host.read("IRQ_ENABLE") == 0, "hard reset kept IRQ_ENABLE"
    clean = await _one_run(tb)
    assert clean["counters"] == reference["counters"], (clean["counters"], reference["counters"])
    assert clean["layer_macs"] == reference["layer_macs"]
    assert clean["status"] == reference["status"]

    # Soft reset mid-run: the core goes idle, configuration stays, a rerun is clean.
    await tb.host.start(irq=True)
    st = await tb.host.soft_reset(2000)   # EngineTimeout if it stays busy
    assert await tb.host.read("DESC_BASE_LO") == IMAGE_BASE, "soft reset cleared DESC_BASE"
    again = await _one_run(tb)
    assert again["counters"] == reference["counters"]
    assert again["layer_macs"] == reference["layer_macs"]


@cocotb.test()
async def hang_is_reported_not_waited_for(dut):
    tb = await _testbench(dut)
    # No start at all: done never comes, and wait_done must say so within its budget.
    for irq in (True, False):
        await tb.host.write("IRQ_ENABLE", int(irq))
        try:
            await tb.host.wait_done(500)
        except EngineTimeout as exc:
            assert "not done after 500 cycles" in str(exc) and "busy=0 done=0" in str(exc), exc
        else:
            raise AssertionError("wait_done returned without a run")


@cocotb.test()
async def deliberately_failing(dut):
    tb = await _testbench(dut)
    got = await tb.host.read("CONFIG_HASH")
    assert got == tb.config.config_hash + 1, f"CONFIG_HASH is 0x{got:08x}"
