"""bench/processes.py (make bench's threads, signals and processes section): its line fit,
the parsing of its launcher's report, the interleaving order, and the launcher itself on a
threaded test program (the switch count it reads from the scheduler must not silently be 0)."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SPEC = importlib.util.spec_from_file_location("bench_processes", REPO / "bench" / "processes.py")
assert SPEC is not None and SPEC.loader is not None
bench = importlib.util.module_from_spec(SPEC)
sys.modules["bench_processes"] = bench
SPEC.loader.exec_module(bench)
STATIC = REPO / "test_binaries" / "build" / "static"


def test_fit_line_recovers_an_exact_line() -> None:
    xs = [0.0, 1000.0, 1000.0, 25000.0, 320000.0]
    slope, intercept = bench.fit_line(xs, [0.25 + 2e-5 * x for x in xs])
    assert slope == pytest.approx(2e-5)
    assert intercept == pytest.approx(0.25)


def test_fit_line_averages_noise_at_repeated_points() -> None:
    rng = random.Random(7)
    xs, ys = [], []
    for x in (10.0, 400.0):
        for _ in range(50):
            noise = rng.uniform(-0.01, 0.01)
            xs += [x, x]
            ys += [1.0 + 0.003 * x + noise, 1.0 + 0.003 * x - noise]  # noise cancels
    slope, intercept = bench.fit_line(xs, ys)
    assert slope == pytest.approx(0.003)
    assert intercept == pytest.approx(1.0)


@pytest.mark.parametrize("xs, ys", [([5.0, 5.0, 5.0], [1.0, 2.0, 3.0]), ([1.0, 2.0], [1.0])])
def test_fit_line_refuses_what_has_no_line(xs: list[float], ys: list[float]) -> None:
    with pytest.raises(ValueError):
        bench.fit_line(xs, ys)


def test_parse_report_takes_the_last_report_among_guest_output() -> None:
    err = ("guest says LEAKDBT-BENCH in the middle\n"
           'LEAKDBT-BENCH {"cpu": 9.0, "switches": 1, "tree": "/x"}\n'  # a forked child's
           "more guest stderr\n"
           'LEAKDBT-BENCH {"cpu": 0.5, "switches": 321, "tree": "/work/t"}\n')
    assert bench.parse_report(err) == bench.Report(0.5, 321, "/work/t")


def test_parse_report_without_a_report_is_an_error() -> None:
    with pytest.raises(ValueError, match="no leakdbt bench report"):
        bench.parse_report("Traceback ...\n")


def test_interleaved_reverses_the_order_every_other_round() -> None:
    order: list[str] = []

    class Fake(bench.Runner):  # type: ignore[name-defined]
        def __init__(self, name: str) -> None:
            super().__init__([name])
            self.name = name

        def run(self) -> object:
            order.append(self.name)
            return bench.Sample(1.0, 1.0)

    samples = bench.interleaved({n: Fake(n) for n in "abc"}, rounds=3)
    assert order == list("abccbaabc")
    assert {k: len(v) for k, v in samples.items()} == {"a": 3, "b": 3, "c": 3}


def test_launcher_reports_cpu_and_the_schedulers_switches() -> None:
    exe = STATIC / "bench_threads"
    if not exe.exists():
        pytest.fail(f"{exe} is not built (make binaries)")
    python = sys.executable
    argv = [str(exe), "4", "400000"]
    threaded = bench.leakdbt_runner(python, argv, b"19999800000\n",
                                    {"LEAKDBT_QUANTUM": "1000"}).run()
    single = bench.leakdbt_runner(python, [str(exe), "0", "400000"], b"79999800000\n").run()
    # 1.6M guest instructions over 4 threads at a quantum of 1,000: about 1,600 switches.
    assert threaded.switches is not None and threaded.switches > 1000
    assert single.switches == 0
    assert threaded.guest_cpu is not None and threaded.guest_cpu > 0
    assert threaded.cpu >= threaded.guest_cpu


def test_launcher_refuses_a_run_of_another_trees_leakdbt(tmp_path: Path) -> None:
    runner = bench.leakdbt_runner(sys.executable, [str(STATIC / "hello")], tree=REPO)
    runner.tree = tmp_path  # leakdbt still comes from REPO (PYTHONPATH), not tmp_path
    with pytest.raises(SystemExit, match="imported from"):
        runner.run()


def test_an_unknown_table_is_refused_before_anything_runs(capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    with pytest.raises(SystemExit, match="unknown table.*bogus; choose from threads"):
        bench.run(sys.executable, ["bogus", "signals"])
    assert capsys.readouterr().out == ""
