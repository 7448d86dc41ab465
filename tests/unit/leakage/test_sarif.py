"""SARIF 2.1.0 rendering of check reports, validated against the official OASIS schema.

tests/data/sarif-schema-2.1.0.json is the OASIS SARIF 2.1.0 (errata 01) JSON schema, verbatim:
repository oasis-tcs/sarif-spec, path Schemata/sarif-schema-2.1.0.json, commit
0a8091f7d4057e57b6d8d9b56129e5f918747b34 (112,768 characters; "$schema" draft-04, "id"
https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json).
It is validated with the validator its "$schema" names (Draft 4), and with Draft 7 as well.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from leakdbt.leakage.findings import (
    CheckReport,
    Finding,
    LeakKind,
    ModeSummary,
    SourceLine,
    Trial,
    Witness,
)
from leakdbt.leakage.sarif import FINGERPRINT_KEY, SRCROOT, fingerprint, to_sarif

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "data" / "sarif-schema-2.1.0.json"


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(SCHEMA_PATH.read_text())
    assert data["title"] == "Static Analysis Results Format (SARIF) Version 2.1.0 JSON Schema"
    assert data["id"].endswith("/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json")
    assert data["properties"]["version"]["enum"] == ["2.1.0"]
    return data


def validate(log: dict[str, Any], schema: dict[str, Any]) -> None:
    # JSON round trip first: the log must be plain JSON (no tuples, ints as keys, ...).
    log = json.loads(json.dumps(log))
    declared = jsonschema.validators.validator_for(schema)
    assert declared is jsonschema.Draft4Validator
    for cls in (declared, jsonschema.Draft7Validator):
        cls.check_schema(schema)
        validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
        errors = sorted(validator.iter_errors(log), key=lambda e: list(e.absolute_path))
        assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def trial(index: int, key: str) -> Trial:
    return Trial(index, (("key", key), ("nonce", "00" * 4)))


def finding(
    kind: LeakKind,
    *,
    source: SourceLine | None,
    suggestion: str | None = None,
    link_address: int = 0x401A3A,
    address: int | None = None,
    mode: str = "original",
    module: str = "ct_modexp",
    module_path: str = "/work/build/ct_modexp",
    location: str = "modexp+0x2a",
) -> Finding:
    return Finding(
        kind=kind,
        mode=mode,
        address=link_address if address is None else address,
        location=location,
        module=module,
        module_path=module_path,
        link_address=link_address,
        instruction="jne 0x401a50",
        source=source,
        distinct=2,
        trials=8,
        witness=Witness(trial(0, "00" * 16), trial(3, "ff" * 16), ("taken", "not taken")),
        suggestion=suggestion,
    )


def report(findings: list[Finding], binary: str = "/work/build/ct_modexp") -> CheckReport:
    return CheckReport(
        binary=binary,
        args=("--rounds", "3"),
        contract="contracts/ct_modexp.toml",
        profile="skylake",
        adversary="co-resident",
        observers=("control-flow", "memory-access"),
        granularity="line",
        seed=1234,
        modes=[ModeSummary("original", 8, 1000, 2500, {"control-flow": 2})],
        findings=findings,
        seconds=1.5,
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    return tmp_path


def full_report(repo: Path) -> CheckReport:
    return report(
        [
            finding(
                LeakKind.CONTROL_FLOW,
                source=SourceLine(str(repo / "src" / "modexp.c"), 42, 7),
                suggestion='[[protect.region]]\nat = "modexp+0x20"\nkind = "branch"\n'
                'why = "leakdbt check: control-flow leak at modexp+0x2a (jne 0x401a50)"\n',
            ),
            finding(
                LeakKind.MEMORY_ACCESS,
                source=SourceLine(str(repo / "src" / "table lookup.c"), 9),  # column 0: none
                link_address=0x401B00,
                location="sbox+0x10",
            ),
            finding(
                LeakKind.VARIABLE_LATENCY,
                source=None,  # no line information: the module and a logical location
                suggestion='[[protect.region]] at = "libgcc_s.so.1:__udivti3+0x24" '
                'kind = "divide"',
                link_address=0x5124,
                address=0x7F00_0000_5124,
                module="libgcc_s.so.1",
                module_path="/usr/lib/x86_64-linux-gnu/libgcc_s.so.1",
                location="libgcc_s.so.1:__udivti3+0x24",
            ),
            finding(
                LeakKind.CONTROL_FLOW,
                source=SourceLine("/usr/include/x86_64-linux-gnu/bits/string_fortified.h", 29),
                mode="hardened",
                link_address=0x401C00,
                location="memcpy_wrap+0x4",
            ),
            finding(
                LeakKind.MEMORY_ACCESS,
                source=None,
                link_address=0x401D00,
                module_path=str(repo / "build" / "ct_modexp"),
                location="lookup+0x8",
            ),
        ],
        binary=str(repo / "build" / "ct_modexp"),
    )


def test_full_report_validates(repo: Path, schema: dict[str, Any]) -> None:
    log = to_sarif(
        full_report(repo),
        command_line=["leakdbt", "check", "--contract", "c t.toml", "build/ct_modexp"],
        source_root=repo,
    )
    validate(log, schema)
    assert log["$schema"] == "https://json.schemastore.org/sarif-2.1.0.json"
    assert log["version"] == "2.1.0"
    (run,) = log["runs"]
    driver = run["tool"]["driver"]
    assert driver["name"] == "leakdbt"
    assert driver["version"] == "0.1.0"
    assert driver["informationUri"].startswith("https://")
    ids = [rule["id"] for rule in driver["rules"]]
    assert ids == ["leakdbt/control-flow", "leakdbt/memory-access", "leakdbt/variable-latency"]
    for rule in driver["rules"]:
        assert rule["defaultConfiguration"] == {"level": "error"}
        assert rule["properties"]["tags"] == ["security", "side-channel"]
        assert "[[protect.region]]" in rule["help"]["text"]
        assert "hardened" in rule["help"]["markdown"]
        assert rule["shortDescription"]["text"] and rule["fullDescription"]["text"]
    assert 'kind = "table"' in driver["rules"][1]["help"]["text"]
    assert 'kind = "divide"' in driver["rules"][2]["help"]["text"]

    (invocation,) = run["invocations"]
    assert invocation["executionSuccessful"] is True
    assert invocation["commandLine"] == "leakdbt check --contract 'c t.toml' build/ct_modexp"
    assert run["originalUriBaseIds"][SRCROOT]["uri"] == repo.as_uri() + "/"

    results = run["results"]
    assert len(results) == 5
    for result in results:
        assert result["level"] == "error"
        assert ids[result["ruleIndex"]] == result["ruleId"]
        assert result["analysisTarget"] == {"uri": "build/ct_modexp", "uriBaseId": SRCROOT}
    assert [r["ruleId"] for r in results] == [
        "leakdbt/control-flow", "leakdbt/memory-access", "leakdbt/variable-latency",
        "leakdbt/control-flow", "leakdbt/memory-access",
    ]  # fmt: skip

    # A source line under the root: repository-relative, with line and column.
    first = results[0]
    phys = first["locations"][0]["physicalLocation"]
    assert phys["artifactLocation"] == {"uri": "src/modexp.c", "uriBaseId": SRCROOT}
    assert phys["region"] == {"startLine": 42, "startColumn": 7}
    assert first["locations"][0]["logicalLocations"] == [
        {"name": "modexp", "fullyQualifiedName": "modexp+0x2a", "kind": "function"}
    ]
    text = first["message"]["text"]
    for part in ("control-flow", "modexp+0x2a", "jne 0x401a50", "2 distinct observations",
                 "8 trials", "key=" + "00" * 16, "key=" + "ff" * 16, 'kind = "branch"'):
        assert part in text, part
    props = first["properties"]
    assert props["address"] == "0x401a3a" and props["mode"] == "original"
    assert props["distinct"] == 2 and props["trials"] == 8
    assert props["witness"]["first"] == {"index": 0, "secrets": {"key": "00" * 16,
                                                                 "nonce": "00000000"}}
    assert props["witness"]["observed"] == ["taken", "not taken"]

    # Column 0 means unknown: no startColumn; a space in the path is percent-encoded.
    phys = results[1]["locations"][0]["physicalLocation"]
    assert phys["artifactLocation"]["uri"] == "src/table%20lookup.c"
    assert phys["region"] == {"startLine": 9}
    assert "contract entry" not in results[1]["message"]["text"]
    assert "suggestion" not in results[1]["properties"]

    # No source line: the module (outside the root: an absolute file URI) and no region.
    third = results[2]
    loc = third["locations"][0]
    assert loc["physicalLocation"] == {
        "artifactLocation": {"uri": "file:///usr/lib/x86_64-linux-gnu/libgcc_s.so.1"}
    }
    assert loc["logicalLocations"] == [{
        "name": "__udivti3", "fullyQualifiedName": "libgcc_s.so.1:__udivti3+0x24",
        "kind": "function",
    }]  # fmt: skip
    assert third["properties"]["address"] == "0x7f0000005124"
    assert third["properties"]["linkAddress"] == "0x5124"

    # A header outside the root: absolute file URI, still with its line.
    phys = results[3]["locations"][0]["physicalLocation"]
    assert phys["artifactLocation"] == {
        "uri": "file:///usr/include/x86_64-linux-gnu/bits/string_fortified.h"
    }
    assert phys["region"] == {"startLine": 29}

    # No source line, binary under the root: relative artifact without region.
    assert results[4]["locations"][0]["physicalLocation"] == {
        "artifactLocation": {"uri": "build/ct_modexp", "uriBaseId": SRCROOT}
    }


def test_fingerprints_stable_and_distinct(repo: Path) -> None:
    one = to_sarif(full_report(repo), source_root=repo)
    # Another run: other load address, other witness secrets, other paths, other order.
    other = full_report(repo)
    moved = [
        Finding(**{**f.__dict__, "address": f.address + 0x5555_0000_0000,
                   "witness": Witness(trial(5, "11" * 16), trial(6, "22" * 16), ("a", "b")),
                   "module_path": "/elsewhere/" + f.module, "distinct": 3, "trials": 16})
        for f in reversed(other.findings)
    ]
    two = to_sarif(report(moved, binary="/elsewhere/ct_modexp"), source_root="/nowhere")

    def prints(log: dict[str, Any]) -> set[str]:
        return {r["partialFingerprints"][FINGERPRINT_KEY] for r in log["runs"][0]["results"]}

    assert prints(one) == prints(two)
    assert len(prints(one)) == 5  # all distinct (kind, mode, module, link address)
    for value in prints(one):
        assert re.fullmatch(r"[0-9a-f]{32}", value), value
    base = full_report(repo).findings[0]
    for change in ({"kind": LeakKind.MEMORY_ACCESS}, {"link_address": base.link_address + 1},
                   {"module": "other"}, {"mode": "hardened"}):
        changed = Finding(**{**base.__dict__, **change})
        assert fingerprint(changed) != fingerprint(base), change
    assert fingerprint(copy.deepcopy(base)) == fingerprint(base)
    # Deterministic across processes too: a fixed value for fixed inputs.
    assert fingerprint(base) == fingerprint(finding(LeakKind.CONTROL_FLOW, source=None))


def test_empty_report(schema: dict[str, Any], tmp_path: Path) -> None:
    log = to_sarif(report([]), source_root=tmp_path)
    validate(log, schema)
    (run,) = log["runs"]
    assert run["results"] == []
    assert len(run["tool"]["driver"]["rules"]) == len(LeakKind)
    assert run["invocations"][0]["executionSuccessful"] is True
    assert "commandLine" not in run["invocations"][0]


def test_default_root_is_working_directory(
    repo: Path, schema: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(repo)
    log = to_sarif(full_report(repo))
    validate(log, schema)
    result = log["runs"][0]["results"][0]
    assert result["locations"][0]["physicalLocation"]["artifactLocation"] == {
        "uri": "src/modexp.c", "uriBaseId": SRCROOT,
    }  # fmt: skip


def test_relative_source_path_is_taken_from_the_root(repo: Path, schema: dict[str, Any]) -> None:
    f = finding(LeakKind.CONTROL_FLOW, source=SourceLine("src/../src/modexp.c", 3, 1))
    log = to_sarif(report([f]), source_root=repo)
    validate(log, schema)
    phys = log["runs"][0]["results"][0]["locations"][0]["physicalLocation"]
    assert phys["artifactLocation"] == {"uri": "src/modexp.c", "uriBaseId": SRCROOT}
    assert phys["region"] == {"startLine": 3, "startColumn": 1}


def test_line_zero_is_no_source_line(repo: Path, schema: dict[str, Any]) -> None:
    f = finding(LeakKind.MEMORY_ACCESS, source=SourceLine(str(repo / "src" / "x.c"), 0))
    log = to_sarif(report([f]), source_root=repo)
    validate(log, schema)
    phys = log["runs"][0]["results"][0]["locations"][0]["physicalLocation"]
    assert phys == {"artifactLocation": {"uri": "file:///work/build/ct_modexp"}}


def test_schema_rejects_a_broken_log(repo: Path, schema: dict[str, Any]) -> None:
    """The validation is real: a log the schema forbids fails it."""
    log = to_sarif(full_report(repo), source_root=repo)
    log["runs"][0]["results"][0]["level"] = "fatal"
    with pytest.raises(AssertionError):
        validate(log, schema)
    log = to_sarif(full_report(repo), source_root=repo)
    log["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["region"] = {"startLine": 0}
    with pytest.raises(AssertionError):
        validate(log, schema)
