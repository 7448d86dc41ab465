"""Render a :class:`~leakdbt.leakage.findings.CheckReport` as a SARIF 2.1.0 log.

SARIF (OASIS Static Analysis Results Interchange Format) is what GitHub and GitLab code
scanning ingest.  The log has one run whose driver lists one rule per
:class:`~leakdbt.leakage.findings.LeakKind` and one ``error`` result per finding.

Locations: a finding with a DWARF source line points at the source file, relative to the
source root (``%SRCROOT%``, by default the working directory) when the file is under it — code
scanning only links repository-relative paths — or as an absolute ``file://`` URI otherwise.
A finding without a source line points at its module (the binary or a library) with no region,
and names the instruction's ``module:symbol+offset`` as a logical location of kind
``function``.

``partialFingerprints`` hash what stays the same from run to run (kind, mode, module file name
and link-time address; never the runtime address), so code scanning can track a result across
uploads.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shlex
import urllib.parse
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from leakdbt.leakage.findings import KIND_TEXT, CheckReport, Finding, LeakKind, Trial

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
SARIF_VERSION = "2.1.0"
TOOL_NAME = "leakdbt"
INFORMATION_URI = "https://pypi.org/project/leakdbt/"
SRCROOT = "%SRCROOT%"
FINGERPRINT_KEY = "leakdbt/v1"  # the hash's inputs change only with a new key


def _rule_id(kind: LeakKind) -> str:
    return f"{TOOL_NAME}/{kind.value}"


# Per kind: rule name, short description, the [[protect.region]] kinds that cover it, and how.
_RULES: dict[LeakKind, tuple[str, str, tuple[str, ...], str]] = {
    LeakKind.CONTROL_FLOW: (
        "SecretDependentControlFlow",
        "A branch's direction depends on a secret",
        ("branch", "loop"),
        "An adversary who sees which code runs (instruction cache, branch predictor, timing) "
        "learns which way the branch went, and so learns about the secret.",
    ),
    LeakKind.MEMORY_ACCESS: (
        "SecretDependentMemoryAccess",
        "The address of a memory access depends on a secret",
        ("table",),
        "An adversary who sees which cache lines (or pages, or bytes) the program touches "
        "learns the secret-dependent index or pointer.",
    ),
    LeakKind.VARIABLE_LATENCY: (
        "SecretDependentLatency",
        "An instruction with operand-dependent latency runs on secret operands",
        ("divide", "float"),
        "Division and floating-point instructions (subnormals) take a time that depends on "
        "their operands; an adversary who times them learns about the secret.",
    ),
}


def _rule(kind: LeakKind) -> dict[str, Any]:
    name, short, region_kinds, why = _RULES[kind]
    kinds_text = " or ".join(f'kind = "{k}"' for k in region_kinds)
    full = f"leakdbt found a point where {KIND_TEXT[kind]}. {why}"
    help_text = (
        f"{full}\n\nHow to fix: rewrite the code to be constant-time, or cover the instruction "
        f"with a [[protect.region]] entry in the security contract ({kinds_text}, at = the "
        f"location of the block's first instruction; the result's message suggests one) and "
        f"run it in hardened mode (leakdbt exec --contract C.toml --mode hardened). "
        f"Check again with leakdbt check --contract C.toml --mode hardened BINARY: the finding "
        f"must be gone."
    )
    kinds_md = " or ".join(f'`kind = "{k}"`' for k in region_kinds)
    example_kind = region_kinds[0]
    help_markdown = (
        f"{full}\n\n"
        f"**How to fix:** rewrite the code to be constant-time, or cover the instruction with a "
        f"`[[protect.region]]` entry in the security contract ({kinds_md}) and run it in "
        f"hardened mode:\n\n"
        f"```toml\n[[protect.region]]\nat = \"function+0x2c\"   # the block's first instruction\n"
        f"kind = \"{example_kind}\"\n```\n\n"
        f"```sh\nleakdbt exec --contract C.toml --mode hardened BINARY\n```\n\n"
        f"Then check the hardened code: `leakdbt check --contract C.toml --mode hardened "
        f"BINARY` must no longer report it."
    )
    return {
        "id": _rule_id(kind),
        "name": name,
        "shortDescription": {"text": short},
        "fullDescription": {"text": full},
        "help": {"text": help_text, "markdown": help_markdown},
        "defaultConfiguration": {"level": "error"},
        # GitHub reads precision and security-severity (CVSS-like, "high" from 7.0) here.
        "properties": {
            "tags": ["security", "side-channel"],
            "precision": "high",
            "security-severity": "7.0",
        },
    }


def _tool_version() -> str:
    try:
        return importlib.metadata.version(TOOL_NAME)
    except importlib.metadata.PackageNotFoundError:
        from leakdbt import __version__

        return __version__


def _under(path: str, root: str) -> str | None:
    """``path`` relative to ``root`` (POSIX separators) if it lies under it, else None."""
    for p, r in ((path, root), (os.path.realpath(path), os.path.realpath(root))):
        try:
            rel = Path(os.path.normpath(p)).relative_to(os.path.normpath(r))
        except ValueError:
            continue
        if rel.parts and ".." not in rel.parts:
            return PurePosixPath(*rel.parts).as_posix()
    return None


def _artifact_location(path: str, root: str) -> dict[str, Any]:
    """An artifactLocation: relative to %SRCROOT% when under ``root``, else a file:// URI."""
    absolute = path if os.path.isabs(path) else os.path.join(root, path)
    rel = _under(absolute, root)
    if rel is not None:
        return {"uri": urllib.parse.quote(rel), "uriBaseId": SRCROOT}
    return {"uri": Path(os.path.normpath(absolute)).as_uri()}


def _root_uri(root: str) -> str:
    uri = Path(os.path.normpath(os.path.abspath(root))).as_uri()
    return uri if uri.endswith("/") else uri + "/"


def fingerprint(finding: Finding) -> str:
    """A digest that identifies ``finding`` across runs and rebuilds of the same binary.

    Built from the leak kind, the checked mode, the module's file name and the instruction's
    link-time address: nothing that changes with the load address, the trials' secrets or the
    machine's paths.
    """
    key = f"{finding.kind.value}\0{finding.mode}\0{finding.module}\0{finding.link_address:#x}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _symbol(location: str) -> str:
    """``symbol`` of ``module:symbol+offset`` (or of ``symbol+offset``)."""
    tail = location.rsplit(":", 1)[-1] if ":" in location else location
    return tail.split("+", 1)[0] or location


def _trial_json(trial: Trial) -> dict[str, Any]:
    return {"index": trial.index, "secrets": dict(trial.secrets)}


def _message(finding: Finding) -> str:
    w = finding.witness
    parts = [
        f"{finding.kind.value} leak ({finding.mode} code) at {finding.location} "
        f"({finding.instruction}): {KIND_TEXT[finding.kind]}.",
    ]
    if w is None:
        parts.append("Found by taint tracking: the secrets reach this instruction.")
    else:
        parts += [
            f"{finding.distinct} distinct observations over {finding.trials} trials.",
            f"Witness: trial {w.first.index} ({w.first.describe()}) observed "
            f"{w.observed[0]}; trial {w.second.index} ({w.second.describe()}) observed "
            f"{w.observed[1]}.",
        ]
    text = " ".join(parts)
    if finding.suggestion:
        text += f"\n\nA contract entry that would cover it:\n{finding.suggestion.rstrip()}"
    return text


def _location(finding: Finding, root: str) -> dict[str, Any]:
    logical = {
        "name": _symbol(finding.location),
        "fullyQualifiedName": finding.location,
        "kind": "function",
    }
    if finding.source is not None and finding.source.line > 0:
        region: dict[str, Any] = {"startLine": finding.source.line}
        if finding.source.column > 0:
            region["startColumn"] = finding.source.column
        physical = {
            "artifactLocation": _artifact_location(finding.source.file, root),
            "region": region,
        }
    else:
        physical = {"artifactLocation": _artifact_location(finding.module_path, root)}
    return {"physicalLocation": physical, "logicalLocations": [logical]}


def _result(finding: Finding, rule_index: int, report: CheckReport, root: str) -> dict[str, Any]:
    w = finding.witness
    return {
        "ruleId": _rule_id(finding.kind),
        "ruleIndex": rule_index,
        "level": "error",
        "message": {"text": _message(finding)},
        "analysisTarget": _artifact_location(report.binary, root),
        "locations": [_location(finding, root)],
        "partialFingerprints": {FINGERPRINT_KEY: fingerprint(finding)},
        "properties": {
            "address": f"{finding.address:#x}",
            "linkAddress": f"{finding.link_address:#x}",
            "module": finding.module,
            "instruction": finding.instruction,
            "mode": finding.mode,
            **({"distinct": finding.distinct, "trials": finding.trials, "witness": {
                "first": _trial_json(w.first),
                "second": _trial_json(w.second),
                "observed": list(w.observed),
            }} if w is not None else {}),
            **({"suggestion": finding.suggestion} if finding.suggestion else {}),
        },
    }


def to_sarif(
    report: CheckReport,
    *,
    command_line: Sequence[str] | None = None,
    source_root: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """The SARIF 2.1.0 log (a JSON-ready dict) for ``report``.

    ``command_line`` is the argv of the ``leakdbt check`` invocation, when known; it goes into
    ``invocations[0]``.  ``source_root`` (default: the working directory) is what ``%SRCROOT%``
    stands for: paths under it are written relative to it, which is what code scanning needs
    when the tool runs at the repository's root.
    """
    root = os.path.abspath(os.fspath(source_root) if source_root is not None else os.getcwd())
    kinds = list(LeakKind)
    rule_index = {kind: i for i, kind in enumerate(kinds)}
    invocation: dict[str, Any] = {"executionSuccessful": True}
    if command_line is not None:
        invocation["commandLine"] = shlex.join(command_line)
        invocation["arguments"] = list(command_line[1:])
    invocation["workingDirectory"] = {"uri": _root_uri(os.getcwd())}
    run: dict[str, Any] = {
        "tool": {
            "driver": {
                "name": TOOL_NAME,
                "informationUri": INFORMATION_URI,
                "version": _tool_version(),
                "rules": [_rule(kind) for kind in kinds],
            }
        },
        "invocations": [invocation],
        "originalUriBaseIds": {SRCROOT: {"uri": _root_uri(root)}},
        "results": [_result(f, rule_index[f.kind], report, root) for f in report.findings],
        "properties": {
            "binary": report.binary,
            "args": list(report.args),
            "contract": report.contract,
            "profile": report.profile,
            "adversary": report.adversary,
            "observers": list(report.observers),
            "granularity": report.granularity,
            "seed": report.seed,
            "modes": [
                {"mode": m.mode, "trials": m.trials, "instructions": m.instructions,
                 "cost": m.cost, "distinctTraces": dict(m.distinct_traces)}
                for m in report.modes
            ],
        },
    }
    return {"$schema": SARIF_SCHEMA, "version": SARIF_VERSION, "runs": [run]}


def to_suite_sarif(
    entries: Sequence[tuple[str, CheckReport | None, str]],
    *,
    command_line: Sequence[str] | None = None,
    source_root: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """One SARIF log for a suite: one run per entry ``(name, report, error)``, as
    :func:`to_sarif` writes it; an entry that failed is a run whose invocation did not
    succeed, with the error as a notification."""
    runs = []
    for name, report, error in entries:
        if report is not None:
            run = to_sarif(report, command_line=command_line, source_root=source_root)["runs"][0]
        else:
            run = {"tool": {"driver": {"name": TOOL_NAME, "informationUri": INFORMATION_URI,
                                       "version": _tool_version()}},
                   "invocations": [{"executionSuccessful": False,
                                    "toolExecutionNotifications": [
                                        {"level": "error", "message": {"text": error}}]}],
                   "results": []}
        run["automationDetails"] = {"id": f"leakdbt-suite/{name}/"}
        runs.append(run)
    return {"$schema": SARIF_SCHEMA, "version": SARIF_VERSION, "runs": runs}
