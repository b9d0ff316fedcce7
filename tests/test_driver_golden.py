"""EngineDriver on the golden backend: the shared driver checks, plus what only the register
model can show (bus errors, stale buffers without flush, 64-bit latching, interrupt line),
numpy decode and preprocessing against the training-side torch/PIL versions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from driver_checks import (check_detect_matches_golden, check_error_reported, check_identity,
                           check_register_semantics, check_run_matches_golden, check_soft_reset_then_rerun,
                           check_throughput, check_timeout, random_inputs, small_program)
from hwconv.driver.backends import BackendError
from hwconv.driver.decode import decode
from hwconv.driver.engine import EngineDriver, EngineNotFound, EngineRunError
from hwconv.driver.backends.golden import GoldenBackend
from hwconv.driver.preprocess import letterbox, quantize_image, resize
from hwconv.spec import EngineConfig, ErrorCode
from hwconv.spec.memory import PAGE_BYTES

CFG = EngineConfig()


@pytest.fixture(scope="module")
def program():
    return small_program(CFG)


@pytest.fixture
def driver():
    with EngineDriver(GoldenBackend(CFG)) as d:
        yield d


@pytest.fixture(scope="module")
def detector():
    """An untrained tiny CenterNet, calibrated on random images, exported (about 5 s)."""
    from hwconv.quant.export import export_program
    from hwconv.quant.models import build_detector

    torch.manual_seed(0)
    m = build_detector("tiny")
    m.train()
    with torch.no_grad():
        for _ in range(2):
            m(torch.rand(4, 3, m.cfg.input_size, m.cfg.input_size))
    return export_program(m.eval(), CFG)


# -- the shared checks ------------------------------------------------------------------------------

def test_identity_and_registers(driver):
    check_identity(driver)
    check_register_semantics(driver)


def test_run_matches_golden(driver, program):
    st = check_run_matches_golden(driver, program, runs=3)
    assert "model" in st.counter_source


def test_error_names_code_and_layer(driver, program):
    for layer in (0, 3, len(program.layers) - 1):
        check_error_reported(driver, program, layer)


def test_timeout_is_an_error_not_a_hang(driver, program):
    took = check_timeout(driver, program, timeout_s=0.2)
    assert took < 1.0


def test_soft_reset_then_rerun(driver, program):
    check_soft_reset_then_rerun(driver, program)


def test_throughput_keys(driver, program):
    r = check_throughput(driver, program)
    from hwconv.rtl.clock import clock_for

    assert r["clock_mhz"] == pytest.approx(clock_for(CFG).mhz)   # the clock the design can meet


def test_detect_on_tiny_detector(driver, detector):
    img = (np.random.default_rng(4).random((96, 160, 3)) * 255).astype(np.uint8)
    det = check_detect_matches_golden(driver, detector, img)
    assert det["boxes"].shape[1] == 4


# -- golden-model specifics -----------------------------------------------------------------------

def test_base_outside_any_buffer_is_an_axi_error(driver, program):
    driver.load(program)
    driver.write("ARENA_BASE_LO", 0x100)  # no buffer there: DECERR on hardware
    with pytest.raises(EngineRunError, match="AXI_ERROR at layer 0") as info:
        driver.run(random_inputs(program))
    assert info.value.code == ErrorCode.AXI_ERROR


def test_config_hash_mismatch_refused_before_running(program):
    other = CFG.with_(pe_in=8)
    with EngineDriver(GoldenBackend(other)) as d, pytest.raises(EngineNotFound, match="CONFIG_HASH"):
        d.load(program)


def test_device_sees_only_flushed_bytes():
    be = GoldenBackend(CFG)
    buf = be.alloc(100)
    assert buf.device_address % PAGE_BYTES == 0
    buf.array[:] = 7
    assert not be.memory.regions[buf.device_address].any(), "device saw host bytes before flush"
    buf.flush()
    be.memory.regions[buf.device_address][:] = 9
    assert (buf.array == 7).all()
    buf.invalidate()
    assert (buf.array == 9).all()
    buf.free()
    with pytest.raises(BackendError, match="freed"):
        buf.flush()
    with pytest.raises(BackendError, match="positive integer"):
        be.alloc(0)
    with pytest.raises(BackendError, match="multiple of 4"):
        be.read_reg(3)
    with pytest.raises(BackendError, match="32-bit"):
        be.write_reg(0, 1 << 32)


def test_counter_hi_is_latched_by_lo_read(driver, program):
    driver.load(program)
    _, st = driver.run(random_inputs(program))
    model = driver.backend.model
    model._layer_cycles = [1 << 33]  # a 64-bit count: HI must come from the latched LO read
    assert driver.read("CYCLES_HI") == 0, "HI without a LO read returns the last latched value"
    assert driver.read64("CYCLES") == 1 << 33


def test_irq_line_follows_enable_and_w1c(driver, program):
    driver.load(program)
    be = driver.backend
    driver.run(random_inputs(program))
    assert not be.model.irq  # run() clears IRQ_STATUS after seeing done
    driver.write("CONTROL", 1)
    assert be.wait_irq(0.0) and driver.read("IRQ_STATUS") == 1
    driver.write("IRQ_ENABLE", 0)
    assert not be.wait_irq(0.0)
    driver.write("IRQ_ENABLE", 1)
    driver.write("IRQ_STATUS", 1)
    assert not be.model.irq


def test_inputs_are_checked(driver, program):
    driver.load(program)
    x = random_inputs(program)["x"]
    with pytest.raises(ValueError, match=r"shape \(8, 8, 3\)"):
        driver.run(x[:, :, :3])
    with pytest.raises(ValueError, match="quantise"):
        driver.run(x.astype(np.float32))
    with pytest.raises(ValueError, match=r"outside \[0, 255\]"):
        driver.run(x - 1 - x.max())
    with pytest.raises(RuntimeError, match="no program loaded"):
        EngineDriver(GoldenBackend(CFG)).run(x)


def test_torch_decode_is_the_driver_decode_per_image():
    from hwconv.quant.data.centernet import decode as torch_decode

    rng = np.random.default_rng(0)
    heat = rng.random((2, 3, 16, 20))
    wh, reg = rng.random((2, 2, 16, 20)) * 5, rng.random((2, 2, 16, 20))
    dets = torch_decode(torch.from_numpy(heat), torch.from_numpy(wh), torch.from_numpy(reg), k=40,
                        score_threshold=0.3)
    for i, want in enumerate(dets):
        got = decode(heat[i], wh[i], reg[i], stride=4, k=40, score_threshold=0.3)
        assert len(got["scores"]) > 5
        for key in ("boxes", "scores", "labels"):
            assert np.array_equal(got[key], want[key].numpy()), key


def test_a_plateau_of_equal_scores_is_one_detection_at_its_first_cell():
    heat = np.full((2, 8, 8), 0.05)
    heat[0, 2:4, 3:6] = 0.9        # a 2x3 plateau (8-bit logits tie like this): one object
    heat[0, 6, 1] = heat[0, 7, 0] = 0.7   # an anti-diagonal tie: the upper cell comes first
    heat[1, 5, 5] = 0.8            # a plain peak
    heat[1, 5, 6] = 0.8 - 1e-9     # a neighbour just below it: not a peak
    det = decode(heat, np.ones((2, 8, 8)), np.zeros((2, 8, 8)), stride=4, k=10, score_threshold=0.5)
    assert det["scores"].tolist() == [0.9, 0.8, 0.7]
    assert det["labels"].tolist() == [0, 1, 0]
    centres = (det["boxes"][:, :2] + det["boxes"][:, 2:]) / 2 / 4
    assert centres.tolist() == [[3.0, 2.0], [5.0, 5.0], [1.0, 6.0]]   # (x, y) cells


def test_letterbox_geometry_and_resize_match_training_side():
    from PIL import Image

    from hwconv.quant.data.transforms import Letterbox

    rng = np.random.default_rng(1)
    img = (rng.random((90, 150, 3)) * 255).astype(np.uint8)
    pic, (sx, sy) = letterbox(img, 128, 128)
    assert (sx, sy) == Letterbox(128).scale_of(90, 150)
    ref, _, _ = Letterbox(128)(img, np.zeros((0, 4)), np.zeros(0))
    nh, nw = round(90 * sy), round(150 * sx)
    assert (pic[nh:] == 0).all() and (pic[:, nw:] == 0).all()
    # A smooth image resizes to within a couple of levels of PIL's antialiased bilinear.
    yy, xx = np.mgrid[0:90, 0:150]
    smooth = np.stack([yy * 2, xx, (xx + yy) % 255], -1).astype(np.uint8)
    ours = resize(smooth, 45, 75).astype(int)
    pil = np.asarray(Image.fromarray(smooth).resize((75, 45), Image.BILINEAR)).astype(int)
    assert np.abs(ours - pil)[1:-1, 1:-1].max() <= 2
    assert ref.shape == pic.shape


def test_quantize_image_matches_verify():
    from hwconv.quant.verify import quantize_image as verify_quantize

    prog = small_program(CFG)  # any program with an input tensor; give it a 3-channel twin
    from hwconv.spec.program import TensorInfo

    t = prog.inputs[0]
    t3 = TensorInfo("image", "input", t.ref.__class__(**{**t.ref.__dict__, "channels": 3}), False, 1 / 255.0)
    img = (np.random.default_rng(2).random((8, 8, 3)) * 255).astype(np.uint8)

    class P:
        def tensor(self, name):
            return t3

    want = verify_quantize(torch.from_numpy(img).permute(2, 0, 1).double() / 255.0, P())
    assert np.array_equal(quantize_image(img, t3), want)


def test_run_sync_refuses_a_coroutine_that_suspends():
    import asyncio

    from hwconv.driver.protocol import run_sync

    async def suspends():
        await asyncio.sleep(0)
        return 1

    async def returns():
        return 2

    assert run_sync(returns()) == 2
    with pytest.raises(RuntimeError, match="suspended on a blocking port"):
        run_sync(suspends())


def test_driver_core_imports_neither_pynq_nor_its_backend():
    import subprocess
    import sys

    code = ("import sys, hwconv.driver.engine, hwconv.driver.backends.golden; "
            "print(sorted(m for m in sys.modules if m == 'pynq' or m.endswith('backends.pynq')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
