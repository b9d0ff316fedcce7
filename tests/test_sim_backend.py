"""SimBackend: the driver's backend on the RTL testbench, blocking driver code bridged into cocotb.

Buffers (alignment, non-coherence, reuse, exhaustion), register access, wait_irq on a real
interrupt and on a timeout, the driver's identity and register checks from tests/driver_checks.py
unchanged, and (marker `engine`) its program checks.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from hwconv.spec import EngineConfig
from hwconv.toolchain import verilator_env

CONFIG = EngineConfig()
MODULE = Path(__file__).stem

needs_verilator = pytest.mark.skipif(not verilator_env(), reason="verilator not installed")


def _run(testcase: str, timeout_s: float = 120) -> None:
    from hwconv.sim.runner import run

    run(MODULE, config=CONFIG, testcase=testcase, name=f"{MODULE}.{testcase}", timeout_s=timeout_s)


@needs_verilator
def test_backend_buffers_registers_irq():
    _run("backend_buffers_registers_irq")


@needs_verilator
def test_driver_identity_and_register_checks_on_rtl():
    _run("driver_identity_and_register_checks")


@pytest.mark.engine
@needs_verilator
def test_driver_program_checks_on_rtl():
    _run("driver_program_checks", timeout_s=900)


# -- cocotb side (runs inside the simulator) -----------------------------------------------------
import cocotb  # noqa: E402
import numpy as np  # noqa: E402

from hwconv.driver.backends import BackendError  # noqa: E402
from hwconv.spec.memory import PAGE_BYTES  # noqa: E402
from hwconv.driver.backends.sim import SimBackend, run_blocking  # noqa: E402
from hwconv.sim.testbench import EngineTestbench  # noqa: E402
from hwconv.sim.runner import config_from_env  # noqa: E402
from hwconv.spec.registers import ENGINE_ID, offset, reg  # noqa: E402


async def _testbench(dut, ram_bytes: int = 1 << 20) -> EngineTestbench:
    tb = EngineTestbench(dut, config_from_env(), ram_bytes=ram_bytes)
    await tb.reset()
    return tb


@cocotb.test()
async def backend_buffers_registers_irq(dut):
    tb = await _testbench(dut)

    # Calling a blocking method from a coroutine is refused with a hint, not a deadlock.
    early = SimBackend(tb)
    try:
        early.read_reg(0)
    except BackendError as exc:
        assert "run_blocking" in str(exc), exc
    else:
        raise AssertionError("read_reg from a coroutine did not raise")
    early.close()

    def body(be: SimBackend) -> None:
        a, b = be.alloc(100), be.alloc(5000)
        assert a.device_address % PAGE_BYTES == 0 and b.device_address % PAGE_BYTES == 0
        assert a.device_address + a.nbytes <= b.device_address, (a, b)
        assert a.array.dtype == np.uint8 and a.array.size == 100 and not a.array.any()

        # Not coherent: the host copy moves only at flush / invalidate.
        a.array[:] = np.arange(100, dtype=np.uint8)
        assert tb.read_mem(a.device_address, 100) == bytes(100), "data reached DRAM without flush"
        a.flush()
        assert tb.read_mem(a.device_address, 100) == bytes(range(100))
        tb.write_mem(a.device_address, b"\xAA" * 10)         # as the engine would write
        assert a.array[0] == 0, "DRAM write reached the host copy without invalidate"
        a.invalidate()
        assert list(a.array[:11]) == [0xAA] * 10 + [10]

        # Free, reuse, exhaustion, bad sizes.
        addr = a.device_address
        a.free()
        a.free()                                                  # idempotent
        c = be.alloc(64)
        assert c.device_address == addr and not c.array.any(), "freed space not reused, or not zeroed"
        assert tb.read_mem(addr, 64) == bytes(64), "a new buffer shows a freed buffer's data"
        for bad in (0, -1, 2.5, True):
            with_error(lambda: be.alloc(bad), "positive integer")
        with_error(lambda: be.alloc(len(tb.mem)), "cannot allocate")
        c.free()
        with_error(c.flush, "freed buffer")

        # The engine may touch exactly the allocated buffers.
        assert tb.map.check(b.device_address, 16, write=True) is None
        assert tb.map.check(addr + 8192 * 16, 16, write=True) is not None

        # Registers, with the driver interface's argument checks.
        assert be.read_reg(offset("ID")) == ENGINE_ID
        be.write_reg(offset("PERF_SELECT"), 0xDEADBEEF)
        assert be.read_reg(offset("PERF_SELECT")) == 0xDEADBEEF
        with_error(lambda: be.read_reg(2), "multiple of 4")
        with_error(lambda: be.write_reg(offset("PERF_SELECT"), 1 << 32), "32-bit")
        be.write_reg(offset("PERF_SELECT"), 0)

        # wait_irq: true on the done interrupt, false after its wall-clock budget otherwise.
        be.write_reg(offset("DESC_BASE_LO"), b.device_address)
        be.write_reg(offset("IRQ_ENABLE"), 1)
        be.write_reg(offset("CONTROL"), 1 << reg("CONTROL").field("start")[0])
        assert be.wait_irq(5.0), "no interrupt after start"
        assert be.read_reg(offset("STATUS")) & 1 << reg("STATUS").field("done")[0]
        be.write_reg(offset("IRQ_STATUS"), 1)
        t0 = time.monotonic()
        assert not be.wait_irq(0.2), "wait_irq true with the interrupt cleared"
        assert time.monotonic() - t0 >= 0.2
        be.hang_bus(True)
        be.hang_bus(False)

    await run_blocking(tb, body)
    assert not tb.map.regions, f"close() left regions mapped: {tb.map.regions}"


def with_error(fn, text: str) -> None:
    try:
        fn()
    except BackendError as exc:
        assert text in str(exc), f"error {exc!r} does not say {text!r}"
    else:
        raise AssertionError(f"no BackendError ({text!r})")


@cocotb.test()
async def driver_identity_and_register_checks(dut):
    from driver_checks import check_identity, check_register_semantics
    from hwconv.driver.engine import EngineDriver

    tb = await _testbench(dut)

    def body(be: SimBackend) -> dict:
        driver = EngineDriver(be)
        ident = check_identity(driver)
        check_register_semantics(driver)
        return ident

    ident = await run_blocking(tb, body)
    assert ident["config_hash"] == tb.config.config_hash


@cocotb.test()
async def driver_program_checks(dut):
    from driver_checks import (check_error_reported, check_run_matches_golden,
                               check_soft_reset_then_rerun, check_throughput, check_timeout,
                               small_program)
    from hwconv.driver.engine import EngineDriver

    tb = await _testbench(dut, ram_bytes=16 << 20)
    program = small_program(tb.config)
    timeout_s = 300.0  # wall-clock: simulated runs are slow

    def body(be: SimBackend) -> None:
        driver = EngineDriver(be)
        check_run_matches_golden(driver, program, runs=2, timeout_s=timeout_s)
        check_error_reported(driver, program, layer=2, timeout_s=timeout_s)
        check_timeout(driver, program, timeout_s=0.5)
        check_soft_reset_then_rerun(driver, program, timeout_s=timeout_s)
        check_throughput(driver, program, n=2, timeout_s=timeout_s)

    await run_blocking(tb, body)
