"""``leakdbt check --timing``: a statistical timing test in the spirit of dudect.

dudect (Reparaz, Balasch, Verbauwhede, "Dude, is my code constant time?", DATE 2017) runs a
program many times with secrets from two classes and tests whether its running time has the
same distribution in both.  Here:

- **classes**: *fixed* — one value for every measurement: per secret, the contract's first
  ``check.values`` entry if it gives one, else all zero bytes; *random* — fresh uniformly
  random bytes for every measurement.  ``N`` measurements, half of each class (the random
  class gets the odd one), run one after another in a class order shuffled by the seed, so
  that drift of the host (frequency scaling, other load) falls on both classes alike.  One
  run before them warms the host up and is discarded.
- **a measurement** is one trial (:meth:`TrialSetup.run`) with only the control-flow
  observer and no full traces — the cheapest observation — which records two quantities:

  * **host time** (``Trace.scope_ns``): host nanoseconds spent while the contract's scope
    (``protect.functions``, or the whole run without them) ran.  This is the time of the
    *emulated* code, hooks included — what a co-tenant of the emulator (another process on
    the machine that runs leakdbt) could measure — **not** the timing of the native
    program on a CPU.  It is noisy, and it depends on the host and on its load.
  * **cost model** (``Trace.cost``): leakdbt's estimate of the cycles spent in scope
    (:data:`leakdbt.leakage.observe.COST`: every instruction 1, a division or square root
    its typical latency).  It is a **model, not a measurement**: deterministic, blind to
    caches, branch prediction and operand-dependent latency (a division costs the same
    whatever its operands; subnormal assists are not counted with the control-flow observer
    alone), so it differs between the classes exactly when the secret changes the
    instructions executed.

- **statistics**: Welch's t statistic (:func:`welch_t`) between the classes, for each
  quantity.  For host time, also dudect's cropping: for each of :data:`CROP_PERCENTILES`,
  the measurements at or above that percentile of all of them (the slowest, where
  interrupts and scheduling pile up) are dropped, and t is computed again; the host-time
  verdict takes the largest |t| of the uncropped test and the cropped ones (as dudect
  does).  A quantity **leaks** when |t| > :data:`THRESHOLD` = 4.5.

Why 4.5: it is dudect's threshold, taken from the TVLA methodology of side-channel
evaluation (Goodwill et al., 2011).  Under the null hypothesis (same distribution in both
classes) t is close to a standard normal for large samples, and P(|t| > 4.5) is about
7e-6, so a false alarm is very unlikely even over the dozen tests a run makes; with few
measurements t has heavier tails (Student's t with ~N-2 degrees of freedom: about 1e-4 for
30 measurements), still small.  A t beyond the threshold says the distributions differ; a t
below it says no difference showed with this many measurements, not that none exists.

Zero variance (common for the cost model, which is deterministic): both classes constant
and equal give t = 0; one class constant and the other not, the usual formula; both
constant with different means, t = ±inf, a leak.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from leakdbt.contract import Contract
from leakdbt.contract.profiles import Profile
from leakdbt.leakage.check import CheckOptions, trial_setup
from leakdbt.leakage.findings import LeakKind
from leakdbt.leakage.trials import Observation, TrialInput, TrialRun, TrialSetup

THRESHOLD = 4.5
"""|t| above this: the classes differ (dudect's and TVLA's threshold; see the module doc)."""
DEFAULT_MEASUREMENTS = 200
MIN_MEASUREMENTS = 10
CROP_PERCENTILES = tuple(1 - 0.5 ** (i + 1) for i in range(10))
"""dudect's crop percentiles, 1 - 0.5^(10 (i+1) / K), with K = 10 (dudect uses K = 100):
0.5, 0.75, 0.875, ..., 0.999."""
FIXED, RANDOM = "fixed", "random"
HOST_TIME, COST_MODEL = "host time", "cost model"


# -- statistics ------------------------------------------------------------------------------


def mean(values: Sequence[float]) -> float:
    """The arithmetic mean (of at least one value)."""
    if min(values) == max(values):
        return float(values[0])  # exact for constant data
    return math.fsum(values) / len(values)


def variance(values: Sequence[float]) -> float:
    """The sample variance (n - 1 in the denominator) of at least two values; exactly 0 for
    constant data."""
    if len(values) < 2:
        raise ValueError("the variance needs at least two values")
    if min(values) == max(values):
        return 0.0
    m = mean(values)
    return math.fsum((v - m) ** 2 for v in values) / (len(values) - 1)


def welch_t(a: Sequence[float], b: Sequence[float]) -> float:
    """Welch's t statistic of two samples (at least two values each)::

        t = (mean(a) - mean(b)) / sqrt(var(a) / len(a) + var(b) / len(b))

    with sample variances.  When both variances are zero: 0 if the means are equal, else
    ±inf (the samples differ with certainty)."""
    ma, mb = mean(a), mean(b)
    se2 = variance(a) / len(a) + variance(b) / len(b)
    if se2 == 0:
        return 0.0 if ma == mb else math.copysign(math.inf, ma - mb)
    return (ma - mb) / math.sqrt(se2)


def percentile(values: Sequence[float], p: float) -> float:
    """dudect's percentile: the value at position ``int(p * n)`` of the sorted values
    (0 <= p < 1)."""
    ordered = sorted(values)
    return ordered[min(int(p * len(ordered)), len(ordered) - 1)]


def crop(values: Sequence[float], threshold: float) -> list[float]:
    """The values below ``threshold`` (dudect keeps those strictly below its percentile)."""
    return [v for v in values if v < threshold]


# -- the test --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassStats:
    """One class's measurements of one quantity."""

    n: int
    mean: float
    stdev: float


@dataclass(frozen=True)
class Quantity:
    """One quantity (host time in µs, or the cost model in cycles) compared between the
    classes.  ``t`` is the statistic the verdict uses: for host time the largest |t| of the
    uncropped test and the cropped ones (``crop`` is then the percentile it came from, None
    for uncropped); ``t_uncropped`` the test on every measurement."""

    name: str
    unit: str
    fixed: ClassStats
    random: ClassStats
    t: float
    t_uncropped: float
    crop: float | None = None
    samples: dict[str, tuple[float, ...]] = field(default_factory=dict, repr=False,
                                                  compare=False)
    """class -> every measurement, in run order: for the HTML report's plots (not in the
    JSON report)."""

    @property
    def leak(self) -> bool:
        return abs(self.t) > THRESHOLD


@dataclass
class ModeTiming:
    """The test of one mode (original or hardened code)."""

    mode: str
    measurements: dict[str, int]  # class -> count
    host_time: Quantity
    cost_model: Quantity
    instructions: dict[str, tuple[int, int]]  # class -> (min, max) instructions in scope
    errors: int = 0  # measurements whose run ended in a guest error (crash, limit)

    @property
    def leak(self) -> bool:
        return self.host_time.leak or self.cost_model.leak


@dataclass
class TimingReport:
    """The outcome of ``leakdbt check --timing``."""

    binary: str
    args: tuple[str, ...]
    contract: str
    profile: str
    seed: int
    measurements: int
    scope: str  # what host time covers
    fixed: dict[str, str]  # secret -> its fixed value (hex)
    fixed_origin: dict[str, str]  # secret -> "check.values[0]" or "all zero bytes"
    modes: list[ModeTiming] = field(default_factory=list)
    threshold: float = THRESHOLD
    seconds: float = 0.0

    @property
    def leaks(self) -> bool:
        return any(m.leak for m in self.modes)


def fixed_values(contract: Contract) -> tuple[tuple[tuple[str, bytes], ...], dict[str, str]]:
    """The fixed class's value of every secret and where it comes from: the contract's first
    ``check.values`` entry when it gives one, else all zero bytes."""
    given = dict(contract.check.values)
    values, origin = [], {}
    for s in contract.secrets:
        if given.get(s.name):
            values.append((s.name, given[s.name][0]))
            origin[s.name] = "check.values[0]"
        else:
            values.append((s.name, bytes(s.length)))
            origin[s.name] = "all zero bytes"
    return tuple(values), origin


def timing_inputs(contract: Contract, count: int, seed: int) -> list[tuple[str, TrialInput]]:
    """``count`` measurements' (class, values): ``count // 2`` fixed, the rest random, in a
    class order shuffled by ``seed``; random values are fresh for each measurement."""
    rng = random.Random(seed)
    fixed, _ = fixed_values(contract)
    order = [FIXED] * (count // 2) + [RANDOM] * (count - count // 2)
    rng.shuffle(order)
    out = []
    for i, cls in enumerate(order):
        values = fixed if cls == FIXED else tuple((s.name, rng.randbytes(s.length))
                                                  for s in contract.secrets)
        out.append((cls, TrialInput(i, values)))
    return out


def _stats(values: Sequence[float]) -> ClassStats:
    return ClassStats(len(values), mean(values), math.sqrt(variance(values)))


def compare(name: str, unit: str, fixed: Sequence[float], random_: Sequence[float],
            percentiles: Sequence[float] = ()) -> Quantity:
    """Welch's t between the classes, and with each crop of ``percentiles`` (thresholds
    from the pooled measurements; a crop leaving a class fewer than two is skipped); the
    largest |t| decides."""
    t_all = welch_t(fixed, random_)
    best, where = t_all, None
    pooled = [*fixed, *random_]
    for p in percentiles:
        limit = percentile(pooled, p)
        a, b = crop(fixed, limit), crop(random_, limit)
        if len(a) < 2 or len(b) < 2:
            continue
        t = welch_t(a, b)
        if abs(t) > abs(best):
            best, where = t, p
    return Quantity(name, unit, _stats(fixed), _stats(random_), best, t_all, where,
                    {FIXED: tuple(fixed), RANDOM: tuple(random_)})


def run_timing(binary: str, contract: Contract, profile: Profile, options: CheckOptions,
               measurements: int = DEFAULT_MEASUREMENTS, args: Sequence[str] | None = None
               ) -> TimingReport:
    """The timing test of ``binary`` against ``contract`` (bound to it), for each of
    ``options.modes`` (see the module doc).  Of ``options``, ``modes``, ``seed``,
    ``max_insns`` and ``progress`` apply; measurements run one at a time (parallel runs
    would disturb each other's host time)."""
    if measurements < MIN_MEASUREMENTS:
        raise ValueError(f"the timing test needs at least {MIN_MEASUREMENTS} measurements")
    started = time.monotonic()
    if args is not None:
        contract = replace(contract, check=replace(contract.check, args=tuple(args)))
    seed = contract.check.seed if options.seed is None else options.seed
    inputs = timing_inputs(contract, measurements, seed)
    fixed, origin = fixed_values(contract)
    scope = ", ".join(str(f) for f in contract.protect.functions) or "the whole run"
    report = TimingReport(binary, tuple(contract.check.args), contract.path,
                          profile.name, seed, measurements, scope,
                          {name: v.hex() for name, v in fixed}, origin)
    what = Observation((LeakKind.CONTROL_FLOW,), profile.line_size, ())
    for mode in options.modes:
        setup = trial_setup(binary, contract, profile, mode, options.max_insns)
        runs = _measure(setup, inputs, what, options, f"{mode}: ")
        report.modes.append(_analyse(mode, runs))
    report.seconds = time.monotonic() - started
    return report


def _measure(setup: TrialSetup, inputs: Sequence[tuple[str, TrialInput]], what: Observation,
             options: CheckOptions, label: str) -> list[tuple[str, TrialRun]]:
    """Run the measurements in order, after one discarded warm-up run."""
    setup.run(inputs[0][1], what)
    started = time.monotonic()
    runs = []
    for done, (cls, t) in enumerate(inputs, 1):
        runs.append((cls, setup.run(t, what)))
        if options.progress is not None:
            elapsed = time.monotonic() - started
            eta = elapsed / done * (len(inputs) - done)
            options.progress(f"{label}measurements {done}/{len(inputs)}, ETA {eta:.0f} s")
    return runs


def _analyse(mode: str, runs: Sequence[tuple[str, TrialRun]]) -> ModeTiming:
    by_class: dict[str, list[TrialRun]] = {FIXED: [], RANDOM: []}
    for cls, run in runs:
        by_class[cls].append(run)
    fixed, rand = by_class[FIXED], by_class[RANDOM]
    host = compare(HOST_TIME, "µs", [r.trace.scope_ns / 1000 for r in fixed],
                   [r.trace.scope_ns / 1000 for r in rand], CROP_PERCENTILES)
    cost = compare(COST_MODEL, "cycles", [r.trace.cost for r in fixed],
                   [r.trace.cost for r in rand])
    insns = {cls: (min(r.trace.instructions for r in rs), max(r.trace.instructions for r in rs))
             for cls, rs in by_class.items()}
    return ModeTiming(mode, {cls: len(rs) for cls, rs in by_class.items()}, host, cost, insns,
                      sum(1 for _, r in runs if r.error))


# -- reports ---------------------------------------------------------------------------------

HOST_TIME_NOTE = ("host time is the time the emulator spends running the emulated scope -- "
                  "what a co-tenant of the emulator could measure -- not the native "
                  "program's timing")
COST_NOTE = ("cost model is leakdbt's cycle estimate (instructions 1, divisions and square "
             "roots their typical latency): a model, not a measurement")
THRESHOLD_NOTE = (f"|t| > {THRESHOLD} means the classes differ (dudect's threshold, from "
                  "TVLA: P(|t| > 4.5) is about 7e-6 when they do not)")


def _t_text(t: float) -> str:
    return f"{t:+.2f}" if math.isfinite(t) else ("+inf" if t > 0 else "-inf")


def to_text(report: TimingReport) -> str:
    """The report for people."""
    fixed = ", ".join(f"{name}={value} ({report.fixed_origin[name]})"
                      for name, value in report.fixed.items())
    lines = [f"leakdbt check --timing: {report.binary} {' '.join(report.args)}".rstrip(),
             f"  contract {report.contract}, CPU profile {report.profile}, seed "
             f"{report.seed}, {report.measurements} measurements per mode",
             f"  classes: fixed {fixed}; random: fresh random bytes per measurement; "
             "interleaved in a seeded random order",
             f"  scope timed: {report.scope}",
             f"  note: {HOST_TIME_NOTE}",
             f"  note: {COST_NOTE}",
             f"  threshold: {THRESHOLD_NOTE}",
             "  t = Welch's t of fixed minus random (t < 0: the fixed class takes less)"]
    for m in report.modes:
        lines += ["", f"{m.mode}: {m.measurements[FIXED]} fixed, {m.measurements[RANDOM]} "
                  "random measurements"
                  + (f" ({m.errors} ended in a guest error)" if m.errors else "")]
        lines.append(f"  {'':<22}{'fixed mean ± stdev':>26}{'random mean ± stdev':>26}"
                     f"{'t':>10}")
        for q in (m.host_time, m.cost_model):
            digits = 1 if q.unit == "µs" else 0
            cells = [f"{s.mean:,.{digits}f} ± {s.stdev:,.{digits}f}" for s in (q.fixed, q.random)]
            note = "leak" if q.leak else "ok"
            if q.crop is not None:
                note += (f" (worst crop: slowest {1 - q.crop:.1%} dropped; uncropped t "
                         f"{_t_text(q.t_uncropped)})")
            lines.append(f"  {q.name + ' (' + q.unit + ')':<22}{cells[0]:>26}{cells[1]:>26}"
                         f"{_t_text(q.t):>10}  {note}")
        leaking = [q.name for q in (m.host_time, m.cost_model) if q.leak]
        verdict = (f"LEAK: {' and '.join(leaking)} differ{'s' if len(leaking) == 1 else ''} "
                   "between fixed and random secrets" if leaking
                   else f"no timing difference shown (|t| <= {THRESHOLD})")
        lines.append(f"  verdict: {verdict}")
    lines += ["", f"{'timing leak found' if report.leaks else 'no timing leak found'} in "
              f"{report.seconds:.1f} s"]
    return "\n".join(lines) + "\n"


def to_json(report: TimingReport) -> str:
    """The report as JSON; an infinite t is the string "inf" or "-inf"."""
    import json

    def fix(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: fix(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [fix(v) for v in value]
        if isinstance(value, float) and not math.isfinite(value):
            return "inf" if value > 0 else "-inf"
        return value

    data = asdict(report)
    for m, out in zip(report.modes, data["modes"], strict=True):
        out["leak"] = m.leak
        for key in ("host_time", "cost_model"):
            out[key]["leak"] = getattr(m, key).leak
            del out[key]["samples"]
    data["leaks"] = report.leaks
    data["notes"] = {"host_time": HOST_TIME_NOTE, "cost_model": COST_NOTE,
                     "threshold": THRESHOLD_NOTE}
    return json.dumps(fix(data), indent=2, allow_nan=False) + "\n"
