"""`leakdbt suite` on a real Dask LocalCluster of 2 workers: every entry's verdict and findings
equal those of the single `check` call, even when a worker is killed mid-run; the combined
SARIF is valid with one run per entry; a failing entry is an error while the rest completes."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from leakdbt.contract import load
from leakdbt.contract.profiles import get_profile
from leakdbt.leakage.check import CheckOptions, run_check
from leakdbt.leakage.html import suite_html
from leakdbt.leakage.sarif import to_suite_sarif
from leakdbt.leakage.suite import SuiteReport, dask_client, run_suite
from leakdbt.leakage.suite_file import load_suite
from leakdbt.leakage.suite_report import to_suite_data, to_suite_text
from tests.conftest import BUILD, REPO, run_leakdbt

CPU = "intel-skylake"
TRIALS = 4
SCHEMA = REPO / "tests" / "data" / "sarif-schema-2.1.0.json"

# (contract, binary, args, mode, leaky?)
ENTRIES = [
    ("ct_modexp", "ct_modexp", None, "both", True),  # leaky original, clean hardened
    ("mac_verify", "mac_verify", None, "original", True),
    ("mac_verify", "mac_verify", None, "hardened", None),  # None: whatever check says
    ("sha256", "sha256", ["0"], "original", False),
    ("sbox_round", "sbox_round", None, "hardened", False),
    ("sodium_verify_ct", "sodium_verify", None, "original", False),
    ("idea_mul", "idea_mu?", None, "original", True),  # a glob
]


def _suite_text(extra: str = "") -> str:
    parts = ["version = 1", "[defaults]", f"trials = {TRIALS}", f'cpu = "{CPU}"',
             "directed_rounds = 0"]  # light: the trials alone
    for contract, program, args, mode, _ in ENTRIES:
        parts += ["[[entry]]", f'binary = "{BUILD / "static" / program}"',
                  f'contract = "{REPO / "contracts" / contract}.toml"', f'mode = "{mode}"']
        if args is not None:
            parts.append(f"args = {json.dumps(args)}")
    return "\n".join(parts) + "\n" + extra


@pytest.fixture(scope="module")
def killed_run(built: Path, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[tuple[SuiteReport, list[int]]]:
    """The suite run on 2 workers, one of them killed after the 5th finished trial."""
    path = tmp_path_factory.mktemp("suite") / "suite.toml"
    path.write_text(_suite_text())
    entries = load_suite(str(path))
    killed: list[int] = []
    with dask_client(None, 2) as client:
        def kill_one(done: int) -> None:
            if done == 5 and not killed:
                pids = client.run(os.getpid)
                pid = sorted(pids.values())[0]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
        yield run_suite(str(path), entries, client, on_task_done=kill_one), killed


def test_suite_verdicts_equal_single_checks_despite_a_killed_worker(
        killed_run: tuple[SuiteReport, list[int]]) -> None:
    report, killed = killed_run
    assert len(killed) == 1
    assert [r.error for r in report.results] == [""] * len(ENTRIES)
    # Every trial of every mode ran as a Dask task (plus directed rounds' recording runs).
    assert report.tasks >= sum(m.trials for r in report.results if r.report
                               for m in r.report.modes) >= TRIALS * (len(ENTRIES) + 1)
    for (_, _, _, _, leaky), result in zip(ENTRIES, report.results, strict=True):
        e, r = result.entry, result.report
        assert r is not None
        single = run_check(e.binary, load(e.contract, binary=e.binary), get_profile(CPU),
                           CheckOptions(e.modes, TRIALS, directed_rounds=0),
                           list(e.args) if e.args else None)
        assert r.leaks == single.leaks, e.name
        assert leaky is None or r.leaks == leaky, e.name
        assert [(f.kind, f.location, f.mode, f.witness) for f in r.findings] == \
            [(f.kind, f.location, f.mode, f.witness) for f in single.findings], e.name
        assert r.outputs == single.outputs
    assert report.status == 1
    assert to_suite_data(report)["status"] == 1
    text = to_suite_text(report)
    assert "LEAKS    idea_mul" in text and "no leak  sha256" in text


def test_suite_sarif_has_one_valid_run_per_entry(
        killed_run: tuple[SuiteReport, list[int]]) -> None:
    report, _ = killed_run
    log = to_suite_sarif([(r.entry.name, r.report, r.error) for r in report.results])
    jsonschema.validate(log, json.loads(SCHEMA.read_text()))
    assert len(log["runs"]) == len(ENTRIES)
    leaky = [bool(run["results"]) for run in log["runs"]]
    assert leaky == [r.report is not None and bool(r.report.findings)
                     for r in report.results]
    assert leaky[0] and not leaky[3]  # ct_modexp leaks, sha256 does not


def test_failing_entries_are_errors_and_the_rest_completes(built: Path, tmp_path: Path
                                                           ) -> None:
    # The first entry's "binary" is not an ELF file: that entry errors, the other completes.
    (tmp_path / "not-elf").write_text("#!/bin/sh\n")
    bad = (f'[[entry]]\nbinary = "not-elf"\n'
           f'contract = "{REPO / "contracts" / "sha256.toml"}"\n'
           f'[[entry]]\nbinary = "{BUILD / "static" / "sha256"}"\n'
           f'contract = "{REPO / "contracts" / "sha256.toml"}"\nargs = ["0"]\n'
           # ...and one whose trials all run out of time (loading counts) errors too.
           f'[[entry]]\nbinary = "{BUILD / "static" / "sha256"}"\n'
           f'contract = "{REPO / "contracts" / "sha256.toml"}"\nargs = ["0"]\n'
           'timeout = 0.0001\n')
    path = tmp_path / "suite.toml"
    path.write_text(f'version = 1\n[defaults]\ntrials = 2\ncpu = "{CPU}"\n'
                    'directed_rounds = 0\n' + bad)
    out = tmp_path / "out.json"
    page = tmp_path / "out.html"
    run = run_leakdbt(["suite", "--workers", "1", "--format", "json", "-o", str(out),
                       "--html", str(page), str(path)])
    assert run.status == 2, run.stderr
    data = json.loads(out.read_text())
    assert [e["status"] for e in data["entries"]] == [2, 0, 2]
    assert data["entries"][0]["error"] and data["entries"][1]["report"]["leaks"] is False
    assert "failed 2 times: TrialTimeout" in data["entries"][2]["error"]
    html = page.read_text()
    assert html.count('class="verdict-2">error</td>') == 2
    assert html.count('class="verdict-0">no leak</td>') == 1


def test_an_invalid_suite_file_is_one_line_with_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "suite.toml"
    path.write_text('version = 1\n[[entry]]\ncontract = "nope.toml"\nmode = "fast"\n')
    run = run_leakdbt(["suite", str(path)])
    assert run.status == 2
    assert run.stderr.count(b"\n") == 1
    err = run.stderr.decode()
    assert f"{path}:2: entry[0]: missing key binary" in err
    assert f"{path}:4: entry[0].mode: must be one of original, hardened, both" in err


def test_suite_html_has_a_verdict_row_and_a_section_per_entry(
        killed_run: tuple[SuiteReport, list[int]]) -> None:
    report, _ = killed_run
    html = suite_html(report)
    assert html.count('<section class="check"') == len(ENTRIES)
    assert html.count('class="verdict-1">leaks</td>') == sum(r.status == 1
                                                            for r in report.results) >= 2
    assert 'data-location="mul+0x3"' in html  # idea_mul's leak (test_check.py)
