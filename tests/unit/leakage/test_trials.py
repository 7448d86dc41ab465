"""Trials: every kind of secret source really reaches the program, public inputs stay
fixed, and trial values are reproducible and cover the edge cases."""

from __future__ import annotations

from pathlib import Path

import pytest

from leakdbt.contract import load, loads
from leakdbt.dbt.dispatch import Mode
from leakdbt.errors import ContractError
from leakdbt.leakage.trials import Observation, TrialInput, TrialSetup, trial_inputs
from tests.unit.dbt.harness import compile_program

SOURCE = r"""
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

uint8_t secret_global[4] = {1, 2, 3, 4};

__attribute__((noipa)) void take(uint64_t x, const uint8_t *p)
{
    printf("reg=%016llx ptr=%02x%02x%02x%02x\n", (unsigned long long)x, p[0], p[1], p[2], p[3]);
}

int main(int argc, char **argv)
{
    uint8_t in[6] = {0}, buf[4] = {9, 9, 9, 9}, file[3] = {0};
    ssize_t n = read(0, in, sizeof in);
    FILE *f = fopen("keys/k.bin", "rb");
    size_t got = f ? fread(file, 1, sizeof file, f) : 0;
    printf("argv=%s env=%s stdin=%zd:%02x%02x%02x%02x%02x%02x file=%zu:%02x%02x%02x\n",
           argc > 2 ? argv[2] : "-", getenv("PIN") ? getenv("PIN") : "-", n, in[0], in[1],
           in[2], in[3], in[4], in[5], got, file[0], file[1], file[2]);
    printf("global=%02x%02x%02x%02x\n", secret_global[0], secret_global[1],
           secret_global[2], secret_global[3]);
    take(0x1111, buf);
    return 0;
}
"""

CONTRACT = """
version = 1
[[secret]]
name = "a"
argv = 2
length = 2
[[secret]]
name = "e"
env = "PIN"
length = 1
format = "decimal"
[[secret]]
name = "s"
stdin = true
offset = 2
length = 2
[[secret]]
name = "f"
file = "keys/k.bin"
offset = 1
length = 2
[[secret]]
name = "r"
register = "rdi"
function = "take"
length = 8
[[secret]]
name = "p"
pointer = "rsi"
function = "take"
length = 4
[[secret]]
name = "g"
symbol = "secret_global"
length = 4
[protect]
adversary = "remote"
[check]
args = ["first"]
stdin = "AB"
env = { LC_ALL = "C" }
[check.values]
a = ["beef"]
"""


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("sources")
    exe = compile_program(d, "sources", {"sources.c": SOURCE}, "static")
    (d / "c.toml").write_text(CONTRACT)
    return exe


def test_every_source_kind_reaches_the_program(program: Path) -> None:
    contract = load(program.parent / "c.toml", binary=str(program))
    setup = TrialSetup(str(program), contract, Mode.FAST)
    values = (("a", b"\xca\xfe"), ("e", b"\x07"), ("s", b"\x10\x20"), ("f", b"\x30\x40"),
              ("r", (0x0123456789ABCDEF).to_bytes(8, "little")), ("p", b"\xde\xad\xbe\xef"),
              ("g", b"\xaa\xbb\xcc\xdd"))
    run = setup.run(TrialInput(0, values), Observation(("control-flow",), 64, ()))
    assert run.status == 0, run.stderr
    assert run.stdout.decode().splitlines() == [
        # argv[1] public, argv[2] the hex secret; env decimal, zero-padded; stdin public
        # "AB" then the secret at offset 2; the file: a zero byte, then the secret
        "argv=cafe env=007 stdin=4:414210200000 file=3:003040",
        "global=aabbccdd",
        "reg=0123456789abcdef ptr=deadbeef",
    ]
    inputs = setup.secrets(TrialInput(0, values))
    assert inputs.argv(str(program))[1:] == ["first", "cafe"]
    assert inputs.env() == ["LC_ALL=C", "PIN=007"]


def test_trial_values_are_reproducible_and_cover_edge_cases(program: Path) -> None:
    contract = load(program.parent / "c.toml", binary=str(program))
    trials = trial_inputs(contract, 12, seed=9)
    assert trials == trial_inputs(contract, 12, seed=9)
    assert trials != trial_inputs(contract, 12, seed=10)
    a = [dict(t.values)["a"] for t in trials]
    assert a[0] == b"\xbe\xef"  # check.values first
    g = [dict(t.values)["g"] for t in trials]
    assert g[1] == bytes(4) and g[2] == b"\xff" * 4  # all zero, all ones
    assert g[4][:1] == g[0][:1]  # shares a prefix with the first trial
    assert len(set(g)) >= 10


def test_check_values_must_fit_their_secret() -> None:
    with pytest.raises(ContractError, match=r"check\.values\.k\[0\]: 'abc' is not a value of "
                                            r"k \(hex\): expected 4 hexadecimal digits"):
        loads('version = 1\n[[secret]]\nname = "k"\nargv = 1\nlength = 2\n'
              '[protect]\nadversary = "remote"\n[check.values]\nk = ["abc"]\n')
    with pytest.raises(ContractError, match="no secret is called 'x'"):
        loads('version = 1\n[[secret]]\nname = "k"\nargv = 1\nlength = 2\n'
              '[protect]\nadversary = "remote"\n[check.values]\nx = ["abcd"]\n')
