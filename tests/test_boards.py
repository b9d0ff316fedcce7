"""The board catalog (hwconv.boards): packaged board files, user board files, validation errors,
artifact stems and the `hwconv boards` table."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

import pytest

from hwconv.boards import Board, BoardError, format_board_table, list_boards, load_board, parse_board
from hwconv.spec import EngineConfig, SpecError

PACKAGED = sorted(p.name[:-5] for p in resources.files("hwconv.boards").iterdir() if p.name.endswith(".toml"))

# Device capacities checked against Vivado's report_utilization "Available" columns; a typo in a
# board file should fail here, not in a resource budget months later.
EXPECTED = {
    "pynq_z2": ("xc7z020clg400-1", "xc7", "zynq7", 64, 100.0, dict(dsp=220, bram36=140, lut=53200, ff=106400, uram=0)),
    "ultra96v2": ("xczu3eg-sbva484-1-i", "xcup", "zynq_ultra_ps_e", 128, 250.0,
                  dict(dsp=360, bram36=216, lut=70560, ff=141120, uram=0)),
    "zcu104": ("xczu7ev-ffvc1156-2-e", "xcup", "zynq_ultra_ps_e", 128, 300.0,
               dict(dsp=1728, bram36=312, lut=230400, ff=460800, uram=96)),
    "kv260": ("xck26-sfvc784-2LV-c", "xcup", "zynq_ultra_ps_e", 128, 250.0,
              dict(dsp=1248, bram36=144, lut=117120, ff=234240, uram=64)),
}

VALID = """\
name = "myboard"
display_name = "My Board"
part = "xczu2cg-sbva484-1-e"
family = "xcup"
ps = "zynq_ultra_ps_e"
default_clock_mhz = 200.0
hp_port_width = 128
pynq_image = "none"

[resources]
dsp = 240
bram36 = 150
lut = 47232
ff = 94464
uram = 0

[pl_clocks]
pl_clk0 = 200.0
"""


def _write(tmp_path: Path, text: str, name: str = "myboard.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ==================================================================================================
# Packaged boards
# ==================================================================================================
def test_the_four_reference_boards_are_packaged():
    assert PACKAGED == sorted(EXPECTED)


@pytest.mark.parametrize("name", PACKAGED)
def test_packaged_board_loads_with_expected_facts(name):
    board = load_board(name)
    part, family, ps, hp, clock, res = EXPECTED[name]
    assert isinstance(board, Board)
    assert (board.part, board.family, board.ps, board.hp_port_width, board.default_clock_mhz) == (
        part, family, ps, hp, clock)
    assert vars(board.resources) == res
    assert board.board_part and board.pynq_image and board.display_name
    assert board.pl_clocks[0][1] == board.default_clock_mhz      # the engine clock comes first


def test_packaged_names_are_unique_and_equal_file_stems():
    boards = list_boards()
    assert [b.name for b in boards] == PACKAGED
    assert len({b.name for b in boards}) == len(boards)


def test_packaged_files_are_plain_toml():
    # Packaged data must stay loadable without hwconv, e.g. by a build script.
    for name in PACKAGED:
        data = tomllib.loads((resources.files("hwconv.boards") / f"{name}.toml").read_text())
        assert data["name"] == name


def test_unknown_board_name_lists_known_boards():
    with pytest.raises(BoardError, match=r"unknown board 'zedboard'.*kv260, pynq_z2, ultra96v2, zcu104"):
        load_board("zedboard")


def test_board_error_is_a_spec_error():
    # The CLI reports SpecError as one clean line; board errors must get the same treatment.
    assert issubclass(BoardError, SpecError)


# ==================================================================================================
# User boards
# ==================================================================================================
def test_user_board_loads_by_path(tmp_path):
    path = _write(tmp_path, VALID)
    for arg in (path, str(path)):
        board = load_board(arg)
        assert board.name == "myboard" and board.resources.dsp == 240 and board.board_part is None
        assert board.source == str(path)


def test_missing_user_file_names_the_path(tmp_path):
    with pytest.raises(BoardError, match=r"nope\.toml: cannot read board file"):
        load_board(tmp_path / "nope.toml")


def test_a_board_path_that_is_no_small_text_file_is_one_error_before_reading(tmp_path):
    import os

    from hwconv.boards.catalog import BOARD_MAX_BYTES

    big = tmp_path / "big.toml"
    with open(big, "wb") as f:
        f.truncate(BOARD_MAX_BYTES + 1)   # sparse: the bound is checked before anything is read
    (tmp_path / "folder.toml").mkdir()
    os.mkfifo(tmp_path / "fifo.toml")     # reading it would block forever
    (tmp_path / "binary.toml").write_bytes(b"\xff\xfe name")
    for name, why in (("big.toml", "more than the 1048576-byte limit"), ("folder.toml", "this is a folder"),
                      ("fifo.toml", "this is a FIFO"), ("binary.toml", "not UTF-8 text")):
        with pytest.raises(BoardError, match=why):
            load_board(tmp_path / name)


# ==================================================================================================
# Malformed files: each error names the file and the field
# ==================================================================================================
MALFORMED = {
    "missing field": (VALID.replace('part = "xczu2cg-sbva484-1-e"\n', ""), r"missing field 'part'"),
    "missing resource": (VALID.replace("ff = 94464\n", ""), r"missing field 'resources\.ff'"),
    "misspelt required": (VALID.replace("hp_port_width", "hp_port_widht"), r"missing field 'hp_port_width'"),
    "misspelt optional": ('board_prat = "x"\n' + VALID, r"unknown field 'board_prat'"),
    "wrong type str": (VALID.replace('part = "xczu2cg-sbva484-1-e"', "part = 7"), r"field 'part' must be a non-empty"),
    "wrong type int": (VALID.replace("dsp = 240", 'dsp = "240"'), r"field 'resources\.dsp' must be an integer"),
    "bool is not int": (VALID.replace("dsp = 240", "dsp = true"), r"field 'resources\.dsp' must be an integer"),
    "float is not int": (VALID.replace("lut = 47232", "lut = 47232.0"), r"field 'resources\.lut' must be an integer"),
    "wrong type clock": (VALID.replace("default_clock_mhz = 200.0", 'default_clock_mhz = "200"'),
                         r"field 'default_clock_mhz' must be a number"),
    "resources not table": (VALID.split("[resources]")[0] + "resources = 1\n[pl_clocks]\npl_clk0 = 200.0\n",
                            r"field 'resources' must be a table"),
    "unknown family": (VALID.replace('family = "xcup"', 'family = "xcu"'), r"field 'family' must be one of"),
    "unknown ps": (VALID.replace('ps = "zynq_ultra_ps_e"', 'ps = "versal_cips"'), r"field 'ps' must be one of"),
    "family/ps mismatch": (VALID.replace('ps = "zynq_ultra_ps_e"', 'ps = "zynq7"'), r"field 'ps' is 'zynq7' but family"),
    "hp too wide": (VALID.replace('family = "xcup"', 'family = "xc7"').replace('"zynq_ultra_ps_e"', '"zynq7"'),
                    r"field 'hp_port_width' must be one of \(32, 64\)"),
    "negative dsp": (VALID.replace("dsp = 240", "dsp = -240"), r"field 'resources\.dsp' must be positive"),
    "zero lut": (VALID.replace("lut = 47232", "lut = 0"), r"field 'resources\.lut' must be positive"),
    "negative uram": (VALID.replace("uram = 0", "uram = -1"), r"field 'resources\.uram' must be non-negative"),
    "zero clock": (VALID.replace("default_clock_mhz = 200.0", "default_clock_mhz = 0"),
                   r"field 'default_clock_mhz' must be in"),
    "clock not generated": (VALID.replace("pl_clk0 = 200.0", "pl_clk0 = 100.0"),
                            r"field 'default_clock_mhz' = 200.0 is not generated"),
    "bad pl clock": (VALID.replace("pl_clk0 = 200.0", "pl_clk0 = 200.0\npl_clk1 = -5"), r"field 'pl_clocks\.pl_clk1'"),
    "no pl clocks": (VALID.replace("pl_clk0 = 200.0", ""), r"field 'pl_clocks' must name at least one"),
    "unsafe name": (VALID.replace('name = "myboard"', 'name = "My Board/1"'), r"field 'name' must be lower-case"),
    "bad TOML": (VALID.replace("dsp = 240", "dsp = = 240"), r"not valid TOML: .*line 11"),
}


@pytest.mark.parametrize("text,pattern", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_board_file_raises_clear_error(tmp_path, text, pattern):
    path = _write(tmp_path, text, "broken.toml")
    with pytest.raises(BoardError, match=pattern) as info:
        load_board(path)
    assert str(info.value).startswith(f"{path}: ")                 # the file is named first


def test_parse_board_names_given_source():
    with pytest.raises(BoardError, match=r"^inline: missing field 'name'"):
        parse_board(VALID.replace('name = "myboard"\n', ""), source="inline")


# ==================================================================================================
# Engine config and artifacts
# ==================================================================================================
def test_artifact_stem():
    board = load_board("ultra96v2")
    assert board.artifact_stem(EngineConfig()) == "hwconv_ultra96v2_w4a8_16x16_250mhz"
    assert board.artifact_stem(EngineConfig(pe_in=8, pe_out=32, clock_mhz=187.5)) == "hwconv_ultra96v2_w4a8_8x32_188mhz"


@pytest.mark.parametrize("name", PACKAGED)
def test_default_engine_config_per_board(name):
    board = load_board(name)
    cfg = board.default_engine_config()
    assert cfg.clock_mhz == board.default_clock_mhz
    assert cfg.axi_data_width == board.hp_port_width
    # Everything else is the reference datapath but for the board file's [engine] fields.
    assert cfg == EngineConfig().with_(clock_mhz=board.default_clock_mhz, axi_data_width=board.hp_port_width,
                                       **dict(board.engine))
    pe = "8x8" if name == "pynq_z2" else "16x16"
    assert board.artifact_stem(cfg) == f"hwconv_{name}_w4a8_{pe}_{int(board.default_clock_mhz)}mhz"


def test_default_stems_are_distinct_per_board():
    stems = [b.artifact_stem(b.default_engine_config()) for b in list_boards()]
    assert len(set(stems)) == len(stems)


# ==================================================================================================
# `hwconv boards` table
# ==================================================================================================
def test_table_lists_all_boards():
    table = format_board_table(list_boards())
    lines = table.splitlines()
    assert lines[0].split() == ["name", "part", "family", "DSP", "BRAM36", "LUT", "FF", "clock"]
    assert len(lines) == 2 + len(PACKAGED)                        # header, rule, one row per board
    for name, (part, family, _, _, clock, res) in EXPECTED.items():
        row = next(line for line in lines if line.startswith(name + " "))
        cells = row.split()
        assert cells[:5] == [name, part, family, str(res["dsp"]), str(res["bram36"])]
        assert cells[5:7] == [f"{res['lut']:,}", f"{res['ff']:,}"]
        assert cells[7:] == [f"{clock:g}", "MHz"]


def test_table_includes_user_board(tmp_path):
    table = format_board_table([*list_boards(), load_board(_write(tmp_path, VALID))])
    assert "myboard" in table and "xczu2cg-sbva484-1-e" in table


def test_engine_table_sets_the_boards_default_engine(tmp_path):
    board = load_board(_write(tmp_path, VALID + "\n[engine]\npe_in = 8\npe_out = 8\n"))
    cfg = board.default_engine_config()
    assert (cfg.pe_in, cfg.pe_out, cfg.clock_mhz, cfg.axi_data_width) == (8, 8, 200.0, 128)
    assert load_board("pynq_z2").default_engine_config().name == "w4a8_8x8"  # 16x16 needs ~333 DSP


@pytest.mark.parametrize("table,message", [
    ("pe_in = 3", "pe_in"), ("clock_mhz = 100.0", "default_clock_mhz"), ("frobnicate = 1", "frobnicate"),
])
def test_bad_engine_table_names_the_file_and_field(tmp_path, table, message):
    path = _write(tmp_path, VALID + f"\n[engine]\n{table}\n")
    with pytest.raises(BoardError) as info:
        load_board(path)
    assert str(path) in str(info.value) and "engine" in str(info.value) and message in str(info.value)


# ==================================================================================================
# Speed grade and the shipped timing estimate ([timing])
# ==================================================================================================
@pytest.mark.parametrize("name,grade", [("pynq_z2", "-1"), ("ultra96v2", "-1"), ("zcu104", "-2"), ("kv260", "-2LV")])
def test_speed_grade_comes_from_the_part(name, grade):
    assert load_board(name).speed_grade == grade


TIMING = '\n[timing]\nestimated_fmax_mhz = 123.4\nconfig_hash = "0x0123abcd"\nreport = "docs/x.txt"\n'


def test_timing_table_is_read(tmp_path):
    ref = load_board(_write(tmp_path, VALID + TIMING)).timing
    assert (ref.fmax_mhz, ref.config_hash, ref.report) == (123.4, "0x0123abcd", "docs/x.txt")
    assert load_board(_write(tmp_path, VALID)).timing is None


@pytest.mark.parametrize("old,new,field", [
    ("123.4", "0", "timing.estimated_fmax_mhz"), ("123.4", '"fast"', "timing.estimated_fmax_mhz"),
    ('"0x0123abcd"', '"0123abcd"', "timing.config_hash"), ('report = "docs/x.txt"\n', "", "timing.report"),
    ("report =", "extra = 1\nreport =", "timing.extra"),
])
def test_bad_timing_table_names_the_file_and_field(tmp_path, old, new, field):
    path = _write(tmp_path, VALID + TIMING.replace(old, new))
    with pytest.raises(BoardError) as info:
        load_board(path)
    assert str(info.value).startswith(f"{path}: ") and repr(field) in str(info.value)


@pytest.mark.parametrize("name", PACKAGED)
def test_shipped_timing_estimate_is_for_the_boards_default_engine(name):
    board = load_board(name)
    if board.timing is None:
        pytest.skip(f"{name} ships no timing estimate")
    assert board.timing.config_hash == f"0x{board.default_engine_config().config_hash:08x}"
    report = Path(__file__).parents[1] / board.timing.report.split(",")[0]
    assert report.is_file()                               # the full report is in the repository
    assert f"estimated Fmax {board.timing.fmax_mhz:.1f} MHz" in report.read_text()
