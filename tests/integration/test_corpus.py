"""Issue 15's corpus of real library code (test_binaries/corpus, contracts/corpus): leaky
functions of libtomcrypt, libb64, Nettle, GMP, Mbed TLS and libgcrypt, from Debian's static
archives,
run through the user's workflow with ``ct-equivalent`` switched off (``passes_off``):
``analyze --write`` on a copy of the contract, then ``exec --mode hardened`` against native,
then ``check --mode hardened``.  docs/benchmarks.md ("Corpus") has the figures.

What the tests assert is what holds today, per function (the ground truth is each library's
documented non-constant-time behaviour, named in the harness's comment):

- analyze finds the leak the library is known for, in the function the contract scopes;
- where analyze's regions are hardened (SAME_OUTPUT): the hardened program prints what the
  native one prints, for the fixed secrets; and (NO_LEAK) ``check --mode hardened`` finds no
  leak;
- a block whose lookups index several tables (TABLE_SPANS) gets one table region whose
  bounds span them all;
- where they are refused (REFUSED): the run stops with exit status 2 and the refusal's one
  line, never a traceback; and (RUN_ON) a whole-program contract (no ``protect.functions``)
  runs the same program to the end, hardening what it can and reporting the region it
  could not;
- (WHOLE) every function's contract without ``protect.functions``, analyzed as it is (the
  whole program in scope: glibc's string and stdio functions, ``main``'s parsing): the
  hardened run exits 0 and prints what native prints, every region written has an outcome
  in ``--stats``, those not hardened are exactly those analyze said no pass accepts, each
  named on stderr with its reason, and the library function's own regions (WHOLE_HARDENS)
  are hardened; with ``--strict`` the first of them is the run's one-line error.

Cost: each expensive step runs once per module — analyze once per function (the
``analyzed`` fixture), each native run once (``native``) — and the end-to-end runs are few:
one secret per hardened function, two random check trials and one round of directed ones,
and one scoped and one whole-program run per distinct refusal (``distinct``); what analyze
printed carries every function's refusal.  Whole-program contracts: one analyze and one
hardened run per function (``whole_analyzed``), one ``--strict`` run in all.
``LEAKDBT_CORPUS_SWEEP=N`` is the sweep: the fixed secrets and N random ones per hardened
function (and per whole-program contract), the contracts' own check trials, and every
refused function run both ways.
"""

from __future__ import annotations

import ast
import functools
import os
import random
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, TEST_BINARIES, Run, binary, run_leakdbt, run_native

CONTRACTS = REPO / "contracts" / "corpus"
SWEEP = int(os.environ.get("LEAKDBT_CORPUS_SWEEP", "0"))  # random secrets per function


@dataclass(frozen=True)
class Case:
    """One corpus function: its harness, secret length, and what analyze must find."""

    length: int  # secret bytes (argv[1] in hex)
    leaks: tuple[str, ...]  # lines analyze must print: "KIND at FUNCTION+"
    secrets: tuple[str, ...]  # fixed secrets for the hardened runs
    scoped: bool = True  # analyze the contract as it is (False: without protect.functions)


CORPUS = {
    # libtomcrypt 1.18: DES rounds index SP1..SP8, the final permutation des_fp
    "tc_des": Case(8, ("memory-access at desfunc+",),
                   ("0123456789abcdef", "fedcba9876543210")),
    # libtomcrypt 1.18: AES T-tables TE0..TE3 and Te4_*
    "tc_aes": Case(16, ("memory-access at rijndael_ecb_encrypt+",),
                   ("2b7e151628aed2a6abf7158809cf4f3c", "ff" * 16)),
    # libtomcrypt 1.18: Blowfish's key-dependent S-boxes (in the key schedule, on the stack)
    "tc_blowfish": Case(16, ("memory-access at blowfish_ecb_encrypt+",),
                        ("0123456789abcdeffedcba9876543210",)),
    # libtomcrypt 1.18: map_base64 lookup and branches on the decoded value
    "tc_base64": Case(24, ("memory-access at _base64_decode_internal+",
                           "control-flow at _base64_decode_internal+"),
                      ("000102030405060708090a0b0c0d0e0f10111213fcfdfeff",)),
    # libb64 1.2: base64_decode_value's table and base64_decode_block's branch on it
    "b64_decode": Case(24, ("control-flow at base64_decode_block+",),
                       ("000102030405060708090a0b0c0d0e0f10111213fcfdfeff",)),
    # Nettle 3.8: hex_decode_table lookup and branches on the digit
    "nettle_base16": Case(16, ("memory-access at nettle_base16_decode_single+",
                               "control-flow at nettle_base16_decode_single+"),
                          ("00112233445566778899aabbccddeeff",)),
    # Nettle 3.8: DES rounds index des_keymap
    "nettle_des": Case(8, ("memory-access at nettle_des_encrypt+",),
                       ("0123456789abcdef", "fedcba9876543210")),
    # GMP 6.2: mpz_powm's sliding window (mpz_powm_sec is GMP's side-channel silent one)
    "gmp_powm": Case(32, ("control-flow at __gmpn_powm+", "memory-access at __gmpn_powm+"),
                     ("0123456789abcdef" * 4,)),
    # Mbed TLS 2.28: mbedtls_mpi_cmp_mpi returns at the first differing limb
    "mbed_mpi_cmp": Case(32, ("control-flow at mbedtls_mpi_cmp_mpi+",),
                         ("8000000000000000" * 4,)),
    # Nettle 3.8: base64_decode_single's table lookup and branches on the value
    "nettle_base64": Case(24, ("memory-access at nettle_base64_decode_single+",
                               "control-flow at nettle_base64_decode_single+"),
                          ("000102030405060708090a0b0c0d0e0f10111213fcfdfeff",)),
    # libgcrypt 1.10: gcry_mpi_cmp (do_mpi_cmp) returns at the first differing limb
    "gcry_cmp": Case(32, ("control-flow at do_mpi_cmp+",), ("8000000000000000" * 4,)),
}


# Functions whose analyzed regions all harden: the hardened program prints what the native
# one prints ...
SAME_OUTPUT = ("tc_des", "tc_aes", "tc_blowfish", "nettle_des", "mbed_mpi_cmp", "b64_decode",
               "tc_base64", "nettle_base16", "nettle_base64", "gcry_cmp")
# ... and `check --mode hardened` finds no leak: issue 15's whole workflow.
NO_LEAK = ("tc_des", "tc_aes", "tc_blowfish", "nettle_des", "mbed_mpi_cmp", "b64_decode",
           "tc_base64", "nettle_base16", "nettle_base64", "gcry_cmp")
# A block whose secret-indexed loads touch several tables: the one region analyze writes for
# it (at, its bounds as written, how many tables its `why` names).  DES: SP8..SP1 (2 KiB,
# contiguous); AES: TE3..TE0 (with TD0 and Td4 between them: 6 KiB).
TABLE_SPANS = {
    "tc_des": ("desfunc+0xd8", 'symbol = "SP8"\nlength = 2048', 8),
    "tc_aes": ("rijndael_ecb_encrypt+0x98", 'symbol = "TE3"\nlength = 6144', 4),
}
# Functions whose analyzed region no pass hardens: the reason the run stops with.
REFUSED = {
    # the window loop's secret exit: with it suppressed the loop did not end within its
    # trip budget, so analyze wrote it with "loop bound unknown"
    "gmp_powm": "cannot be hardened: bounded-loop: needs the contract's `bound`",
}
# Refused, and run to the end as they are by a whole-program contract (no protect.functions).
RUN_ON = ("gmp_powm",)


def program(name: str, kind: str = "static") -> str:
    exe = binary(kind, f"corpus/{name}")
    if not Path(exe).exists():
        subprocess.run(["make", "-s", "-C", str(TEST_BINARIES), f"build/{kind}/corpus/{name}"],
                       check=True)
    return exe


@dataclass(frozen=True)
class Analyzed:
    """A copy of a corpus contract after ``analyze --write``, and what analyze printed."""

    contract: Path
    output: str


@pytest.fixture(scope="module")
def analyzed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Analyzed]:
    """name -> its analyzed contract, made on first use (analyze runs once per function)."""
    directory = tmp_path_factory.mktemp("corpus")

    class Lazy(dict[str, Analyzed]):
        def __missing__(self, name: str) -> Analyzed:
            contract = directory / f"{name}.toml"
            lines = (CONTRACTS / f"{name}.toml").read_text().splitlines(keepends=True)
            contract.write_text("".join(line for line in lines if CORPUS[name].scoped
                                        or not line.startswith("functions")))
            done = run_leakdbt(["analyze", "--contract", str(contract), "--write",
                                program(name), CORPUS[name].secrets[0]])
            assert done.status == 0, done.stderr.decode()
            self[name] = Analyzed(contract, done.stdout.decode())
            return self[name]

    return Lazy()


@functools.cache
def native(name: str, secret: str) -> bytes:
    """What the native harness prints for ``secret`` (each run once per session)."""
    done = run_native([program(name), secret])
    assert done.status == 0, done.stderr.decode()
    return done.stdout


def secrets(name: str) -> list[str]:
    """The first fixed secret, or (LEAKDBT_CORPUS_SWEEP=N) the fixed ones and N random."""
    if not SWEEP:
        return list(CORPUS[name].secrets[:1])
    rng = random.Random(f"corpus-{name}")
    return [*CORPUS[name].secrets,
            *(rng.randbytes(CORPUS[name].length).hex() for _ in range(SWEEP))]


def distinct(names: list[str] | tuple[str, ...]) -> list[str]:
    """The first of ``names`` (sorted) for each distinct refusal in REFUSED: the end-to-end
    runs of the default run (the sweep: all of them)."""
    if SWEEP:
        return sorted(names)
    first: dict[str, str] = {}
    for name in sorted(names):
        first.setdefault(REFUSED[name], name)
    return sorted(first.values())


def hardened(contract: Path, name: str, secret: str, *extra: str, kind: str = "static"
             ) -> Run:
    return run_leakdbt(["exec", "--contract", str(contract), "--mode", "hardened", *extra,
                        program(name, kind), secret])


def one_line_error(done: Run) -> str:
    """A refusal: exit status 2 and one line on stderr, no traceback."""
    err = done.stderr.decode()
    assert done.status == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_native_harnesses_compute_what_the_libraries_document() -> None:
    """Known answers: FIPS 46 / FIPS 197 vectors, decoders give back the secret, GMP's power
    is Python's, Mbed TLS's and libgcrypt's comparisons are Python's."""
    des = "3fa40e8a984d4815"  # "Now is t" under 0123456789abcdef
    assert native("tc_des", "0123456789abcdef").decode().startswith(f"tc_des: ct={des},")
    assert native("nettle_des", "0123456789abcdef").decode() \
        .startswith(f"nettle_des: ct={des}")
    assert native("tc_aes", "2b7e151628aed2a6abf7158809cf4f3c") == \
        b"tc_aes: ct=3925841d02dc09fbdc118597196a0b32\n"
    data = "00ff10fbeffc" * 4
    for name in ("tc_base64", "b64_decode", "nettle_base64"):
        assert native(name, data).decode() == f"{name}: n=24 data={data}\n"
    assert native("nettle_base16", "00112233445566778899AaBbCcDdEeFf") \
        == b"nettle_base16: n=16 data=00112233445566778899aabbccddeeff\n"
    e = "0123456789abcdef" * 4
    m, b = 2**256 - 189, 0x243f6a8885a308d313198a2e03707344a4093822299f31d0082efa98ec4e6c89
    assert native("gmp_powm", e).decode() == \
        f"gmp_powm: r={pow(b, 2**256 + int(e, 16), m):064x}\n"
    x = 2**256 + int("7f" * 32, 16)
    bounds = (2**256 + 2**255, 2**257 - 1, 2**256 + 1)
    want = ",".join(str((x > y) - (x < y)) for y in bounds)
    for name in ("mbed_mpi_cmp", "gcry_cmp"):
        assert native(name, "7f" * 32).decode() == f"{name}: cmp={want}\n"


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_analyze_finds_the_documented_leak(analyzed: dict[str, Analyzed], name: str) -> None:
    """analyze (taint) reports the library's known leak inside the scoped function, and
    writes at least one region for it."""
    result = analyzed[name]
    for leak in CORPUS[name].leaks:
        assert f"  {leak}" in result.output, result.output
    assert ": written" in result.output
    assert "[[protect.region]]" in result.contract.read_text()


@pytest.mark.parametrize("name", SAME_OUTPUT)
def test_hardened_prints_what_native_prints(analyzed: dict[str, Analyzed], name: str) -> None:
    contract = analyzed[name].contract
    for secret in secrets(name):
        done = hardened(contract, name, secret)
        assert done.status == 0, done.stderr.decode()
        assert done.stdout == native(name, secret), secret


@pytest.mark.parametrize("name", sorted(TABLE_SPANS))
def test_one_region_spans_every_table_its_block_indexes(analyzed: dict[str, Analyzed],
                                                        name: str) -> None:
    """libtomcrypt's DES round indexes SP1..SP8 from one block, its AES round TE0..TE3: the
    table region analyze writes for the block covers every table its lookups touched (a
    region naming one of them would leave the others' lookups running as they are)."""
    at, bounds, count = TABLE_SPANS[name]
    text = analyzed[name].contract.read_text()
    assert f'at = "{at}"\nkind = "table"\n{bounds}\n' in text, text
    assert f"it indexes {count} tables (" in text


def test_scan_loops_get_run_time_bounds(analyzed: dict[str, Analyzed]) -> None:
    """libb64's four decoding loops also end at the input's end (``codechar == end``, a
    public test in each header): analyze writes that test as each loop's run-time bound,
    which holds for any input length, not a count measured on one run."""
    text = analyzed["b64_decode"].contract.read_text()
    assert text.count('kind = "loop"\nbound = "r8 - rdi"\n') == 4, text


@pytest.mark.parametrize("name", NO_LEAK)
def test_analyzed_contract_leaves_no_leak(analyzed: dict[str, Analyzed], name: str) -> None:
    """DES (libtomcrypt: SP8..SP1 as one span, and des_fp; Nettle: des_keymap), AES (the
    T-tables), Blowfish (stack S-boxes, value-range bounds), Mbed TLS's comparison (a
    bounded loop, bound 5 measured by analyze), Nettle's base16 decoder (if-converted,
    its table load scanned inside the branch region) and libtomcrypt's base64 decoder
    (if-converted one loop iteration at a time; map_base64 is a pointer argument: the
    entry block's load and the three in arms are value-range scans from it, the arms' with
    if-conversion's ``keep`` guard): no leak once hardened.  Two random trials
    and a round of directed ones, which set a secret's bytes to what it was compared with
    (the sweep: the contract's trials)."""
    trials = [] if SWEEP else ["--trials", "2", "--directed-rounds", "1"]
    done = run_leakdbt(["check", "--contract", str(analyzed[name].contract), "--mode",
                        "hardened", *trials, program(name), CORPUS[name].secrets[0]])
    assert done.status == 0, done.stdout.decode() + done.stderr.decode()
    assert "no leak found" in done.stdout.decode()



def test_stack_sboxes_get_value_range_bounds(analyzed: dict[str, Analyzed]) -> None:
    """Blowfish's S-boxes are in the key schedule, here a symmetric_key on main's stack: no
    allocation, ELF object or anonymous mapping holds them, but every index is a byte of
    the state (``movzx``/``shr 0x18`` in the block), so each lookup scans the 1 KiB from its
    public base, bounded by the stack's mapping (523 calls: 521 in the key setup, 2 blocks)."""
    secret = CORPUS["tc_blowfish"].secrets[0]
    done = hardened(analyzed["tc_blowfish"].contract, "tc_blowfish", secret, "--stats")
    assert done.status == 0, done.stderr.decode()
    assert done.stdout == native("tc_blowfish", secret)
    err = done.stderr.decode()
    assert f"{'blowfish_ecb_encrypt+0x4b':<30} allocation 0, object 0, mapping 523\n" in err
    assert "blowfish_ecb_encrypt+0x4b: heap-table access not hardened" not in err


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_analyze_says_why_no_pass_accepts_the_region(analyzed: dict[str, Analyzed],
                                                     name: str) -> None:
    """analyze judges its regions as exec would, and says which one no pass accepts and why
    (the reason exec stops with, below)."""
    out = analyzed[name].output
    assert "no pass accepts it: " in out, out
    assert REFUSED[name].removeprefix("cannot be hardened: ") in out, out


@pytest.mark.parametrize("name", distinct(sorted(REFUSED)))
def test_refused_region_stops_the_scoped_run_with_its_reason(
        analyzed: dict[str, Analyzed], name: str) -> None:
    """A contract naming its functions is strict: the refusal is the run's one-line error."""
    err = one_line_error(hardened(analyzed[name].contract, name, CORPUS[name].secrets[0]))
    assert REFUSED[name] in err


@pytest.mark.parametrize("name", distinct(RUN_ON))
def test_whole_program_contract_runs_the_refused_region_and_reports_it(
        analyzed: dict[str, Analyzed], name: str, tmp_path: Path) -> None:
    """The same regions in a whole-program contract (no protect.functions): the run goes on
    with the region unhardened, prints what native prints, and --stats says why."""
    whole = tmp_path / f"{name}.toml"
    whole.write_text("".join(line for line in analyzed[name].contract.read_text()
                             .splitlines(keepends=True) if not line.startswith("functions")))
    secret = CORPUS[name].secrets[0]
    done = hardened(whole, name, secret, "--stats")
    assert done.status == 0, done.stderr.decode()
    assert done.stdout == native(name, secret)
    reason = REFUSED[name].removeprefix("cannot be hardened: ")
    assert f"'unhardened': \"{reason}" in done.stderr.decode() \
        or f"'unhardened': '{reason}" in done.stderr.decode()


# Whole-program contracts (WHOLE): each corpus contract without protect.functions, analyzed as
# it is.  The regions of the library function itself that its whole-program run hardens (the
# others, in glibc and main, are judged by what analyze said of them).
WHOLE_HARDENS = {
    "tc_des": ("desfunc+0xd8", "desfunc+0x1d7"),
    "tc_aes": ("rijndael_ecb_encrypt+0x98",),
    "tc_blowfish": ("blowfish_ecb_encrypt+0x1f",),
    "nettle_des": ("nettle_des_encrypt+0x30",),
    "gmp_powm": ("__gmpn_powm",),
}
WHOLE_STRICT = "mbed_mpi_cmp"  # the --strict run (the fastest whole-program run)


def without_functions(text: str) -> str:
    """A contract's text without its ``protect.functions``: the whole program in scope."""
    return "".join(line for line in text.splitlines(keepends=True)
                   if not line.startswith("functions"))


@pytest.fixture(scope="module")
def whole_analyzed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Analyzed]:
    """name -> its contract without protect.functions after ``analyze --write``, made on
    first use (one analyze per function)."""
    directory = tmp_path_factory.mktemp("corpus-whole")

    class Lazy(dict[str, Analyzed]):
        def __missing__(self, name: str) -> Analyzed:
            self[name] = analyze_whole(directory, name, program(name))
            return self[name]

    return Lazy()


def analyze_whole(directory: Path, name: str, exe: str) -> Analyzed:
    """``name``'s contract without protect.functions, in ``directory``, after ``analyze
    --write`` on ``exe`` with the function's first secret."""
    contract = directory / f"{name}.toml"
    contract.write_text(without_functions((CONTRACTS / f"{name}.toml").read_text()))
    done = run_leakdbt(["analyze", "--contract", str(contract), "--write", exe,
                        CORPUS[name].secrets[0]])
    assert done.status == 0, done.stderr.decode()
    return Analyzed(contract, done.stdout.decode())


def hardened_report(contract: Path, name: str, kind: str
                    ) -> tuple[dict[str, dict[str, object]], str]:
    """``name``'s ``kind`` build run hardened under ``contract`` with its first secret: it
    must print what native prints; its ``--stats`` hardening report, and its stderr."""
    secret = CORPUS[name].secrets[0]
    run = hardened(contract, name, secret, "--stats", kind=kind)
    err = run.stderr.decode()
    assert run.status == 0 and run.stdout == native(name, secret), err
    return hardening_report(err), err


def written_regions(contract: Path) -> list[str]:
    """The ``at`` of every region of ``contract``."""
    return re.findall(r'^at = "([^"]+)"$', contract.read_text(), re.M)


def refused_by_analyze(output: str) -> set[str]:
    """The regions analyze wrote with "no pass accepts it" (the line after the region's)."""
    out: set[str] = set()
    region = None
    for line in output.splitlines():
        if (m := re.match(r"  region (\S+) kind .*: written$", line)) is not None:
            region = m.group(1)
        elif line.startswith("    no pass accepts it: ") and region is not None:
            out.add(region)
            region = None
        else:
            region = None
    return out


def hardening_report(stderr: str) -> dict[str, dict[str, object]]:
    """``--stats``'s per-region outcomes: region -> {'passes': [...], 'unhardened': why}."""
    lines = stderr.splitlines()
    assert "    hardening:" in lines, stderr
    out = {}
    for line in lines[lines.index("    hardening:") + 1:]:
        if not line.startswith("      "):
            break
        name, _, outcome = line.strip().partition(" ")
        out[name] = ast.literal_eval(outcome.strip())
    return out


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_whole_program_contract_hardens_what_it_can_and_reports_the_rest(
        whole_analyzed: dict[str, Analyzed], name: str) -> None:
    """analyze --write on the contract without protect.functions, then exec --mode hardened
    --stats: the run goes to the end and prints what native prints; every region written
    has an outcome; exactly the regions analyze said no pass accepts run unhardened, each
    reported on stderr with its reason; the library function's own regions are hardened."""
    result = whole_analyzed[name]
    written = written_regions(result.contract)
    refused = refused_by_analyze(result.output)
    assert written and refused <= set(written), result.output
    for secret in secrets(name):
        done = hardened(result.contract, name, secret, "--stats")
        err = done.stderr.decode()
        assert done.status == 0 and "Traceback" not in err, err
        assert done.stdout == native(name, secret), secret
        report = hardening_report(err)
        assert set(report) == set(written), err
        unhardened = {r: o["unhardened"] for r, o in report.items() if "unhardened" in o}
        assert set(unhardened) == refused, err
        for region, why in unhardened.items():
            assert f"leakdbt: region {region} runs unhardened: {why}\n" in err, err
        for region in WHOLE_HARDENS.get(name, ()):
            assert report[region]["passes"] and region not in unhardened, err


def test_strict_makes_a_whole_program_refusal_the_runs_error(
        whole_analyzed: dict[str, Analyzed]) -> None:
    """--strict: a region no pass accepts stops the whole-program run, in one line naming
    one of the regions analyze said no pass accepts."""
    result = whole_analyzed[WHOLE_STRICT]
    err = one_line_error(hardened(result.contract, WHOLE_STRICT,
                                  CORPUS[WHOLE_STRICT].secrets[0], "--strict"))
    m = re.match(r"leakdbt: region (\S+) cannot be hardened: ", err)
    assert m is not None and m.group(1) in refused_by_analyze(result.output), err


def test_dynamic_build_names_the_library_by_its_file(tmp_path: Path) -> None:
    """A dynamic harness: analyze names the library's regions by its file
    (libnettle.so.8.6), which the contract resolves although DT_NEEDED and the soname say
    libnettle.so.8; the library's region is hardened and the output is native's."""
    name = "nettle_base16"
    contract = analyze_whole(tmp_path, name, program(name, "dynamic")).contract
    library = [r for r in written_regions(contract) if r.startswith("libnettle.so.8.")]
    assert library, contract.read_text()
    report, err = hardened_report(contract, name, "dynamic")
    assert any(report[r]["passes"] and "unhardened" not in report[r] for r in library), err


def test_dynamic_libb64_loops_clone_their_plt_calls(tmp_path: Path) -> None:
    """The dynamic b64_decode: libb64.so's decoding loops call base64_decode_value through
    the PLT; bounded-loop clones it (with its table load scanned) in every iteration, so
    the loops are hardened and the output is native's; base64_decode_value's own region
    scans its unsized .rodata table (a value-range span from its ``lea``), so check finds
    no leak in the whole program."""
    name = "b64_decode"
    exe = program(name, "dynamic")
    contract = analyze_whole(tmp_path, name, exe).contract
    loops = [f"libb64.so.0d:base64_decode_block+{d}" for d in ("0x106", "0x152", "0xb6")]
    assert set(loops) <= set(written_regions(contract)), contract.read_text()
    report, err = hardened_report(contract, name, "dynamic")
    assert all(report[r]["passes"] == ["bounded-loop"] for r in loops), err
    value = report["libb64.so.0d:base64_decode_value"]["passes"]
    assert value == ["if-conversion", "oblivious-table"], err
    done = run_leakdbt(["check", "--contract", str(contract), "--mode", "hardened", "--trials",
                        "2", "--directed-rounds", "1", exe, CORPUS[name].secrets[0]])
    assert done.status == 0 and "no leak found" in done.stdout.decode(), done.stdout.decode()
