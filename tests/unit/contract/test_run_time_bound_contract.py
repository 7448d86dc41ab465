"""A loop region's run-time ``bound = "r8 - rdi"``: read and kept as written (normalised),
written back quoted, carried to bounded-loop as the ``bound`` parameter, and a string that
names no run-time bound is an error at the key's line."""

from __future__ import annotations

from pathlib import Path

import pytest

from leakdbt.contract import dumps, load, loads, plan
from leakdbt.contract.edit import RegionEntry
from leakdbt.contract.profiles import get_profile
from tests.unit.contract.test_contract_load import minimal, problems, write

LOOP = '\n[[protect.region]]\nat = "lz+0x10"\nkind = "loop"\nbound = {bound}\n'


@pytest.mark.parametrize(("text", "kept"), [
    ('"r8 - rdi"', "r8 - rdi"), ('"(rsi-rdi)/8 + 1"', "(rsi - rdi) / 8 + 1"),
    ('"r14"', "r14"), ('"rax - 1"', "rax - 1")])
def test_run_time_bounds_are_read_and_written_back(tmp_path: Path, text: str, kept: str
                                                   ) -> None:
    c = load(write(tmp_path, minimal(tail=LOOP.format(bound=text))))
    assert c.protect.regions[0].bound == kept
    dumped = dumps(c)
    assert f'bound = "{kept}"' in dumped
    assert loads(dumped) == c
    step = plan(c, get_profile("intel-skylake")).regions[0].passes[0]
    assert step.name == "bounded-loop" and dict(step.params) == {"bound": kept}


def test_analyze_writes_it_quoted() -> None:
    text = RegionEntry("f+0x69", "loop", "why", bound="r8 - rdi").toml()
    assert 'bound = "r8 - rdi"\n' in text


@pytest.mark.parametrize(("text", "message"), [
    ('"r8 + rdi"', "'r8 + rdi' is not a run-time bound"),
    ('"rsp - rdi"', "is not a run-time bound"),
    ('"(r8 - rdi) / 3"', "the step 3 must be a power of two"),
    ('"rdi - rdi"', "the two registers must differ"),
    ('"r8 - rdi + 0x80000000"', "is too large"),
    ("0", "must be at least 1, got 0"),
    ("true", "expected an integer, got a boolean"),
])
def test_bad_bounds_name_line_and_key(tmp_path: Path, text: str, message: str) -> None:
    got = problems(tmp_path, minimal(tail=LOOP.format(bound=text)))
    assert len(got) == 1, got
    line, where, said = got[0]
    assert line == 14 and where == "protect.region[0].bound"
    assert message in said, said
