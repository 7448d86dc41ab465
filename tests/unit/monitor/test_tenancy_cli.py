"""``leakdbt tenancy``: text and JSON reports, detector errors shown (status 0), usage errors
(status 2)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from leakdbt.cli import cli, main
from leakdbt.monitor.commands import tenancy


@pytest.fixture(autouse=True)
def registered() -> Iterator[None]:
    """The command, registered like cli._register_subcommands() does (a no-op once it does)."""
    added = "tenancy" not in cli.commands
    if added:
        cli.add_command(tenancy)
    yield
    if added:
        del cli.commands["tenancy"]


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        main(["tenancy", *args])
        status = 0
    except SystemExit as e:
        status = int(e.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


def test_json_report_of_a_fixed_detector(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(["--detector", "fixed:core", "--format", "json"], capsys)
    assert status == 0
    report = json.loads(out)
    assert report["pid"] == os.getpid() and report["cpus"] == sorted(os.sched_getaffinity(0))
    assert report["topology"] is None  # fixed reads none
    assert report["detectors"] == [{
        "detector": "fixed:core", "evidence": "fixed:core",
        "cotenants": [{"shares": "core", "pid": 0, "name": "fixed", "uid": -1, "cpu": -1,
                       "evidence": "fixed:core"}]}]


def test_text_report_shows_errors_and_keeps_status_0(capsys: pytest.CaptureFixture[str],
                                                    tmp_path: Path) -> None:
    status, out, _ = run(["--detector", "fixed:alone", "--detector", "schedule:error",
                          "--detector", f"file:{tmp_path}/none.json"], capsys)
    assert status == 0
    assert "\nfixed:alone: alone\n  evidence: fixed:alone\n" in out
    assert "\nschedule:error: error: ScriptedError: schedule tick 1: scripted error\n" in out
    assert f"file:{tmp_path}/none.json: error: TenancyFileError: " in out
    assert "topology: not read" in out


def test_default_detectors_and_trust_options(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(["--format", "json", "--trust-uid", str(os.getuid()),
                          "--trust-name", "python", "--trust-cgroup", "/"], capsys)
    assert status == 0
    report = json.loads(out)
    assert [d["detector"] for d in report["detectors"]] == ["procfs", "cpuset"]
    topology = report["topology"]
    assert set(report["cpus"]) <= set(topology["online"])
    assert sorted(c for g in topology["cores"] for c in g) == topology["online"]
    procfs = report["detectors"][0]
    assert "error" in procfs or all(c["pid"] != os.getpid() for c in procfs["cotenants"])
    status, text, _ = run([], capsys)
    assert status == 0 and text.startswith(f"our process: pid {os.getpid()}, CPUs ")
    assert "\ncores (SMT siblings): " in text and "\nLLC groups (" in text
    assert "\nprocfs: " in text and "\ncpuset: " in text


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(["--detector", "nosuch"], capsys)
    assert (status, out) == (2, "")
    assert err.startswith("leakdbt: --detector nosuch: no detector named 'nosuch' (installed: ")
    status, _, err = run(["--detector", "schedule:alone*0"], capsys)
    assert status == 2 and "at least 1" in err
    status, _, err = run(["--trust-uid", "me"], capsys)
    assert status == 2 and "'me' is not a valid integer" in err


def test_list_installed_detectors(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(["--list"], capsys)
    assert status == 0
    assert "\nfixed: always the same answer: fixed:alone|core|cache|machine  (entry point " \
        "'fixed' (plugins.tenancy_scripted:FIXED))\n" in out
    status, out, _ = run(["--list", "--format", "json"], capsys)
    names = [d["name"] for d in json.loads(out)["detectors"]]
    assert {"cpuset", "file", "fixed", "procfs", "schedule"} <= set(names)
    assert names == sorted(names)
