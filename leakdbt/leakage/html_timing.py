"""What the HTML page of ``check --timing`` shows: per mode and quantity, the two classes'
histograms (geometry for the inline SVG the template writes), Welch's t of every crop, and
the verdict.

The histograms are drawn by hand, not by a plotting library: two sets of bars on one axis
are a few dozen ``<rect>`` elements, which the template writes with autoescaping; matplotlib
(with numpy) would be a large dependency for that, and its SVG is hard to test element by
element.  The statistics are :mod:`leakdbt.leakage.timing`'s own functions, applied to the
measurements the report keeps (:attr:`Quantity.samples`), so the page's numbers are the
test's numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from leakdbt.leakage.timing import (
    COST_MODEL,
    COST_NOTE,
    CROP_PERCENTILES,
    FIXED,
    HOST_TIME,
    HOST_TIME_NOTE,
    RANDOM,
    THRESHOLD,
    ModeTiming,
    Quantity,
    crop,
    mean,
    percentile,
    welch_t,
)

CLASSES = (FIXED, RANDOM)
CROPS: dict[str, tuple[float, ...]] = {HOST_TIME: CROP_PERCENTILES, COST_MODEL: ()}
"""The crop percentiles timing.py's analysis applies to each quantity."""
MEASURED = {HOST_TIME: "measured: " + HOST_TIME_NOTE, COST_MODEL: "not measured: " + COST_NOTE}
BINS = 24  # at most, per histogram
WIDTH, HEIGHT = 560, 230  # the SVG's viewBox
LEFT, RIGHT, TOP, BOTTOM = 52, 30, 12, 46  # margins around the plot area
X_TICKS = 5
MIN_SLOTS = 9  # fewer bins than this: the axis is widened, so a lone bar stays narrow


@dataclass(frozen=True)
class Bar:
    """One class's bar in one bin: ``count`` of its shown measurements in [lo, hi)."""

    cls: str
    bin: int
    count: int
    lo: float
    hi: float
    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True)
class Histogram:
    """Both classes' shown measurements on one axis; bar heights are the share of each
    class's shown measurements (classes may differ in size)."""

    bins: int
    bars: list[Bar]
    shown: dict[str, int]  # class -> measurements drawn
    means: list[tuple[str, float, float]]  # (class, value, x) of each class's shown mean
    x_ticks: list[tuple[float, str]]  # (x, label)
    y_top: str  # the label of the highest share
    unit: str


@dataclass(frozen=True)
class CropRow:
    """Welch's t of one crop: the measurements strictly below ``limit`` (None: all)."""

    label: str
    limit: float | None
    kept: dict[str, int]
    t: float | None  # None: skipped, a class kept fewer than two
    decides: bool


@dataclass(frozen=True)
class QuantityView:
    """One quantity of one mode."""

    quantity: Quantity
    measured: str  # what it is, honestly
    histogram: Histogram
    crops: list[CropRow]  # empty for an uncropped quantity
    dropped: int  # measurements above the deciding crop, not drawn
    limit: float | None  # the deciding crop's limit

    @property
    def t_text(self) -> str:
        return t_text(self.quantity.t)

    @property
    def abs_t_text(self) -> str:
        return t_text(abs(self.quantity.t)).lstrip("+")

    @property
    def t_exact(self) -> str:
        """The t the verdict used, as the JSON report writes it (repr, "inf", "-inf")."""
        return exact(self.quantity.t)


@dataclass(frozen=True)
class ModeView:
    mode: ModeTiming
    quantities: list[QuantityView]
    verdict: str


def t_text(t: float) -> str:
    """t for people: two decimals, a real minus sign, ±inf spelled out."""
    text = f"{t:+.2f}" if math.isfinite(t) else ("+inf" if t > 0 else "-inf")
    return text.replace("-", "\u2212")


def exact(t: float) -> str:
    return repr(t) if math.isfinite(t) else ("inf" if t > 0 else "-inf")


def number(value: float) -> str:
    """An axis or table number: thousands separated, digits for the magnitude."""
    size = abs(value)
    if size >= 100 or float(value).is_integer():
        return f"{value:,.0f}"
    return f"{value:,.1f}" if size >= 1 else f"{value:.3g}"


def mode_view(m: ModeTiming) -> ModeView:
    quantities = [quantity_view(q) for q in (m.host_time, m.cost_model)]
    leaking = [q.name for q in (m.host_time, m.cost_model) if q.leak]
    if leaking:
        verdict = (f"LEAK: {' and '.join(leaking)} differ{'s' if len(leaking) == 1 else ''} "
                   "between fixed and random secrets")
    else:
        verdict = f"no timing difference shown (|t| \u2264 {THRESHOLD} for both quantities)"
    return ModeView(m, quantities, verdict)


def quantity_view(q: Quantity) -> QuantityView:
    """The crops of ``q`` (as timing.compare computes them) and the histogram of the
    measurements the deciding test used."""
    samples = {cls: list(q.samples.get(cls, ())) for cls in CLASSES}
    pooled = [*samples[FIXED], *samples[RANDOM]]
    percentiles = CROPS.get(q.name, ())
    rows: list[CropRow] = []
    if percentiles and pooled:
        rows.append(CropRow("all measurements", None,
                            {cls: len(v) for cls, v in samples.items()},
                            welch_t(samples[FIXED], samples[RANDOM]), q.crop is None))
        for p in percentiles:
            cut = percentile(pooled, p)
            kept = {cls: crop(v, cut) for cls, v in samples.items()}
            enough = all(len(v) >= 2 for v in kept.values())
            rows.append(CropRow(f"below the {p:.2%} percentile", cut,
                                {cls: len(v) for cls, v in kept.items()},
                                welch_t(kept[FIXED], kept[RANDOM]) if enough else None,
                                p == q.crop))
    limit = percentile(pooled, q.crop) if q.crop is not None and pooled else None
    shown = {cls: crop(v, limit) if limit is not None else v for cls, v in samples.items()}
    dropped = len(pooled) - sum(len(v) for v in shown.values())
    return QuantityView(q, MEASURED.get(q.name, ""), histogram(shown, q.unit), rows,
                        dropped, limit)


def _bins(values: Sequence[float]) -> tuple[float, float, int]:
    """(start, width, count) of at most :data:`BINS` equal bins covering ``values``; whole
    numbers get whole-number bins, so each value falls in one bin of its own kind."""
    lo, hi = min(values), max(values)
    if all(float(v).is_integer() for v in values):
        width = max(1, math.ceil((hi - lo + 1) / BINS))
        return lo, float(width), math.ceil((hi - lo + 1) / width)
    if hi == lo:
        return lo, abs(lo) / 1000 or 1.0, 1
    return lo, (hi - lo) / BINS, BINS


def histogram(shown: dict[str, list[float]], unit: str) -> Histogram:
    """The bars of both classes in shared bins: in each bin, fixed left, random right."""
    pooled = [v for cls in CLASSES for v in shown.get(cls, ())]
    if not pooled:
        return Histogram(0, [], {cls: 0 for cls in CLASSES}, [], [], "0%", unit)
    start, width, count = _bins(pooled)
    counts = {cls: [0] * count for cls in CLASSES}
    for cls in CLASSES:
        for v in shown.get(cls, ()):
            counts[cls][min(int((v - start) / width), count - 1)] += 1
    sizes = {cls: len(shown.get(cls, ())) for cls in CLASSES}
    shares = {cls: [c / sizes[cls] if sizes[cls] else 0.0 for c in counts[cls]]
              for cls in CLASSES}
    top = max(max(s) for s in shares.values())
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    pad = width * max(0, MIN_SLOTS - count) / 2
    lo, hi = start - pad, start + width * count + pad

    def x_of(value: float) -> float:
        return round(LEFT + (value - lo) / (hi - lo) * plot_w, 2)

    bars = []
    for i in range(count):
        x0, x1 = x_of(start + i * width), x_of(start + (i + 1) * width)
        half = (x1 - x0) / 2
        gap = min(1.0, half / 4)  # between neighbouring bins
        for side, cls in enumerate(CLASSES):
            h = shares[cls][i] / top * plot_h if top else 0.0
            bars.append(Bar(cls, i, counts[cls][i], start + i * width,
                            start + (i + 1) * width, round(x0 + side * half + gap * (1 - side), 2),
                            round(TOP + plot_h - h, 2), round(half - gap, 2), round(h, 2)))
    means = [(cls, mean(shown[cls]), x_of(mean(shown[cls]))) for cls in CLASSES if shown.get(cls)]
    return Histogram(count, bars, sizes, means, _ticks(start, width, count, x_of),
                     f"{top:.0%}", unit)


def _ticks(start: float, width: float, count: int, x_of: Callable[[float], float]
           ) -> list[tuple[float, str]]:
    """Up to :data:`X_TICKS` labels: one-value bins (whole numbers) at the centres of evenly
    spaced bins, labelled with their value; wider bins at evenly spaced bin edges."""
    step = max(1, math.ceil((count - 1) / (X_TICKS - 1))) if count > 1 else 1
    if width == 1 and float(start).is_integer():
        picks = sorted({*range(0, count, step), count - 1})
        return [(x_of(start + i + 0.5), number(start + i)) for i in picks]
    picks = sorted({*range(0, count + 1, step), count})
    return [(x_of(start + i * width), number(start + i * width)) for i in picks]
