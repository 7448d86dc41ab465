"""``check --timing --format html`` of a leaky program, original and hardened, rendered by
headless Chromium: both classes' histograms hold every measurement, the t values are the
JSON report's, and the verdicts are stated.

House rule: no assertion on wall-clock values.  Host time differs between the JSON run and
the HTML run, so only the cost model's t (deterministic for a seed) is compared between
them; host time is checked for consistency within the page."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

import pytest

from leakdbt.leakage.timing import COST_MODEL, HOST_TIME, THRESHOLD
from tests.conftest import REPO, binary, run_leakdbt
from tests.integration.test_html_report import CHROMIUM_FLAGS, chromium  # noqa: F401
from tests.unit.leakage.test_html_timing_render import Page

MEASUREMENTS = 10  # the least check --timing takes; the cost model decides the exit status
CLASS_SIZE = MEASUREMENTS // 2


def _timing(fmt: str, *extra: str) -> bytes:
    run = run_leakdbt(["check", "--timing", "--measurements", str(MEASUREMENTS),
                       "--mode", "both", "--cpu", "intel-skylake",
                       "--contract", str(REPO / "contracts" / "ct_modexp.toml"),
                       "--format", fmt, *extra, binary("static", "ct_modexp")])
    assert run.status == 1, run.stderr.decode()  # the original's cost model leaks
    return run.stdout


@pytest.fixture(scope="module")
def report(built: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(_timing("json"))
    return data


@pytest.fixture(scope="module")
def dom(built: Path, chromium: str, tmp_path_factory: pytest.TempPathFactory  # noqa: F811
        ) -> Page:
    out = tmp_path_factory.mktemp("timing") / "timing.html"
    assert _timing("html", "-o", str(out)) == b""
    html = out.read_text()
    assert "<script" not in html and "<link" not in html
    rendered = subprocess.run([chromium, *CHROMIUM_FLAGS, "--dump-dom", str(out)],
                              capture_output=True, text=True, timeout=120, check=True).stdout
    return Page(rendered)


def _mode(report: dict[str, Any], name: str) -> dict[str, Any]:
    (mode,) = [m for m in report["modes"] if m["mode"] == name]
    return mode


def test_cost_model_t_and_verdicts_are_the_json_reports(report: dict[str, Any], dom: Page
                                                        ) -> None:
    assert [m["data-mode"] for m in dom.modes] == ["original", "hardened"]  # side by side
    for name in ("original", "hardened"):
        cost = _mode(report, name)["cost_model"]
        s = dom.section(name, COST_MODEL)
        assert s.attrs["data-t"] == (cost["t"] if isinstance(cost["t"], str)
                                     else repr(cost["t"]))
        assert s.attrs["data-leak"] == str(cost["leak"]).lower()
    original = dom.section("original", COST_MODEL)
    assert float(original.attrs["data-t"]) < -THRESHOLD  # the all-zero exponent is cheaper
    assert f"> {THRESHOLD}: the classes differ" in original.text
    assert dom.modes[0]["data-leak"] == "true"
    assert dom.verdicts[0].startswith("verdict: LEAK: ") and "cost model" in dom.verdicts[0]


def test_both_classes_distributions_hold_every_measurement(report: dict[str, Any],
                                                           dom: Page) -> None:
    for name in ("original", "hardened"):
        mode = _mode(report, name)
        assert mode["measurements"] == {"fixed": CLASS_SIZE, "random": CLASS_SIZE}
        cost = dom.section(name, COST_MODEL)
        bins = int(cost.svg["data-bins"])
        assert bins >= 1
        assert len(cost.bars_of("fixed")) == len(cost.bars_of("random")) == bins
        assert (cost.count("fixed"), cost.count("random")) == (CLASS_SIZE, CLASS_SIZE)
        host = dom.section(name, HOST_TIME)
        assert len(host.bars_of("fixed")) == len(host.bars_of("random")) \
            == int(host.svg["data-bins"])
        # the crop that decides may drop the slowest; the legend counts what is drawn
        shown = (host.count("fixed"), host.count("random"))
        assert 2 <= shown[0] <= CLASS_SIZE and 2 <= shown[1] <= CLASS_SIZE
        assert f"fixed ({shown[0]} shown)" in host.text
        assert f"random ({shown[1]} shown)" in host.text
    # the original's fixed class is one path: one bar holds all its measurements
    fixed = dom.section("original", COST_MODEL).bars_of("fixed")
    assert sorted(int(b["data-count"]) for b in fixed)[-1] == CLASS_SIZE


def test_host_time_verdict_follows_its_own_t(dom: Page) -> None:
    """The host-time run differs from the JSON run (noise): check the page against itself."""
    for name in ("original", "hardened"):
        s = dom.section(name, HOST_TIME)
        t = float(s.attrs["data-t"])
        assert math.isfinite(t)
        assert s.attrs["data-leak"] == str(abs(t) > THRESHOLD).lower()
        assert "not the native program's timing" in s.text
    for mode in dom.modes:
        leaks = [dom.section(mode["data-mode"], q).attrs["data-leak"]
                 for q in (HOST_TIME, COST_MODEL)]
        assert mode["data-leak"] == str("true" in leaks).lower()
