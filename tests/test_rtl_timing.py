"""Timing: the clock every speed figure uses (hwconv.rtl.clock) and the netlist timing estimate
(hwconv.rtl.timing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hwconv.boards import load_board, parse_board
from hwconv.rtl.clock import ClockError, clock_for
from hwconv.spec import EngineConfig

U96 = load_board("ultra96v2")


def _board_text(name: str, fmax: float | None, config_hash: str = "") -> str:
    text = (Path(__file__).parents[1] / "hwconv" / "boards" / f"{name}.toml").read_text()
    if "[timing]" in text:
        text = text[: text.index("[timing]")]
    if fmax is not None:
        text += f'\n[timing]\nestimated_fmax_mhz = {fmax}\nconfig_hash = "{config_hash}"\nreport = "ref.txt"\n'
    return text


def _u96(fmax: float | None, config_hash: str | None = None):
    h = config_hash or f"0x{U96.default_engine_config().config_hash:08x}"
    return parse_board(_board_text("ultra96v2", fmax, h), source="u96.toml")


# ==================================================================================================
# clock_for
# ==================================================================================================
def test_estimate_below_the_board_clock_is_the_clock():
    clk = clock_for(_u96(55.25))
    mhz, source = clk
    assert mhz == 55.25 and clk.board_mhz == 250.0 and clk.limited_by_timing and clk.verified
    assert "estimated Fmax" in source and "below the 250 MHz board clock" in source and "ref.txt" in source


def test_estimate_above_the_board_clock_keeps_the_board_clock():
    clk = clock_for(_u96(312.0))
    assert clk.mhz == 250.0 and clk.fmax_mhz == 312.0 and not clk.limited_by_timing
    assert clk.source.startswith("250 MHz, the board clock (estimated Fmax 312.0 MHz")


def test_no_estimate_is_labelled_unverified():
    clk = clock_for(_u96(None))
    assert (clk.mhz, clk.fmax_mhz, clk.verified) == (250.0, None, False)
    assert "unverified" in clk.source and "no timing estimate" in clk.source
    assert clk.to_dict()["estimated_fmax_mhz"] is None


def test_reference_for_another_config_is_not_used():
    clk = clock_for(_u96(55.0, "0x00000000"))
    assert clk.mhz == 250.0 and not clk.verified and "another engine config" in clk.source
    other = clock_for(_u96(55.0), U96.default_engine_config().with_(pe_in=8, pe_out=8))
    assert not other.verified


def test_config_alone_finds_the_catalog_board():
    for board in ("ultra96v2", "pynq_z2"):
        b = load_board(board)
        assert clock_for(b.default_engine_config()) == clock_for(b)
    assert not clock_for(EngineConfig(pe_in=4, pe_out=4)).verified


def _report(tmp_path, config: EngineConfig, fmax=80.0, family="xcup", **extra) -> Path:
    path = tmp_path / "timing.json"
    path.write_text(json.dumps({"fmax_mhz": fmax, "family": family, "engine_config": config.to_dict(), **extra}))
    return path


def test_generate_report_overrides_the_reference(tmp_path):
    cfg = U96.default_engine_config()
    clk = clock_for(_u96(55.0), timing_report=_report(tmp_path, cfg.with_(clock_mhz=200.0)))
    assert clk.mhz == 80.0 and str(tmp_path / "timing.json") in clk.source
    assert clk.to_dict()["estimated_fmax_mhz"] == 80.0


@pytest.mark.parametrize("change,field", [
    (dict(fmax=-1), "fmax_mhz"), (dict(fmax="fast"), "fmax_mhz"), (dict(family="xc7"), "family"),
    (dict(config=EngineConfig(pe_in=8, pe_out=8)), "engine_config"),
])
def test_mismatched_report_is_refused(tmp_path, change, field):
    cfg = change.pop("config", U96.default_engine_config())
    path = _report(tmp_path, cfg, **change)
    with pytest.raises(ClockError, match=rf"^{path}: .*'{field}'"):
        clock_for(U96, timing_report=path)


def test_unreadable_report_is_one_line(tmp_path):
    with pytest.raises(ClockError, match="cannot read timing report"):
        clock_for(U96, timing_report=tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ClockError, match="not JSON"):
        clock_for(U96, timing_report=tmp_path / "bad.json")
