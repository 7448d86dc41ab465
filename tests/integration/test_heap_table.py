"""Heap tables end to end (docs/passes.md, "Heap tables"): test_binaries/heap_table builds the
AES S-box in malloc'ed memory and indexes it with key bytes.  Hardened, it prints what the
native program prints for every key, the allocation bounds come from the allocator calls
leakdbt watched, and `check` finds the original's memory-access leak but none in the
hardened code.  Placed elsewhere (its own mapping, a block over the cap, the stack), the
S-box gets the mapping's bounds, or its access runs unhardened and says so."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tests.conftest import REPO, SWEEP, binary, run_leakdbt, run_native

CONTRACT = str(REPO / "contracts" / "heap_table.toml")
CPU = "intel-skylake"
ACCESSES = ("sub_bytes_heap+0x8", "sub_bytes_heap+0xc", "sub_bytes_heap+0x12",
            "sub_bytes_heap+0x16")  # in[i], key[i], sbox[...], the store to state[i]


def _exec(kind: str, key: str, *options: str, args: tuple[str, ...] = ()
          ) -> tuple[int, bytes, str]:
    out = run_leakdbt(["exec", "--contract", CONTRACT, "--cpu", CPU, "--mode", "hardened",
                       *options, binary(kind, "heap_table"), key, *args])
    return out.status, out.stdout, out.stderr.decode()


@pytest.mark.parametrize("kind", ["static", "static-pie", "dynamic"])
def test_hardened_prints_what_native_prints(built: Path, kind: str) -> None:
    rng = random.Random(f"heap_table {kind}")
    keys = ["00" * 16, "ff" * 16, *(rng.randbytes(16).hex() for _ in range(
        (14 if SWEEP else 4) if kind == "static" else 2))]
    for key in keys:
        native = run_native([binary(kind, "heap_table"), key])
        assert native.status == 0 and native.stdout.startswith(b"heap_table: key=")
        status, stdout, stderr = _exec(kind, key)
        assert (status, stdout) == (native.status, native.stdout), stderr
        assert stderr == ""  # no access ran unhardened


def test_stats_say_which_bounds_were_used(built: Path) -> None:
    status, _, stats = _exec("dynamic", "2b7e151628aed2a6abf7158809cf4f3c", "--stats")
    assert status == 0, stats
    assert "'passes': ['oblivious-table']" in stats and "heap-table bounds:" in stats
    for access in ACCESSES:  # 10 rounds of 16 lookups, each from its own allocation
        assert f"{access:<30} allocation 160, object 0, mapping 0\n" in stats, stats


def _check(mode: str) -> dict[str, object]:
    out = run_leakdbt(["check", "--contract", CONTRACT, "--cpu", CPU, "--mode", mode,
                       "--trials", "6", "--directed-rounds", "0", "--format", "json",
                       binary("static", "heap_table")])
    assert out.status in (0, 1), out.stderr.decode()
    data: dict[str, object] = json.loads(out.stdout)
    return data


def test_check_finds_the_original_leak_and_none_when_hardened(built: Path) -> None:
    original = _check("original")
    findings = original["findings"]
    assert isinstance(findings, list)
    assert {(f["kind"], f["location"].split(" ")[0]) for f in findings} >= {
        ("memory-access", "sub_bytes_heap+0x12")}, findings
    hardened = _check("hardened")
    assert hardened["findings"] == [] and not hardened["leaks"], hardened["findings"]


UNKNOWN = ("the address is in no live allocation (allocator functions watched: {n}), no sized "
           "ELF data object and no anonymous mapping of the guest")
TOO_BIG = "its allocation is 131072 bytes, more than the 65536-byte cap on a swept table"
WHERE = {  # heap_table's third argument -> how the S-box access (+0x12) gets its bounds
    "mmap": ("mapping 160", None),  # its own anonymous mapping
    "big": (f"mapping 0, unhardened 160 ({TOO_BIG})", TOO_BIG),  # inside a 128 KiB block
    "stack": (f"mapping 0, unhardened 160 ({UNKNOWN})", UNKNOWN),  # main's frame
}


@pytest.mark.parametrize("kind", ["static", "dynamic"])
@pytest.mark.parametrize("where", list(WHERE))
def test_other_places_of_the_table(built: Path, kind: str, where: str) -> None:
    """An S-box in its own mapping gets the mapping's bounds; one inside a block over the
    cap, or on the stack, runs its original access (the output is still the native one),
    reported once on stderr and counted in --stats."""
    key, block = "2b7e151628aed2a6abf7158809cf4f3c", "00112233445566778899aabbccddeeff"
    native = run_native([binary(kind, "heap_table"), key, block, where])
    status, stdout, stderr = _exec(kind, key, "--stats", args=(block, where))
    assert (status, stdout) == (native.status, native.stdout), stderr
    watched = 8 if kind == "static" else 9  # reallocarray: linked in only when used
    stats, why = (text.format(n=watched) if text else text for text in WHERE[where])
    assert f"{'sub_bytes_heap+0x12':<30} allocation 0, object 0, {stats}\n" in stderr, stderr
    for access in (a for a in ACCESSES if a != "sub_bytes_heap+0x12"):
        assert f"{access:<30} allocation 160, object 0, mapping 0\n" in stderr
    warnings = [line for line in stderr.splitlines() if line.startswith("leakdbt: ")]
    assert warnings == ([] if why is None else [
        f"leakdbt: sub_bytes_heap+0x12: heap-table access not hardened: {why}; it ran its "
        "original code"])


def test_check_reports_the_leak_of_an_access_left_unhardened(built: Path) -> None:
    out = run_leakdbt(["check", "--contract", CONTRACT, "--cpu", CPU, "--mode", "hardened",
                       "--trials", "4", "--directed-rounds", "0", "--format", "json",
                       binary("static", "heap_table"), "00" * 16,
                       "00112233445566778899aabbccddeeff", "stack"])
    assert out.status == 1, out.stderr.decode()
    findings = json.loads(out.stdout)["findings"]
    assert [(f["kind"], f["location"]) for f in findings] == [
        ("memory-access", "sub_bytes_heap+0x12")]


def test_a_module_table_the_pass_could_not_trace_gets_its_object_bounds(
        built: Path, tmp_path: Path) -> None:
    """sbox_round's S-box is module data whose ``lea`` is hoisted out of the loop: without
    ``symbol = "SBOX"`` in the contract the region is a heap table, and at run time the S-box
    access gets the bounds of the ELF object SBOX; the state and key reads and the store
    (main's stack) run their original code, and say so."""
    text = (REPO / "contracts" / "sbox_round.toml").read_text()
    assert 'symbol = "SBOX"\n' in text
    contract = tmp_path / "sbox_round_heap.toml"
    contract.write_text(text.replace('symbol = "SBOX"\n', ""))
    key = "000102030405060708090a0b0c0d0e0f"
    native = run_native([binary("static-pie", "sbox_round"), key])
    out = run_leakdbt(["exec", "--contract", str(contract), "--cpu", CPU, "--mode", "hardened",
                       "--stats", binary("static-pie", "sbox_round"), key])
    assert (out.status, out.stdout) == (native.status, native.stdout), out.stderr.decode()
    stderr = out.stderr.decode()
    assert f"{'sub_bytes_key+0x1a':<30} allocation 0, object 160, mapping 0\n" in stderr
    why = UNKNOWN.format(n=8)
    for access in ("sub_bytes_key+0x10", "sub_bytes_key+0x14", "sub_bytes_key+0x1e"):
        assert (f"leakdbt: {access}: heap-table access not hardened: {why}; it ran its "
                "original code\n") in stderr
        assert stderr.count(f"leakdbt: {access}:") == 1
    assert "leakdbt: sub_bytes_key+0x1a" not in stderr


def test_harden_to_a_file_refuses_heap_tables(built: Path, tmp_path: Path) -> None:
    out = run_leakdbt(["harden", "--contract", CONTRACT, "--cpu", CPU, "-o",
                       str(tmp_path / "out"), binary("static", "heap_table")])
    assert out.status == 2 and not (tmp_path / "out").exists()
    assert out.stderr.decode() == (
        "leakdbt: region sub_bytes_heap+0x8: its hardened code needs run-time allocation "
        "bounds (a table in malloc'ed memory), which only the emulator learns: run it with "
        "leakdbt exec\n")
