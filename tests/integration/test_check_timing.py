"""``leakdbt check --timing`` end to end: the dudect-style test on real test programs.

House rule: no assertion on wall-clock values.  Host time is measured and reported, but only
the cost model (deterministic) and the counts are checked here; the exit status is checked
only where the cost model alone decides it (a cost-model leak makes it 1 whatever the host
time says)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from leakdbt.leakage.timing import THRESHOLD
from tests.conftest import REPO, binary, run_leakdbt

CONTRACTS = REPO / "contracts"
PROFILE = "intel-skylake"
MEASUREMENTS = 30  # 15 per class: a few seconds per program


def timing(contract: str, program: str, *options: str, fmt: str = "json"
           ) -> tuple[int, Any]:
    run = run_leakdbt(["check", "--timing", "--measurements", str(MEASUREMENTS), "--cpu",
                       PROFILE, "--contract", str(CONTRACTS / f"{contract}.toml"),
                       "--format", fmt, *options, binary("static", program)])
    assert run.status in (0, 1), run.stderr.decode()
    text = run.stdout.decode()
    return run.status, json.loads(text) if fmt == "json" else text


def cost_t(mode: dict[str, Any]) -> float:
    t = mode["cost_model"]["t"]
    return float(t)  # "inf" / "-inf" when both classes are constant and differ


def check_counts(mode: dict[str, Any]) -> None:
    assert mode["measurements"] == {"fixed": MEASUREMENTS // 2,
                                    "random": MEASUREMENTS - MEASUREMENTS // 2}
    for key in ("host_time", "cost_model"):
        assert mode[key]["fixed"]["n"] == MEASUREMENTS // 2
        assert mode[key]["random"]["n"] == MEASUREMENTS - MEASUREMENTS // 2
    assert mode["errors"] == 0


def test_ct_modexp_original_cost_model_leaks(built: Path) -> None:
    """modexp branches on each exponent bit (multiply + div when set): the all-zero fixed
    exponent runs fewer instructions than random ones."""
    status, report = timing("ct_modexp", "ct_modexp")
    (mode,) = report["modes"]
    assert mode["mode"] == "original"
    check_counts(mode)
    assert report["fixed"] == {"exponent": "00" * 8}
    assert report["fixed_origin"] == {"exponent": "all zero bytes"}
    assert report["threshold"] == THRESHOLD == 4.5
    cost = mode["cost_model"]
    assert cost_t(mode) < -THRESHOLD and cost["leak"] is True  # fixed is cheaper
    assert cost["fixed"]["stdev"] == 0  # one value, one path
    assert cost["random"]["mean"] > cost["fixed"]["mean"]
    fixed_insns, random_insns = mode["instructions"]["fixed"], mode["instructions"]["random"]
    assert fixed_insns[0] == fixed_insns[1] < random_insns[0] <= random_insns[1]
    assert mode["leak"] is True and report["leaks"] is True
    assert status == 1


def test_ct_modexp_hardened_cost_model_is_constant(built: Path) -> None:
    _status, report = timing("ct_modexp", "ct_modexp", "--mode", "hardened")
    (mode,) = report["modes"]
    assert mode["mode"] == "hardened"
    check_counts(mode)
    t = cost_t(mode)
    assert t == 0 or abs(t) <= THRESHOLD
    assert mode["cost_model"]["leak"] is False
    assert mode["cost_model"]["fixed"]["stdev"] == mode["cost_model"]["random"]["stdev"] == 0


def test_openssl_consttime_modexp_cost_model_is_constant(built: Path) -> None:
    """BN_mod_exp_mont_consttime: a fixed window with masked gathers, no secret branch."""
    _status, report = timing("ossl_modexp_ct", "ossl_modexp")
    (mode,) = report["modes"]
    check_counts(mode)
    t = cost_t(mode)
    assert math.isfinite(t) and abs(t) <= THRESHOLD
    assert mode["cost_model"]["leak"] is False


def test_both_modes_as_text(built: Path) -> None:
    status, text = timing("ct_modexp", "ct_modexp", "--mode", "both", fmt="text")
    assert status == 1  # the original's cost model
    assert "original: 15 fixed, 15 random measurements" in text
    assert "hardened: 15 fixed, 15 random measurements" in text
    assert "not the native program's timing" in text
    assert "a model, not a measurement" in text
    assert "|t| > 4.5" in text
    assert text.count("verdict:") == 2
    assert "LEAK: " in text and "cost model differ" in text  # "differ" or "differs"


def test_timing_usage_errors(built: Path) -> None:
    program = binary("static", "ct_modexp")
    contract = str(CONTRACTS / "ct_modexp.toml")
    for options in (["--measurements", "20"], ["--timing", "--measurements", "5"],
                    ["--timing", "--format", "sarif"], ["--timing", "--trials", "4"],
                    ["--timing", "--replay", "0,1"]):
        run = run_leakdbt(["check", "--contract", contract, *options, program])
        assert run.status == 2, (options, run.stderr.decode())
        assert run.stdout == b""
