"""Driver checks shared by every backend: plain functions `check_*(driver, ...)`.

tests/test_driver_golden.py and tests/test_driver_pynq.py call them, and the simulation tests
call them unchanged with an EngineDriver over hwconv.driver.backends.sim.SimBackend. Each check raises
AssertionError (or pytest.skip when the backend cannot do what it needs) and returns something
useful to print. `small_program(config)` is a program small enough for an RTL simulation
(8x8 pixels, every opcode); pass a bigger one where the backend is fast.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from hwconv.compiler import ProgramBuilder
from hwconv.compiler.cost import layer_macs
from hwconv.driver.engine import EngineDriver, EngineRunError, EngineTimeout
from hwconv.golden import run_program
from hwconv.spec import ENGINE_ID, EngineConfig, ErrorCode, Program, offset

THROUGHPUT_KEYS = ("fps", "latency_ms", "cycles_per_frame", "clock_mhz", "host_fps", "host_latency_ms",
                   "gmac_per_frame", "gmac_per_s", "frames", "counter_source")


def small_program(config: EngineConfig, *, size: int = 8, seed: int = 3) -> Program:
    """Every opcode on an size x size x 4 input: conv, dwconv, deformable dw with a predicted
    dilation map, maxpool, add, copy with 2x upsampling; two outputs."""
    rng = np.random.default_rng(seed)
    b = ProgramBuilder(config, extra={"model": "driver-check"})
    x = b.input("x", size, size, 4)
    c1 = b.conv("c1", x, rng.integers(-8, 8, (8, 3, 3, 4)), shift=6, bias=rng.integers(-40, 40, 8))
    dil = b.conv("dil", c1, rng.integers(-8, 8, (1, 1, 1, 8)), weight_bits=8, shift=8,
                 clamp=(0, config.max_dilation))
    df = b.deform("deform", c1, dil, rng.integers(-8, 8, (8, 3, 3)), shift=4)
    dw = b.dwconv("dw", df, rng.integers(-8, 8, (8, 3, 3)), shift=4, stride=2)
    mp = b.maxpool("mp", c1, kernel=2, stride=2, pad=0)
    s = b.add("sum", dw, mp, mult_a=1, mult_b=2, shift=1)
    up = b.copy("up", s, upsample=True)
    b.output("y", up)
    b.output("pooled", mp)
    return b.build()


def random_inputs(program: Program, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {t.name: rng.integers(*((-128, 128) if t.signed else (0, 256)),
                                 size=(t.ref.height, t.ref.width, t.ref.channels)) for t in program.inputs}


def faulty_program(program: Program, layer: int) -> Program:
    """The same program with layer `layer` storing one byte past the arena: the engine must stop
    there with ARENA_OUT_OF_BOUNDS, after completing the layers before it."""
    layers = list(program.layers)
    d = layers[layer]
    layers[layer] = dataclasses.replace(d, out=dataclasses.replace(d.out, addr=program.arena_bytes - 1))
    return dataclasses.replace(program, layers=layers)  # not validated: the engine must catch it


# ------------------------------------------------------------------------------------------------

def check_identity(driver: EngineDriver) -> dict:
    """ID, VERSION and CONFIG_HASH read as the spec and the backend's config say."""
    ident = driver.identify()
    assert ident["id"] == ENGINE_ID
    assert ident["config_hash"] == driver.backend.config.config_hash
    return ident


def check_register_semantics(driver: EngineDriver) -> None:
    """RO ignores writes, RW reads back, W1C on an idle engine, CONTROL strobes read 0,
    offsets past the last register read 0."""
    driver.write("ID", 0x1234)
    assert driver.read("ID") == ENGINE_ID, "a write changed the RO ID register"
    for value in (0, 7, 0xFFFF_FFFF):
        driver.write("PERF_SELECT", value)
        assert driver.read("PERF_SELECT") == value, "PERF_SELECT (RW) does not read back"
    driver.write("PERF_SELECT", 0)
    assert driver.read("CONTROL") == 0, "CONTROL strobes must read 0"
    driver.write("IRQ_STATUS", 1)
    assert driver.read("IRQ_STATUS") & 1 == 0, "IRQ_STATUS.done still set after writing 1"
    assert driver.backend.read_reg(offset("STALL_CYCLES") + 4) == 0, "an unmapped offset must read 0"


def check_run_matches_golden(driver: EngineDriver, program: Program, *, runs: int = 2,
                             timeout_s: float = 10.0):
    """Load, then `runs` runs on different inputs: outputs bit-exact with hwconv.golden.run_program,
    counters consistent (every layer done, per-layer MACs as the spec counts them)."""
    driver.load(program)
    stats = None
    for seed in range(runs):
        inputs = random_inputs(program, seed)
        got, stats = driver.run(inputs, timeout_s)
        want = run_program(program, inputs)
        assert set(got) == set(want)
        for name in want:
            assert got[name].dtype == want[name].dtype, name
            mismatch = int((got[name] != want[name]).sum())
            assert mismatch == 0, f"run {seed}: output {name!r} differs from golden in {mismatch} elements"
        assert stats.layers_done == len(program.layers)
        assert stats.cycles > 0, "CYCLES is 0 after a completed run"
        assert len(stats.layer_cycles) == len(program.layers)
        assert sum(stats.layer_cycles) <= stats.cycles, "per-layer cycles add up to more than CYCLES"
        assert stats.layer_macs == [layer_macs(d) for d in program.layers], "PERF_LAYER_MACS differs from the spec"
        assert stats.fps and stats.fps > 0
    st = driver.status()
    assert st["done"] and not st["busy"] and not st["error"]
    return stats


def check_error_reported(driver: EngineDriver, program: Program, layer: int = 2, *,
                         timeout_s: float = 10.0) -> EngineRunError:
    """A run that faults at `layer` raises EngineRunError naming ARENA_OUT_OF_BOUNDS, the layer
    index and name; the layers before it completed; the next good program runs correctly."""
    bad = faulty_program(program, layer)
    driver.load(bad)
    with pytest.raises(EngineRunError) as info:
        driver.run(random_inputs(program), timeout_s)
    err = info.value
    assert err.code == ErrorCode.ARENA_OUT_OF_BOUNDS and err.layer == layer, str(err)
    assert err.layer_name == program.layer_names[layer]
    assert err.layers_done == layer
    assert "ARENA_OUT_OF_BOUNDS" in str(err) and f"layer {layer} ({program.layer_names[layer]})" in str(err)
    st = driver.status()
    assert st["done"] and st["error"] and st["error_code"] == "ARENA_OUT_OF_BOUNDS"
    check_run_matches_golden(driver, program, runs=1, timeout_s=timeout_s)
    return err


def check_timeout(driver: EngineDriver, program: Program, timeout_s: float = 0.3) -> float:
    """A hung engine (memory that never answers) is an EngineTimeout after timeout_s, not a hang.
    Returns the seconds run() took."""
    if not hasattr(driver.backend, "hang_bus"):
        pytest.skip(f"backend {driver.backend.name} cannot hang its memory bus (no hang_bus)")
    driver.load(program)
    driver.backend.hang_bus(True)
    try:
        t0 = time.monotonic()
        with pytest.raises(EngineTimeout, match="not done after"):
            driver.run(random_inputs(program), timeout_s)
        took = time.monotonic() - t0
        assert timeout_s <= took < timeout_s + 5.0, f"run() gave up after {took:.3f} s for a {timeout_s} s timeout"
        assert driver.status()["busy"], "the hung engine should still be busy"
    finally:
        driver.backend.hang_bus(False)
    driver.soft_reset()
    return took


def check_soft_reset_then_rerun(driver: EngineDriver, program: Program, *, timeout_s: float = 10.0) -> None:
    """Soft reset returns the engine to idle (busy, done, error clear), keeps the configuration
    registers, and a rerun without reloading gives golden outputs; from a hung run as well when
    the backend can hang its bus."""
    driver.load(program)
    driver.run(random_inputs(program, 1), timeout_s)
    kept = {n: driver.read(n) for n in ("DESC_BASE_LO", "PARAMS_BASE_LO", "PARAMS_SIZE", "ARENA_BASE_LO",
                                        "ARENA_SIZE", "IRQ_ENABLE")}
    if hasattr(driver.backend, "hang_bus"):
        driver.backend.hang_bus(True)
        with pytest.raises(EngineTimeout):
            driver.run(random_inputs(program, 1), min(timeout_s, 0.2))
        driver.backend.hang_bus(False)
    driver.soft_reset()
    st = driver.status()
    assert not (st["busy"] or st["done"] or st["error"]), f"not idle after soft reset: {st}"
    assert {n: driver.read(n) for n in kept} == kept, "soft reset changed configuration registers"
    inputs = random_inputs(program, 2)
    got, _ = driver.run(inputs, timeout_s)
    want = run_program(program, inputs)
    for name in want:
        assert np.array_equal(got[name], want[name]), f"after soft reset, output {name!r} differs from golden"


def check_throughput(driver: EngineDriver, program: Program, n: int = 3, *, timeout_s: float = 10.0) -> dict:
    """throughput_test() has its keys with units and figures consistent with one run's counters."""
    driver.load(program)
    _, st = driver.run(random_inputs(program), timeout_s)
    r = driver.throughput_test(n, timeout_s=timeout_s)
    assert set(THROUGHPUT_KEYS) <= set(r), f"missing keys {set(THROUGHPUT_KEYS) - set(r)}"
    assert r["frames"] == n
    assert r["clock_mhz"] == driver.backend.clock_hz / 1e6
    assert r["cycles_per_frame"] > 0 and r["fps"] > 0 and r["host_fps"] > 0
    assert abs(r["fps"] * r["latency_ms"] - 1e3) < 1e-6 * r["fps"] * r["latency_ms"]
    assert abs(r["latency_ms"] - 1e3 * r["cycles_per_frame"] / driver.backend.clock_hz) < 1e-9 * r["latency_ms"]
    total_macs = sum(layer_macs(d) for d in program.layers)
    assert abs(r["gmac_per_frame"] - total_macs / 1e9) < 1e-12
    if getattr(driver.backend, "counter_source", "hardware").startswith("model"):
        assert r["cycles_per_frame"] == st.cycles  # the model's cycles do not depend on the data
    return r


def check_detect_matches_golden(driver: EngineDriver, program: Program, image: np.ndarray,
                                score_threshold: float = 0.05, timeout_s: float = 10.0) -> dict:
    """detect() on a uint8 image equals preprocessing + golden run_program + decode, boxes in image
    pixels inside the image."""
    from hwconv.driver.decode import decode_outputs
    from hwconv.driver.preprocess import letterbox, quantize_image

    driver.load(program)
    det = driver.detect(image, score_threshold=score_threshold, timeout_s=timeout_s)
    t = program.inputs[0]
    pic, (sx, sy) = letterbox(image, t.ref.height, t.ref.width)
    ref = decode_outputs(program, run_program(program, {t.name: quantize_image(pic, t)}),
                         score_threshold=score_threshold)
    h, w = image.shape[:2]
    want = np.clip(ref["boxes"] / [sx, sy, sx, sy], 0, [w, h, w, h])
    assert np.array_equal(det["labels"], ref["labels"]) and np.allclose(det["scores"], ref["scores"])
    assert np.allclose(det["boxes"], want)
    assert len(det["scores"]) > 0, "no detections to compare: lower score_threshold"
    assert (det["boxes"][:, 2] <= w).all() and (det["boxes"][:, 3] <= h).all()
    return det
