"""The statistics of ``leakdbt check --timing`` against hand-computed values, the classes'
inputs, and the reports (no guest runs: see tests/integration/test_check_timing.py)."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from leakdbt.contract import Contract, load
from leakdbt.leakage.observe import Trace
from leakdbt.leakage.timing import (
    CROP_PERCENTILES,
    FIXED,
    RANDOM,
    THRESHOLD,
    TimingReport,
    _analyse,
    compare,
    crop,
    fixed_values,
    mean,
    percentile,
    timing_inputs,
    to_json,
    to_text,
    variance,
    welch_t,
)
from leakdbt.leakage.trials import TrialInput, TrialRun
from tests.conftest import REPO

# -- Welch's t, by hand ----------------------------------------------------------------------


def test_mean_and_sample_variance() -> None:
    assert mean([1, 2, 3, 4]) == 2.5
    assert variance([1, 2, 3, 4]) == pytest.approx(5 / 3)  # (2.25+0.25+0.25+2.25) / 3
    assert variance([5, 5, 5, 9]) == pytest.approx(4.0)  # (1+1+1+9) / 3
    assert variance([0.1, 0.1, 0.1]) == 0.0  # exactly, not a rounding residue
    with pytest.raises(ValueError):
        variance([1.0])


def test_welch_t_equal_sizes() -> None:
    # means 2.5 and 5, variances 5/3 and 20/3: se^2 = 5/12 + 20/12 = 25/12,
    # t = -2.5 / sqrt(25/12) = -sqrt(3)
    assert welch_t([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(-math.sqrt(3))
    assert welch_t([1, 2, 3, 4], [2, 4, 6, 8]) == pytest.approx(-1.7320508075688772)


def test_welch_t_unequal_sizes_and_variances() -> None:
    # means 2 and 6, variances 1 and 4: se^2 = 1/3 + 4/4 = 4/3, t = -4 / sqrt(4/3) = -2 sqrt(3)
    assert welch_t([1, 2, 3], [5, 5, 5, 9]) == pytest.approx(-3.4641016151377544)


def test_welch_t_one_class_constant_uses_the_formula() -> None:
    # var 0 and 5/3: se^2 = 0 + (5/3)/4 = 5/12, t = 0.5 / sqrt(5/12) = sqrt(0.6)
    assert welch_t([3, 3, 3, 3], [1, 2, 3, 4]) == pytest.approx(math.sqrt(0.6))
    assert welch_t([1, 2, 3, 4], [3, 3, 3, 3]) == pytest.approx(-math.sqrt(0.6))


def test_welch_t_both_constant() -> None:
    assert welch_t([7, 7, 7], [7, 7, 7, 7]) == 0.0  # identical: no difference
    assert welch_t([0.1] * 5, [0.1] * 9) == 0.0
    assert welch_t([8, 8], [7, 7, 7]) == math.inf  # different means, no noise: certain
    assert welch_t([7, 7], [8, 8, 8]) == -math.inf
    assert abs(welch_t([8, 8], [7, 7])) > THRESHOLD


def test_welch_t_symmetries() -> None:
    a, b = [3.0, 1.5, 4.0, 1.0, 5.5], [2.0, 6.0, 5.0, 3.5, 5.0, 8.0]
    t = welch_t(a, b)
    assert welch_t(b, a) == pytest.approx(-t)
    assert welch_t([10 * v + 3 for v in a], [10 * v + 3 for v in b]) == pytest.approx(t)


# -- cropping ----------------------------------------------------------------------------------


def test_crop_percentiles_are_dudects() -> None:
    assert CROP_PERCENTILES[:3] == (0.5, 0.75, 0.875)
    assert len(CROP_PERCENTILES) == 10 and CROP_PERCENTILES[-1] == pytest.approx(0.9990234375)


def test_percentile_and_crop() -> None:
    values = [5, 1, 4, 2, 3]
    assert percentile(values, 0.5) == 3  # sorted[int(2.5)]
    assert percentile(values, 0.999) == 5  # sorted[4]
    assert percentile(values, 0.0) == 1
    assert crop(values, 3) == [1, 2]  # strictly below, order kept
    assert crop(values, 100) == values


def test_compare_takes_the_largest_crop() -> None:
    fixed = [10, 11, 10, 11, 10, 11, 1000]  # one outlier hides the difference
    random_ = [20, 21, 20, 21, 20, 21, 20]
    q = compare("host time", "µs", fixed, random_, CROP_PERCENTILES)
    assert q.t_uncropped == pytest.approx(welch_t(fixed, random_))
    assert abs(q.t_uncropped) < THRESHOLD
    # pooled, sorted: 10 10 10 11 11 11 20 20 20 20 21 21 21 1000.  p = 0.5: threshold 20
    # leaves no random value (skipped); p = 0.75: threshold 21 keeps the six fixed values
    # (mean 10.5, var 0.3) and the four 20s (var 0): t = -9.5 / sqrt(0.3 / 6)
    assert q.crop == 0.75
    assert q.t == pytest.approx(-9.5 / math.sqrt(0.05))
    assert q.leak
    assert (q.fixed.n, q.random.n) == (7, 7)  # the statistics shown are uncropped


def test_compare_without_crops() -> None:
    q = compare("cost model", "cycles", [5, 5, 5], [5, 5, 5])
    assert (q.t, q.t_uncropped, q.crop, q.leak) == (0.0, 0.0, None, False)
    assert (q.fixed.mean, q.fixed.stdev) == (5.0, 0.0)


# -- the classes -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def contract() -> Contract:
    return load(REPO / "contracts" / "ct_modexp.toml")


def test_fixed_class_is_zero_bytes_or_the_first_given_value(contract: Contract) -> None:
    values, origin = fixed_values(contract)
    assert values == (("exponent", bytes(8)),)
    assert origin == {"exponent": "all zero bytes"}
    given = replace(contract, check=replace(contract.check, values=(
        ("exponent", (b"\x01" * 8, b"\x02" * 8)),)))
    values, origin = fixed_values(given)
    assert values == (("exponent", b"\x01" * 8),)
    assert origin == {"exponent": "check.values[0]"}


def test_timing_inputs(contract: Contract) -> None:
    inputs = timing_inputs(contract, 31, seed=5)
    classes = [c for c, _ in inputs]
    assert classes.count(FIXED) == 15 and classes.count(RANDOM) == 16
    assert [t.index for _, t in inputs] == list(range(31))
    assert {t.values for c, t in inputs if c == FIXED} == {(("exponent", bytes(8)),)}
    randoms = [t.values for c, t in inputs if c == RANDOM]
    assert len(set(randoms)) == 16  # fresh for each measurement
    assert timing_inputs(contract, 31, seed=5) == inputs  # reproducible
    assert [c for c, _ in timing_inputs(contract, 31, seed=6)] != classes  # shuffled by seed
    assert classes != sorted(classes)  # interleaved, not in blocks


# -- analysis and reports ---------------------------------------------------------------------


def _run(index: int, cost: int, ns: int) -> TrialRun:
    trace = Trace(cost=cost, scope_ns=ns, instructions=cost)
    return TrialRun(TrialInput(index, ()), trace, 0, b"", b"")


def _report() -> TimingReport:
    leaky = [(FIXED, _run(0, 100, 5000)), (RANDOM, _run(1, 120, 5100)),
             (FIXED, _run(2, 100, 5050)), (RANDOM, _run(3, 130, 5000)),
             (RANDOM, _run(4, 125, 5200)), (FIXED, _run(5, 100, 4900))]
    constant = [(c, _run(r.trial.index, 500, r.trace.scope_ns)) for c, r in leaky]
    report = TimingReport("prog", ("a",), "c.toml", "intel-skylake", 7, 6, "f",
                          {"k": "00"}, {"k": "all zero bytes"})
    report.modes += [_analyse("original", leaky), _analyse("hardened", constant)]
    return report


def test_analyse_counts_and_statistics() -> None:
    original, hardened = _report().modes
    assert original.measurements == {FIXED: 3, RANDOM: 3}
    assert original.instructions == {FIXED: (100, 100), RANDOM: (120, 130)}
    # fixed constant 100; random 120, 130, 125: mean 125, var 25, t = -25 / sqrt(25/3)
    assert original.cost_model.t == pytest.approx(-25 / math.sqrt(25 / 3))
    assert original.cost_model.leak and original.leak
    assert original.host_time.fixed.mean == pytest.approx(14950 / 3 / 1000)  # µs
    assert hardened.cost_model.t == 0.0 and not hardened.cost_model.leak


def test_text_report_says_what_is_measured() -> None:
    text = to_text(_report())
    assert "not the native program's timing" in text
    assert "a model, not a measurement" in text
    assert "|t| > 4.5" in text
    assert "original: 3 fixed, 3 random measurements" in text
    assert "k=00 (all zero bytes)" in text
    assert "timing leak found" in text


def test_json_report_has_no_nan_and_names_infinity() -> None:
    report = _report()
    q = report.modes[0].cost_model
    report.modes[0].cost_model = replace(q, t=-math.inf, t_uncropped=-math.inf)
    data = json.loads(to_json(report))
    assert data["leaks"] is True and data["threshold"] == 4.5
    mode = data["modes"][0]
    assert mode["cost_model"]["t"] == "-inf" and mode["cost_model"]["leak"] is True
    assert mode["measurements"] == {"fixed": 3, "random": 3}
    assert data["modes"][1]["leak"] is False
    assert "not the native program" in data["notes"]["host_time"]
    assert "not a measurement" in data["notes"]["cost_model"]
