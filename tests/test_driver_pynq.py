"""EngineDriver on the PYNQ backend, off-board: pynq 4.0's Overlay parses a minimal .hwh, binds
EngineIP (which owns an EngineDriver) to the engine by VLNV, programs the PL clock through the PS clock registers, and
MMIO/allocate reach the golden register model through GoldenPynqDevice (a pynq.Device)."""

from __future__ import annotations

import numpy as np
import pytest

from driver_checks import (check_detect_matches_golden, check_error_reported, check_identity,
                           check_register_semantics, check_run_matches_golden, check_soft_reset_then_rerun,
                           check_throughput, check_timeout, small_program)
from hwconv.spec import ENGINE_VLNV, EngineConfig

pynq = pytest.importorskip("pynq", reason="pynq is not installed")

from hwconv.driver.backends import BackendError  # noqa: E402
from hwconv.driver.engine import EngineDriver  # noqa: E402
from hwconv.driver.backends.pynq import EngineIP, PynqBackend, open_engine  # noqa: E402
from hwconv.driver.backends.pynq_offboard import GoldenPynqDevice, write_minimal_hwh  # noqa: E402

CFG = EngineConfig()


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    """A 'board': the device made active, a .bit + minimal .hwh pair, the overlay's engine."""
    d = tmp_path_factory.mktemp("overlay")
    write_minimal_hwh(d / "hwconv_test.hwh")
    (d / "hwconv_test.bit").write_bytes(b"\x00\x09\x0f\xf0 off-board bitstream stand-in")
    device = GoldenPynqDevice(CFG)
    had = hasattr(type(pynq.Device), "active_device") and "_active_device" in vars(pynq.Device)
    old = vars(pynq.Device).get("_active_device")
    pynq.Device.active_device = device
    engine = open_engine(d / "hwconv_test.bit", config=CFG)
    engine.backend.hang_bus = device.hang_bus  # the test hook lives on the device's PL model
    yield d, device, engine
    engine.close()
    if had:
        pynq.Device.active_device = old
    else:
        del pynq.Device._active_device


@pytest.fixture(scope="module")
def program():
    return small_program(CFG)


def test_overlay_binds_engine_driver_by_vlnv(board):
    _, device, engine = board
    assert isinstance(engine, EngineDriver) and isinstance(engine.backend, PynqBackend)
    ip = engine.backend.ip
    assert isinstance(ip, EngineIP) and isinstance(ip, pynq.DefaultIP) and ip.driver is engine
    desc = engine.backend.overlay.ip_dict["hwconv_engine_0"]
    assert desc["type"] == ENGINE_VLNV and desc["phys_addr"] == 0xA000_0000
    assert device.downloads == 1 and engine.backend.overlay.is_loaded()
    # DefaultIP's register_map (from the .hwh's address block) reads the same registers.
    assert int(ip.register_map.ID) == engine.read("ID")
    assert ip.register_map.VERSION.major == 1


def test_clock_is_what_pynq_programmed(board):
    _, device, engine = board
    # Overlay.download set PL0 from the .hwh (250 MHz) by dividers of the 1500 MHz IOPLL: /6.
    pl0 = int(device.clock_regs[0xFF5E_0000][0xC0 // 4])
    assert (pl0 >> 8) & 0x3F == 6 and (pl0 >> 16) & 0x3F == 1
    assert engine.backend.clock_hz == pytest.approx(33.333 * 90 / 2 / 6 * 1e6)


def test_identity_and_registers(board):
    engine = board[2]
    check_identity(engine)
    check_register_semantics(engine)


def test_run_matches_golden(board, program):
    _, device, engine = board
    st = check_run_matches_golden(engine, program, runs=2)
    assert st.clock_hz == engine.backend.clock_hz
    assert all(a >= 0x1000_0000 for a in device.memory.regions), "buffers came from the device's allocate"


def test_error_names_code_and_layer(board, program):
    check_error_reported(board[2], program, 4)


def test_timeout_and_soft_reset(board, program):
    engine = board[2]
    check_timeout(engine, program, timeout_s=0.2)
    check_soft_reset_then_rerun(engine, program)


def test_throughput(board, program):
    r = check_throughput(board[2], program)
    assert r["clock_mhz"] == pytest.approx(249.9975)


def test_detect(board):
    import torch

    from hwconv.quant.export import export_program
    from hwconv.quant.models import build_detector

    torch.manual_seed(1)
    m = build_detector("tiny")
    m.train()
    with torch.no_grad():
        m(torch.rand(2, 3, m.cfg.input_size, m.cfg.input_size))
    prog = export_program(m.eval(), CFG)
    img = (np.random.default_rng(7).random((100, 128, 3)) * 255).astype(np.uint8)
    check_detect_matches_golden(board[2], prog, img)


def test_buffers_are_freed_through_pynq(board, program):
    _, device, engine = board
    engine.load(program)
    before = set(device.memory.regions)
    engine.load(program)  # reloading frees the previous buffers (PynqBuffer.freebuffer)
    assert len(device.memory.regions) == len(before) and set(device.memory.regions) != before


def test_missing_hwh_and_missing_engine_are_named(tmp_path, board):
    (tmp_path / "a.bit").write_bytes(b"x")
    with pytest.raises(BackendError, match=r"a\.hwh: PYNQ needs the \.hwh beside the \.bit"):
        open_engine(tmp_path / "a.bit")
    with pytest.raises(BackendError, match="no such bitstream"):
        open_engine(tmp_path / "none.bit")
    text = (board[0] / "hwconv_test.hwh").read_text().replace(ENGINE_VLNV, "other.org:ip:thing:1.0")
    (tmp_path / "b.hwh").write_text(text)
    (tmp_path / "b.bit").write_bytes(b"x")
    device = GoldenPynqDevice(CFG)
    with pytest.raises(BackendError, match="no IP of type hwconv.org:hwconv:engine:1.0"):
        open_engine(tmp_path / "b.bit", device=device)
