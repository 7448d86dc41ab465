"""``check --timing --format html`` rendered from synthetic timing results (no guest run):
the histograms hold every shown measurement, t and the crops are timing.py's, the verdict
and the threshold are stated (headless Chromium: tests/integration/test_html_timing.py)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser

import pytest

from leakdbt.leakage.html import timing_html
from leakdbt.leakage.html_timing import (
    HEIGHT,
    LEFT,
    MIN_SLOTS,
    RIGHT,
    histogram,
    quantity_view,
)
from leakdbt.leakage.timing import (
    COST_MODEL,
    CROP_PERCENTILES,
    FIXED,
    HOST_TIME,
    RANDOM,
    ModeTiming,
    TimingReport,
    compare,
    welch_t,
)

# -- a small reader of the page ---------------------------------------------------------------


@dataclass
class Section:
    """One ``section.quantity``: its attributes, its SVG's, its bars and its text."""

    attrs: dict[str, str]
    svg: dict[str, str] = field(default_factory=dict)
    bars: list[dict[str, str]] = field(default_factory=list)
    text: str = ""

    def bars_of(self, cls: str) -> list[dict[str, str]]:
        return [b for b in self.bars if b["class"] == f"bar {cls}"]

    def count(self, cls: str) -> int:
        return sum(int(b["data-count"]) for b in self.bars_of(cls))


class Page(HTMLParser):
    """The quantity sections and the mode columns (attributes and text) of a timing page."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.sections: list[Section] = []
        self.modes: list[dict[str, str]] = []
        self.verdicts: list[str] = []  # each mode's verdict line
        self._open: Section | None = None
        self._verdict: list[str] | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        classes = a.get("class", "").split()
        if tag == "section" and "quantity" in classes:
            self._open = Section(a)
            self.sections.append(self._open)
        elif tag == "div" and "mode" in classes:
            self.modes.append(a)
        elif tag == "p" and "verdict" in classes:
            self._verdict = []
        elif self._open is not None and tag == "svg":
            self._open.svg = a
        elif self._open is not None and tag == "rect":
            self._open.bars.append(a)

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self._open = None
        elif tag == "p" and self._verdict is not None:
            self.verdicts.append("".join(self._verdict))
            self._verdict = None

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._open.text += data
        if self._verdict is not None:
            self._verdict.append(data)

    def section(self, mode: str, quantity: str) -> Section:
        (s,) = [s for s in self.sections
                if s.attrs["data-mode"] == mode and s.attrs["data-quantity"] == quantity]
        return s


# -- synthetic results -------------------------------------------------------------------------

# One slow outlier hides the host-time difference; dudect's crop at 75% finds it (the case
# worked by hand in tests/unit/leakage/test_timing.py): t = -9.5 / sqrt(0.05).
HOST_FIXED = [10.0, 11.0, 10.0, 11.0, 10.0, 11.0, 1000.0]
HOST_RANDOM = [20.0, 21.0, 20.0, 21.0, 20.0, 21.0, 20.0]
COST_FIXED = [100, 100, 100, 100, 100, 100, 100]
COST_RANDOM = [120, 130, 125, 120, 128, 101, 130]


def _mode(name: str, host: tuple[list[float], list[float]],
          cost: tuple[list[float], list[float]]) -> ModeTiming:
    return ModeTiming(name, {FIXED: len(host[0]), RANDOM: len(host[1])},
                      compare(HOST_TIME, "µs", *host, CROP_PERCENTILES),
                      compare(COST_MODEL, "cycles", *cost),
                      {FIXED: (100, 100), RANDOM: (101, 130)})


def _report(*modes: ModeTiming) -> TimingReport:
    report = TimingReport("prog", ("a",), "c.toml", "intel-skylake", 7, 14, "modexp",
                          {"exponent": "00" * 8}, {"exponent": "all zero bytes"})
    report.modes += modes
    return report


@pytest.fixture(scope="module")
def leaky() -> TimingReport:
    constant = [500.0] * 7
    return _report(_mode("original", (HOST_FIXED, HOST_RANDOM), (COST_FIXED, COST_RANDOM)),
                   _mode("hardened", (HOST_RANDOM, HOST_RANDOM), (constant, constant)))


@pytest.fixture(scope="module")
def page(leaky: TimingReport) -> Page:
    return Page(timing_html(leaky))


def test_host_time_t_is_the_deciding_crops(leaky: TimingReport, page: Page) -> None:
    q = leaky.modes[0].host_time
    assert q.crop == 0.75 and q.t == pytest.approx(-9.5 / math.sqrt(0.05))
    s = page.section("original", HOST_TIME)
    assert s.attrs["data-t"] == repr(q.t)  # exactly what the JSON report writes
    assert s.attrs["data-leak"] == "true"
    assert "t = \u221242.49, LEAK" in s.text
    assert "|t| = 42.49 > 4.5: the classes differ" in s.text
    assert "decided by the crop below the 75.00% percentile" in s.text
    assert welch_t(HOST_FIXED, HOST_RANDOM) == pytest.approx(0.9298, abs=1e-4)
    assert "uncropped t = +0.93)" in s.text  # the outlier makes fixed the slower class


def test_host_time_histogram_shows_what_the_crop_kept(page: Page) -> None:
    s = page.section("original", HOST_TIME)
    bins = int(s.svg["data-bins"])
    assert bins == 11  # whole numbers 10..20 after the crop: one value per bin
    assert len(s.bars_of(FIXED)) == len(s.bars_of(RANDOM)) == bins
    # the crop below 21 keeps the six fast fixed values and the four 20s of random
    assert (s.count(FIXED), s.count(RANDOM)) == (6, 4)
    assert "4 slower measurement(s), at or above 21 µs, not shown" in s.text
    assert "fixed (6 shown)" in s.text and "random (4 shown)" in s.text
    counts = {int(b["data-bin"]): int(b["data-count"]) for b in s.bars_of(FIXED)}
    assert counts[0] == 3 and counts[1] == 3  # 10 three times, 11 three times
    assert {int(b["data-bin"]): int(b["data-count"]) for b in s.bars_of(RANDOM)
            if b["data-count"] != "0"} == {10: 4}  # 20 is bin 10


def test_the_crop_table_lists_every_crop(leaky: TimingReport) -> None:
    view = quantity_view(leaky.modes[0].host_time)
    assert len(view.crops) == 1 + len(CROP_PERCENTILES)
    assert view.crops[0].t == pytest.approx(welch_t(HOST_FIXED, HOST_RANDOM))
    assert view.crops[1].t is None  # the 50% crop leaves random nothing: skipped
    (deciding,) = [c for c in view.crops if c.decides]
    assert deciding.t == leaky.modes[0].host_time.t and deciding.kept == {FIXED: 6, RANDOM: 4}
    assert max(abs(c.t) for c in view.crops if c.t is not None) == abs(deciding.t)


def test_cost_model_histogram_holds_every_measurement(leaky: TimingReport, page: Page
                                                      ) -> None:
    q = leaky.modes[0].cost_model
    s = page.section("original", COST_MODEL)
    assert s.attrs["data-t"] == repr(q.t) and s.attrs["data-leak"] == "true"
    # whole numbers 100..130: 31 values in bins of 2, 16 bins
    assert s.svg["data-bins"] == "16"
    assert len(s.bars_of(FIXED)) == len(s.bars_of(RANDOM)) == 16
    assert (s.count(FIXED), s.count(RANDOM)) == (7, 7)
    assert s.bars_of(FIXED)[0]["data-count"] == "7"
    assert float(s.bars_of(FIXED)[0]["height"]) == HEIGHT - 12 - 46  # the tallest share
    assert "not measured: cost model is leakdbt's cycle estimate" in s.text
    assert "dropped" not in s.text and "crop" not in s.text  # no crops for the model


def test_verdicts_and_both_modes_side_by_side(page: Page) -> None:
    assert [m["data-mode"] for m in page.modes] == ["original", "hardened"]
    assert [m["data-leak"] for m in page.modes] == ["true", "false"]
    assert page.verdicts[0] == ("verdict: LEAK: host time and cost model differ between "
                                "fixed and random secrets")
    assert page.verdicts[1] == ("verdict: no timing difference shown (|t| \u2264 4.5 for "
                                "both quantities)")
    s = page.section("hardened", COST_MODEL)
    assert s.attrs["data-t"] == "0.0" and "|t| = 0.00 \u2264 4.5" in s.text


def test_a_constant_quantity_is_one_narrow_bin(page: Page) -> None:
    s = page.section("hardened", COST_MODEL)
    assert s.svg["data-bins"] == "1"
    (fixed,), (random_,) = s.bars_of(FIXED), s.bars_of(RANDOM)
    assert fixed["data-count"] == random_["data-count"] == "7"
    plot_width = 560 - LEFT - RIGHT
    assert float(fixed["width"]) + float(random_["width"]) <= plot_width / MIN_SLOTS


def test_infinite_t_is_spelled_like_the_json() -> None:
    mode = _mode("original", (HOST_RANDOM, HOST_RANDOM), ([5] * 7, [6] * 7))
    assert mode.cost_model.t == -math.inf
    s = Page(timing_html(_report(mode))).section("original", COST_MODEL)
    assert s.attrs["data-t"] == "-inf" and "t = \u2212inf, LEAK" in s.text


def test_the_page_says_what_was_measured_and_needs_no_network(leaky: TimingReport) -> None:
    html = timing_html(leaky)
    assert html.startswith("<!DOCTYPE html>")
    assert "<script" not in html and "<link" not in html
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)
    assert "not the native program&#39;s timing" in html  # autoescaped
    assert "a model, not a measurement" in html
    assert "<code>exponent=0000000000000000</code> (all zero bytes)" in html
    assert "repeat(2, minmax(0, 1fr))" in html
    one = timing_html(_report(leaky.modes[0]))
    assert "repeat(1, minmax(0, 1fr))" in one and 'data-mode="hardened"' not in one


def test_histogram_bins_fractional_values() -> None:
    h = histogram({FIXED: [0.5, 0.75, 1.0], RANDOM: [2.0, 3.25]}, "µs")
    assert h.bins == 24 and h.shown == {FIXED: 3, RANDOM: 2}
    by_bin = {(b.cls, b.bin): b.count for b in h.bars if b.count}
    # width (3.25 - 0.5) / 24; the largest value falls in the last bin
    assert by_bin == {(FIXED, 0): 1, (FIXED, 2): 1, (FIXED, 4): 1, (RANDOM, 13): 1,
                      (RANDOM, 23): 1}
    assert [label for _, label in h.x_ticks][0] == "0.5"
