"""Heap tables end to end (docs/passes.md, "Heap tables"): test_binaries/heap_table builds the
AES S-box in malloc'ed memory and indexes it with key bytes.  Hardened, it prints what the
native program prints for every key, the allocation bounds come from the allocator calls
leakdbt watched, and `check` finds the original's memory-access leak but none in the
hardened code.  Placed elsewhere (its own mapping, a block over the cap, the stack), the
S-box access — whose index the block bounds (``movzx ecx, cl``: 0..255) — scans the 256
bytes from the S-box pointer, bounded by the allocation or the mapping holding that
pointer (value-range bounds); with the bounding instruction outside the region it gets
only allocation bounds, and on the stack runs unhardened and says so."""

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
WHERE = {  # heap_table's third argument -> how the S-box access (+0x12) gets its bounds
    "mmap": "allocation 0, object 0, mapping 160",  # its own anonymous mapping
    "big": "allocation 160, object 0, mapping 0",  # a 128 KiB block: the span is 256 bytes
    "stack": "allocation 0, object 0, mapping 160",  # main's frame: the stack's mapping
}


@pytest.mark.parametrize("kind", ["static", "dynamic"])
@pytest.mark.parametrize("where", list(WHERE))
def test_other_places_of_the_table(built: Path, kind: str, where: str) -> None:
    """The S-box's span (256 bytes from its pointer, from ``movzx ecx, cl``) in its own
    mapping, inside a block over the heap-table cap, or on the stack: hardened, bounded by
    the mapping or allocation holding the pointer, and nothing on stderr but --stats."""
    key, block = "2b7e151628aed2a6abf7158809cf4f3c", "00112233445566778899aabbccddeeff"
    native = run_native([binary(kind, "heap_table"), key, block, where])
    status, stdout, stderr = _exec(kind, key, "--stats", args=(block, where))
    assert (status, stdout) == (native.status, native.stdout), stderr
    assert f"{'sub_bytes_heap+0x12':<30} {WHERE[where]}\n" in stderr, stderr
    for access in (a for a in ACCESSES if a != "sub_bytes_heap+0x12"):
        assert f"{access:<30} allocation 160, object 0, mapping 0\n" in stderr
    assert not [line for line in stderr.splitlines() if line.startswith("leakdbt: ")]


def _from_the_lookup(tmp_path: Path) -> Path:
    """heap_table's contract with the region starting at the S-box load (+0x12): the
    ``movzx ecx, cl`` that bounds its index is outside, so it gets allocation bounds only."""
    text = Path(CONTRACT).read_text()
    assert 'at = "sub_bytes_heap+0x8"' in text
    contract = tmp_path / "heap_table_12.toml"
    contract.write_text(text.replace('at = "sub_bytes_heap+0x8"', 'at = "sub_bytes_heap+0x12"'))
    return contract


def test_stack_table_without_a_value_range_runs_unhardened(built: Path, tmp_path: Path
                                                           ) -> None:
    """The same S-box on the stack, its index's bound outside the region: no allocation,
    object or anonymous mapping holds it, so the access runs its original code (the output
    is still the native one), reported once on stderr and counted in --stats."""
    key, block = "2b7e151628aed2a6abf7158809cf4f3c", "00112233445566778899aabbccddeeff"
    native = run_native([binary("static", "heap_table"), key, block, "stack"])
    out = run_leakdbt(["exec", "--contract", str(_from_the_lookup(tmp_path)), "--cpu", CPU,
                       "--mode", "hardened", "--stats", binary("static", "heap_table"), key,
                       block, "stack"])
    assert (out.status, out.stdout) == (native.status, native.stdout), out.stderr.decode()
    stderr = out.stderr.decode()
    why = UNKNOWN.format(n=8)
    assert f"{'sub_bytes_heap+0x12':<30} allocation 0, object 0, mapping 0, unhardened 160 " \
        f"({why})\n" in stderr, stderr
    assert [line for line in stderr.splitlines() if line.startswith("leakdbt: ")] == [
        f"leakdbt: sub_bytes_heap+0x12: heap-table access not hardened: {why}; it ran its "
        "original code"]


@pytest.mark.parametrize("bounded", [True, False])
def test_check_on_a_stack_table(built: Path, tmp_path: Path, bounded: bool) -> None:
    """``check --mode hardened`` with the S-box on the stack: no leak when the region holds
    the bounding ``movzx`` (value-range bounds); the leak of the access left unhardened
    when it does not."""
    contract = CONTRACT if bounded else str(_from_the_lookup(tmp_path))
    out = run_leakdbt(["check", "--contract", contract, "--cpu", CPU, "--mode", "hardened",
                       "--trials", "4", "--directed-rounds", "0", "--format", "json",
                       binary("static", "heap_table"), "00" * 16,
                       "00112233445566778899aabbccddeeff", "stack"])
    assert out.status == (0 if bounded else 1), out.stderr.decode()
    findings = json.loads(out.stdout)["findings"]
    assert [(f["kind"], f["location"]) for f in findings] == ([] if bounded else [
        ("memory-access", "sub_bytes_heap+0x12")])


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
