"""Two W4 x A8 products per DSP48: the packing proven exact (exhaustively for one product, at the
bound and one past it for sums), then PackedMac simulated against the model, linted and mapped."""

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from amaranth.sim import Simulator

from hwconv.rtl import resources
from hwconv.rtl.packed_mac import (DSP48E1, DSP48E2, LATENCY, PackedMac, PackedMacColumn,
                                   accumulate, lane_sums_fit,
                                   lane_products, max_k, max_terms, pack_operand, packing_for,
                                   product_range, split_lanes, to_verilog, weight_bounds)
from hwconv.spec.params import act_range
from hwconv.toolchain import find_yosys, verilator_env

DSPS = [DSP48E2, DSP48E1]
needs_yosys = pytest.mark.skipif(not find_yosys().found, reason="yosys not installed")


def _grid(narrow: bool, acts: tuple[int, int]):
    """Every (w0, w1, a) with weights in the range and a in [acts[0], acts[1]], as flat arrays."""
    wlo, whi = weight_bounds(narrow)
    w = np.arange(wlo, whi + 1)
    a = np.arange(acts[0], acts[1] + 1)
    w0, w1, aa = np.meshgrid(w, w, a, indexing="ij")
    return w0.ravel(), w1.ravel(), aa.ravel()


# -- the derived widths ---------------------------------------------------------------------------
def test_packing_table():
    """k from the wide input, N from the low lane; these figures are quoted in the notes."""
    table = {(d.name, narrow, s): (packing_for(d, narrow, s).k, packing_for(d, narrow, s).terms)
             for d in DSPS for narrow in (False, True) for s in (None, True, False)}
    assert table == {
        ("DSP48E2", False, None): (22, 1028), ("DSP48E2", False, True): (22, 2047),
        ("DSP48E2", False, False): (22, 1028), ("DSP48E2", True, None): (23, 2349),
        ("DSP48E2", True, True): (23, 4681), ("DSP48E2", True, False): (23, 2349),
        ("DSP48E1", False, None): (20, 257), ("DSP48E1", False, True): (20, 511),
        ("DSP48E1", False, False): (20, 257), ("DSP48E1", True, None): (21, 587),
        ("DSP48E1", True, True): (21, 1170), ("DSP48E1", True, False): (21, 587),
    }
    assert product_range(False, None) == (-2040, 1785)  # -8 * 255 and 7 * 255
    assert packing_for(DSP48E2).guard_bits == 10 and packing_for(DSP48E1).guard_bits == 8


@pytest.mark.parametrize("dsp", DSPS, ids=lambda d: d.name)
@pytest.mark.parametrize("narrow", [False, True], ids=["w-8..7", "w-7..7"])
def test_k_is_the_largest_that_fits_the_wide_input(dsp, narrow):
    k = max_k(dsp, narrow)
    w0, w1, _ = _grid(narrow, (0, 0))
    exact = (w1.astype(np.int64) << k) + w0
    assert np.array_equal(pack_operand(w0, w1, k, dsp), exact)
    over = (w1.astype(np.int64) << (k + 1)) + w0
    assert not np.array_equal(pack_operand(w0, w1, k + 1, dsp), over)  # k+1 wraps some pair


# -- one product, exhaustively --------------------------------------------------------------------
@pytest.mark.parametrize("dsp", DSPS, ids=lambda d: d.name)
@pytest.mark.parametrize("narrow", [False, True], ids=["w-8..7", "w-7..7"])
@pytest.mark.parametrize("act_signed", [True, False], ids=["int8", "uint8"])
def test_every_single_product_is_exact(dsp, narrow, act_signed):
    """All 16 x 16 x 256 (w0, w1, a): both lanes equal w0*a and w1*a (9 bits of activation:
    one datapath for int8 and uint8)."""
    p = packing_for(dsp, narrow)
    w0, w1, a = _grid(narrow, act_range(8, act_signed))
    lo, hi = split_lanes(lane_products(w0, w1, a, p.k, dsp), p.k, p.lane_bits)
    assert np.array_equal(lo, w0 * a) and np.array_equal(hi, w1 * a)
    assert len(a) == (16 - narrow) ** 2 * 256


def test_the_sign_of_the_low_lane_is_the_correction_operand_signs_are_not():
    """Pitfalls: no correction is wrong whenever w0*a < 0; a borrow predicted from the operands'
    signs (w0 < 0) != (a < 0) is wrong whenever the product is 0 with one operand negative."""
    p = packing_for(DSP48E2)
    w0, w1, a = _grid(False, (-128, 255))
    prod = lane_products(w0, w1, a, p.k, DSP48E2)
    raw = prod >> p.k                                     # no correction
    assert np.array_equal(raw != w1 * a, w0 * a < 0)
    predicted = raw + ((w0 < 0) != (a < 0))               # operand-sign correction
    wrong = predicted != w1 * a
    assert wrong.any() and np.array_equal(wrong, (w0 * a == 0) & ((w0 < 0) | (a < 0)))
    _, hi = split_lanes(prod, p.k, p.lane_bits)           # P[k-1]: the lane's own sign
    assert np.array_equal(hi, w1 * a)


# -- sums in P ------------------------------------------------------------------------------------
def _extreme_terms(rng, n_seq, n, narrow, act_signed):
    """Random terms drawn mostly from the operand extremes, where sums reach the lane's ends."""
    wlo, whi = weight_bounds(narrow)
    kinds = [True, False] if act_signed is None else [act_signed]
    acts = sorted({v for s in kinds for v in (*act_range(8, s), 0, -1 if s else 1)})
    w0 = rng.choice([wlo, whi, 0, -1, 1], (n_seq, n), p=[.4, .4, .1, .05, .05])
    w1 = rng.choice([wlo, whi, 0, -1, 1], (n_seq, n), p=[.4, .4, .1, .05, .05])
    a = rng.choice(acts, (n_seq, n))
    if act_signed is not None:
        lo, hi = act_range(8, act_signed)
        a = np.where(rng.random((n_seq, n)) < 0.2, rng.integers(lo, hi + 1, (n_seq, n)), a)
    return w0, w1, a


def _worst_sequences(narrow, act_signed, n):
    """(w0, w1, a) rows of n equal terms: each lane at each end of its range, both orders."""
    wlo, whi = weight_bounds(narrow)
    kinds = [True, False] if act_signed is None else [act_signed]
    rows = []
    for s in kinds:
        for a in act_range(8, s):
            for w0 in (wlo, whi):
                for w1 in (wlo, whi):
                    rows.append((w0, w1, a))
    w = np.array(rows)
    return (np.repeat(w[:, :1], n, axis=1), np.repeat(w[:, 1:2], n, axis=1),
            np.repeat(w[:, 2:], n, axis=1))


@pytest.mark.parametrize("dsp", DSPS, ids=lambda d: d.name)
@pytest.mark.parametrize("narrow", [False, True], ids=["w-8..7", "w-7..7"])
@pytest.mark.parametrize("act_signed", [None, True, False], ids=["both", "int8", "uint8"])
def test_sums_of_n_terms_are_exact_and_n_plus_one_breaks(dsp, narrow, act_signed):
    p = packing_for(dsp, narrow, act_signed)
    n = p.terms
    # The worst case for each lane (all N terms at one end) is exact...
    w0, w1, a = _worst_sequences(narrow, act_signed, n)
    lo, hi = split_lanes(accumulate(lane_products(w0, w1, a, p.k, dsp), dsp), p.k, p.lane_bits)
    assert np.array_equal(lo, (w0 * a).sum(1)) and np.array_equal(hi, (w1 * a).sum(1))
    # ...random sums of N terms near the extremes too...
    rng = np.random.default_rng(n)
    w0r, w1r, ar = _extreme_terms(rng, 300, n, narrow, act_signed)
    lo, hi = split_lanes(accumulate(lane_products(w0r, w1r, ar, p.k, dsp), dsp), p.k, p.lane_bits)
    assert np.array_equal(lo, (w0r * ar).sum(1)) and np.array_equal(hi, (w1r * ar).sum(1))
    # ...and one more extreme term breaks the low lane: the bound is tight.
    w0, w1, a = _worst_sequences(narrow, act_signed, n + 1)
    lo, _ = split_lanes(accumulate(lane_products(w0, w1, a, p.k, dsp), dsp), p.k, p.lane_bits)
    assert not np.array_equal(lo, (w0 * a).sum(1))


@pytest.mark.parametrize("dsp", DSPS, ids=lambda d: d.name)
def test_lane_split_is_exact_over_every_low_sum(dsp):
    """The split depends on the low sum S0 only through its borrow: every S0 the bound allows
    (all 2**k values of the k-bit lane), with S1 at its ends and around 0, splits exactly."""
    p = packing_for(dsp)
    s0 = np.arange(-(1 << (p.k - 1)), 1 << (p.k - 1), dtype=np.int64)
    half = 1 << (p.lane_bits - 1)
    for s1 in (-half, -half + 1, -1, 0, 1, half - 2, half - 1):
        lo, hi = split_lanes(accumulate(((s1 << p.k) + s0)[:, None], dsp), p.k, p.lane_bits)
        assert np.array_equal(lo, s0) and np.all(hi == s1)
    # and every S1 of the lane with S0 at its ends and around 0
    s1 = np.arange(-half, half, dtype=np.int64)
    for s0 in (-(1 << (p.k - 1)), -1, 0, 1, (1 << (p.k - 1)) - 1):
        lo, hi = split_lanes(accumulate(((s1 << p.k) + s0)[:, None], dsp), p.k, p.lane_bits)
        assert np.all(lo == s0) and np.array_equal(hi, s1)


def test_max_terms_counts_the_binding_lane():
    assert max_terms(22, 22, False, None) == 1028
    assert max_terms(22, 12, False, None) == 1   # a 12-bit lane holds exactly one product
    assert max_terms(22, 11, False, None) == 0



@pytest.mark.parametrize("act_signed", [None, True, False], ids=["both", "int8", "uint8"])
def test_lane_sums_fit_agrees_with_the_bound_and_brute_force(act_signed):
    p = packing_for(DSP48E2, False, act_signed)
    wlo, _ = weight_bounds(False)
    worst = np.full(p.terms, wlo)
    assert lane_sums_fit(worst, worst, p.k, p.lane_bits, act_signed)
    worst1 = np.full(p.terms + 1, wlo)
    assert not lane_sums_fit(worst1, np.zeros_like(worst1), p.k, p.lane_bits, act_signed)
    assert not lane_sums_fit(np.zeros_like(worst1), worst1, p.k, p.lane_bits, act_signed)
    # Brute force on narrow lanes (so sequences of 6 terms can fail): sums are linear in each
    # activation, so their extremes are at the activation range's ends, term by term.
    kinds = [True, False] if act_signed is None else [act_signed]
    ends = [min(act_range(8, s)[0] for s in kinds), max(act_range(8, s)[1] for s in kinds)]
    grid = np.array(np.meshgrid(*[ends] * 6, indexing="ij")).reshape(6, -1).T   # 64 x 6
    rng = np.random.default_rng(5)
    w0, w1 = rng.integers(-8, 8, (2, 400, 6))
    s0, s1 = w0 @ grid.T, w1 @ grid.T                                            # 400 x 64
    mixed = 0
    for bits in range(11, 16):
        half = 1 << (bits - 1)
        want = ((s0 >= -half) & (s0 < half)).all(1) & ((s1 >= -half) & (s1 < half)).all(1)
        assert np.array_equal(lane_sums_fit(w0, w1, bits, bits, act_signed), want)
        mixed += want.any() and not want.all()
    assert mixed  # some lane width splits the sequences into fitting and not


# -- the unit, simulated --------------------------------------------------------------------------
def _sequences(rng, dsp, count):
    """Sum sequences (w0, w1, a, a_signed arrays): corners, random lengths, one at the bound."""
    p = packing_for(dsp)
    seqs = []
    wlo, whi = weight_bounds(False)
    corners = [(w0, w1, a, s) for w0 in (wlo, -1, 0, 1, whi) for w1 in (wlo, -1, 0, whi)
               for a, s in ((-128, 1), (-1, 1), (0, 1), (127, 1), (0, 0), (1, 0), (255, 0))]
    for c in corners:  # single products: every corner on its own
        seqs.append(tuple(np.array([v]) for v in c))
    for _ in range(count):
        n = int(rng.integers(1, 24))
        signed = rng.random(n) < 0.5
        a = np.where(signed, rng.integers(-128, 128, n), rng.integers(0, 256, n))
        seqs.append((rng.integers(wlo, whi + 1, n), rng.integers(wlo, whi + 1, n), a,
                     signed.astype(int)))
    # N terms at the bound: the low lane at its most negative product (-8 * 255), the high -7 * 255.
    n = p.terms
    seqs.append((np.full(n, wlo), np.full(n, -7), np.full(n, 255), np.zeros(n, int)))
    return seqs


def _expected(seq, dsp):
    w0, w1, a, _ = seq
    p = packing_for(dsp)
    lo, hi = split_lanes(accumulate(lane_products(w0, w1, a, p.k, dsp), dsp), p.k, p.lane_bits)
    assert lo == (w0 * a).sum() and hi == (w1 * a).sum()  # the model agrees with plain sums
    return int(lo), int(hi)


def _run(dut, beats, cycles):
    """Drive beats (dicts, or None for an idle cycle; "clear" key pulses clear); collect outputs."""
    got = []

    async def bench(ctx):
        for t in range(cycles):
            beat = beats[t] if t < len(beats) else None
            ctx.set(dut.i.valid, beat is not None and "w0" in beat)
            ctx.set(dut.clear, bool(beat and beat.get("clear")))
            if beat is not None and "w0" in beat:
                for f in ("w0", "w1", "a", "a_signed", "first", "last"):
                    ctx.set(getattr(dut.i.payload, f), beat[f])
            await ctx.tick()
            if ctx.get(dut.o.valid):
                got.append((t, ctx.get(dut.o.payload.lo), ctx.get(dut.o.payload.hi)))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return got


def _beats(seq):
    w0, w1, a, s = seq
    n = len(a)
    return [{"w0": int(w0[i]), "w1": int(w1[i]), "a": int(a[i]) & 0xFF, "a_signed": int(s[i]),
             "first": i == 0, "last": i == n - 1} for i in range(n)]


@pytest.mark.parametrize("dsp", DSPS, ids=lambda d: d.name)
def test_packed_mac_matches_the_model(dsp):
    """Back-to-back sums (each `first` loads P), idle gaps between some, and one sum of N terms;
    each result LATENCY cycles after its `last` beat, bit for bit."""
    rng = np.random.default_rng(7)
    seqs = _sequences(rng, dsp, 60)
    beats, want = [], []
    for seq in seqs:
        beats += _beats(seq)
        want.append((len(beats) - 1 + LATENCY - 1, *_expected(seq, dsp)))
        if rng.random() < 0.3:
            beats += [None] * int(rng.integers(1, 4))
    got = _run(PackedMac(dsp), beats, len(beats) + LATENCY + 2)
    assert got == want


def test_packed_mac_clear_and_idle_beats():
    """`clear` zeroes P and drops the beat entering it; later beats without `first` then sum from
    zero. Idle cycles inside a sum leave P alone."""
    dsp = DSP48E2
    b = _beats((np.array([3, -8, 7]), np.array([-8, 5, 7]), np.array([200, 255, 1]),
                np.zeros(3, int)))
    # [b0 b1] idle b2(last): idle cycle inside the sum
    beats = [b[0], b[1], None, b[2]]
    # c0 (first) c1 ... clear while c1 sits in M: P = 0 and c1 dropped; then c2 (last) alone
    c = _beats((np.array([5, 6, -3]), np.array([1, 2, 4]), np.array([-100, 50, 77]),
                np.ones(3, int)))
    c2 = dict(c[2], first=False)
    beats += [c[0], c[1], None, {"clear": True}, c2]
    got = _run(PackedMac(dsp), beats, len(beats) + LATENCY + 2)
    want0 = (3 * 200 - 8 * 255 + 7, -8 * 200 + 5 * 255 + 7)
    assert [g[1:] for g in got] == [want0, (-3 * 77, 4 * 77)]


# -- lint and mapping -----------------------------------------------------------------------------
# Rules Amaranth's Verilog always trips (as in `hwconv generate`'s lint report): init values on
# registers it also resets, its debug aliases of struct fields, its own sign extensions.
AMARANTH_STYLE_RULES = {"PROCASSINIT", "UNUSEDSIGNAL", "WIDTHEXPAND"}


@pytest.mark.skipif(not verilator_env(), reason="verilator not installed")
@pytest.mark.parametrize("dsp", DSPS, ids=lambda d: d.name)
def test_verilator_lint_has_no_errors_and_only_amaranth_style_warnings(tmp_path, dsp):
    env = verilator_env()
    exe = shutil.which("verilator", path=env["PATH"])
    (tmp_path / "packed_mac.v").write_text(to_verilog(PackedMac(dsp), "packed_mac"))
    proc = subprocess.run([exe, "--lint-only", "-Wall", "-Wno-fatal", "--top-module",
                           "packed_mac", "packed_mac.v"], cwd=tmp_path,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    rules = set(re.findall(r"^%Warning-(\w+)", out, flags=re.M))
    assert proc.returncode == 0 and "%Error" not in out, out
    assert rules <= AMARANTH_STYLE_RULES, out


def _dsp_cells(tmp_path, dsp, unit=None):
    """synth_xilinx for the DSP's family as hwconv's resource report runs it; the netlist's cell
    counts and its DSP cells' parameters."""
    unit = PackedMac(dsp) if unit is None else unit
    (tmp_path / "design.v").write_text(to_verilog(unit, "packed_mac"))
    argv, _ = resources.yosys_command()
    script = ("read_verilog design.v; rename -hide w:*; "
              f"synth_xilinx -flatten -family {dsp.family} -noiopad -noclkbuf -top packed_mac; "
              "tee -q -o stat.json stat -json; write_json net.json")
    subprocess.run([*argv, "-q", "-p", script], cwd=tmp_path, check=True, timeout=600,
                   capture_output=True)
    cells = resources.parse_stat_json((tmp_path / "stat.json").read_text(), "packed_mac")
    net = json.loads((tmp_path / "net.json").read_text())
    dsps = [c for mod in net["modules"].values() for c in mod["cells"].values()
            if c["type"] == dsp.name]
    params = [{k: (int(v, 2) if set(v) <= {"0", "1"} else v) for k, v in c["parameters"].items()}
              for c in dsps]
    return cells, params


@needs_yosys
def test_dsp48e1_maps_one_dsp_with_every_pipeline_register(tmp_path):
    cells, params = _dsp_cells(tmp_path, DSP48E1)
    usage = resources.usage_from_cells(cells)
    assert usage.dsp == 1 and cells.get("DSP48E1") == 1 and usage.other == {}
    (p,) = params
    assert (p["AREG"], p["BREG"], p["MREG"], p["PREG"]) == (1, 1, 1, 1)
    assert p["USE_MULT"] == "MULTIPLY" and p["USE_DPORT"] == "FALSE"
    # Outside the DSP: the two lanes' output registers (2 x 20), the control pipeline, the
    # high lane's correction (an increment) and the packing's 5-bit decrement.
    assert usage.ff <= 2 * 20 + 12 and usage.lut_logic <= 16, cells


@pytest.fixture(scope="module")
def e2_dsps(tmp_path_factory):
    return _dsp_cells(tmp_path_factory.mktemp("e2"), DSP48E2)


@pytest.mark.slow
@needs_yosys
@pytest.mark.xfail(strict=True, reason="yosys 0.70's xilinx_dsp packs registers, pre- and post-"
                   "adders for family xc7 only (techlibs/xilinx/xilinx_dsp.cc); a DSP48E2 gets "
                   "the multiplier alone, and Vivado pulls the registers in (UG901)")
def test_dsp48e2_maps_one_dsp_with_every_pipeline_register(e2_dsps):
    cells, params = e2_dsps
    assert cells.get("DSP48E2") == 1 and len(params) == 1
    assert params[0]["USE_MULT"] == "MULTIPLY"
    p = params[0]
    assert (p["AREG"], p["BREG"], p["MREG"], p["PREG"]) == (1, 1, 1, 1)


@pytest.mark.slow
@needs_yosys
def test_dsp48e2_maps_one_dsp_for_both_products(e2_dsps):
    """What yosys does map on UltraScale+: the 27 x 18 multiply of both products, one DSP48E2."""
    cells, params = e2_dsps
    assert cells.get("DSP48E2") == 1 and len(params) == 1
    assert params[0]["USE_MULT"] == "MULTIPLY" and params[0]["AMULTSEL"] == "A"


# -- the column: one activation, 2 x dsps channels ------------------------------------------------
def test_packed_mac_column_matches_the_model():
    """4 DSPs, 8 channels: random sums (mixed int8/uint8 beats, idle gaps), every channel exact."""
    dsp, dsps = DSP48E2, 4
    dut = PackedMacColumn(dsps, dsp)
    p = dut.packing
    rng = np.random.default_rng(11)
    beats, want = [], []
    for _ in range(25):
        n = int(rng.integers(1, 30))
        w = rng.integers(-8, 8, (n, 2 * dsps))
        signed = rng.random(n) < 0.5
        a = np.where(signed, rng.integers(-128, 128, n), rng.integers(0, 256, n))
        prods = lane_products(w[:, 0::2], w[:, 1::2], a[:, None], p.k, dsp)
        lo, hi = split_lanes(accumulate(prods, dsp, axis=0), p.k, p.lane_bits)
        sums = (w * a[:, None]).sum(0)
        assert np.array_equal(lo, sums[0::2]) and np.array_equal(hi, sums[1::2])
        for t in range(n):
            beats.append({"w": [int(v) for v in w[t]], "a": int(a[t]) & 0xFF,
                          "a_signed": int(signed[t]), "first": t == 0, "last": t == n - 1})
        want.append((len(beats) - 1 + LATENCY - 1, [int(v) for v in sums]))
        beats += [None] * int(rng.integers(0, 3))
    got = []

    async def bench(ctx):
        for t in range(len(beats) + LATENCY + 2):
            beat = beats[t] if t < len(beats) else None
            ctx.set(dut.i.valid, beat is not None)
            if beat is not None:
                for c, v in enumerate(beat["w"]):
                    ctx.set(dut.i.payload.w[c], v)
                for f in ("a", "a_signed", "first", "last"):
                    ctx.set(getattr(dut.i.payload, f), beat[f])
            await ctx.tick()
            if ctx.get(dut.o.valid):
                got.append((t, [ctx.get(dut.o.payload[c]) for c in range(2 * dsps)]))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert got == want


def test_packed_mac_column_refuses_no_dsps():
    with pytest.raises(ValueError, match="dsps=0"):
        PackedMacColumn(0)


@pytest.fixture(scope="module")
def column_dsps(tmp_path_factory):
    return _dsp_cells(tmp_path_factory.mktemp("column"), DSP48E1, PackedMacColumn(4, DSP48E1))


@pytest.mark.slow
@needs_yosys
def test_packed_mac_column_maps_one_dsp48e1_per_two_channels(column_dsps):
    cells, params = column_dsps
    assert cells.get("DSP48E1") == 4 and len(params) == 4
    assert all((p["AREG"], p["BREG"], p["MREG"]) == (1, 1, 1) for p in params)
    assert any(p["PREG"] == 1 for p in params)


@pytest.mark.slow
@needs_yosys
@pytest.mark.xfail(strict=True, reason="yosys 0.70 packs the accumulator (post-adder + PREG) into "
                   "the first DSP only when several DSPs share a B register whose upper bits "
                   "repeat one flip-flop (the activation's sign extension); see "
                   "docs/notes/packed_mac.md")
def test_packed_mac_column_keeps_every_accumulator_in_its_dsp(column_dsps):
    _, params = column_dsps
    assert all(p["PREG"] == 1 for p in params)
