"""analyze's verdicts on regions that call through the PLT or the GOT (leakdbt.analysis.
linking): the GOT slots are read as the analysed program's run bound them at the region's
first entry, as exec's translator reads them, so analyze accepts what exec hardens and
refuses (with exec's reason) what exec runs unhardened.

- GotRecord itself on test_binaries/plt_call: ``strlen`` (an IFUNC of libc) is unbound at
  main's entry, so it is refused with the translator's reason; bound by the time the secret
  region first runs (main's parse_hex called it), so it resolves to the function libc chose;
  ``mulmod`` (a plain function of libmulmod.so) resolves either way, as ld.so will bind it.
- ``analyze --write`` on plt_call accepts both predicated-call regions (it refused them with
  "only the translator resolves it" before), and exec hardens them.
- The dynamic build of the corpus' b64_decode, whole program: the regions analyze says no
  pass accepts are exactly those exec runs unhardened, with the same reasons; libb64's scan
  loops, whose iterations call base64_decode_value through libb64's own PLT, are accepted
  and hardened, and the hardened program prints what the native one prints.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from leakdbt.analysis.linking import GotRecord
from leakdbt.contract.model import ResolvedAddress
from leakdbt.dbt.dispatch import Dispatcher
from leakdbt.loader.dynsym import linkage
from leakdbt.loader.elf import load_image
from leakdbt.loader.image import Image
from leakdbt.loader.modules import ModuleMap
from leakdbt.machine.machine import Machine
from leakdbt.run.session import ExecOptions, execute
from leakdbt.x86.insn import Flow, Insn, decode
from tests.conftest import REPO, TEST_BINARIES, binary, run_leakdbt, run_native
from tests.integration.test_plt_call import CONTRACT as PLT_CONTRACT

EXPONENT = "0123456789abcdef"


def built(kind: str, name: str) -> str:
    exe = binary(kind, name)
    if not Path(exe).exists():
        subprocess.run(["make", "-s", "-C", str(TEST_BINARIES), f"build/{kind}/{name}"],
                       check=True)
    return exe


def stub_jump(image: Image, name: str) -> Insn:
    """The ``jmp [rip + slot]`` of the PLT stub of ``name``."""
    slot = next(s for s, n in linkage(image).slots.items() if n == name)
    for lo, hi in linkage(image).plt:
        for at in range(lo, hi, 4):
            insn = decode(image.read(at, 15), at)
            if insn is not None and insn.flow is Flow.INDIRECT_JUMP and insn.rip_target == slot:
                return insn
    raise AssertionError(f"no PLT stub for {name}")


def test_slots_are_read_as_bound_at_the_regions_first_entry() -> None:
    exe = built("dynamic", "plt_call")
    image = load_image(exe)
    main, modexp = image.symbol("main"), image.symbol("modexp_plt")
    assert main is not None and modexp is not None
    record = GotRecord()
    box: dict[str, ModuleMap] = {}

    def on_modules(modules: ModuleMap) -> None:
        box["modules"] = modules

    def on_start(machine: Machine, _d: Dispatcher | None) -> None:
        record.attach(machine, box["modules"])
        main_mod = next(m for m in box["modules"].modules() if m.is_main)
        for link in (main.value, modexp.value + 0x8a):
            record.first_run(link + main_mod.base)

    with open(os.devnull, "w") as null:
        execute(exe, ExecOptions(argv=[exe, EXPONENT], env=[], on_modules=on_modules,
                                 on_start=on_start, stdio=(0, null.fileno(), null.fileno())))

    def at(link: int) -> ResolvedAddress:
        return ResolvedAddress(None, exe, link, f"{link:#x}")

    strlen, mulmod = stub_jump(image, "strlen"), stub_jump(image, "mulmod")
    main_mod = next(m for m in box["modules"].modules() if m.is_main)
    lib = next(m for m in box["modules"].modules() if m.is_named("libmulmod.so"))
    libc = next(m for m in box["modules"].modules() if m.is_named("libc.so.6"))
    assert lib.image is not None and libc.image is not None
    mulmod_at = linkage(lib.image).exports["mulmod"].value + lib.base - main_mod.base
    for entry in (main.value, modexp.value + 0x8a, modexp.value):  # the last never copied
        linker = record.linker(at(entry))
        assert linker is not None
        assert linker.resolve(mulmod) == mulmod_at
        got = linker.resolve(strlen)
        if entry == modexp.value + 0x8a:  # bound: the implementation libc's resolver chose
            assert isinstance(got, int), got
            assert libc.start <= got + main_mod.base < libc.end
            assert got + main_mod.base != linkage(libc.image).exports["strlen"].value \
                + libc.base  # not the IFUNC's resolver
        else:  # unbound at main's entry, and for a region never entered
            assert strlen.rip_target is not None
            assert got == ("strlen is an IFUNC of libc.so.6, whose resolver chooses the "
                           "function when the GOT slot at "
                           f"{strlen.rip_target + main_mod.base:#x} is bound (it is not yet)")
    assert record.linker(ResolvedAddress("libnone.so", "/x", 0, "x")) is None
    # a call-site region takes the copy made at the call, unless its own entry had one
    bound = record.at_entry[modexp.value + 0x8a + main_mod.base]
    record.copy(main.value + main_mod.base, bound)
    record.copy(modexp.value + main_mod.base, bound)
    kept, copied = record.linker(at(main.value)), record.linker(at(modexp.value))
    assert kept is not None and copied is not None
    assert isinstance(kept.resolve(strlen), str) and isinstance(copied.resolve(strlen), int)


def test_analyze_accepts_the_predicated_calls_exec_hardens(tmp_path: Path) -> None:
    exe = built("dynamic", "plt_call")
    contract = tmp_path / "plt_call.toml"
    contract.write_text(PLT_CONTRACT)
    done = run_leakdbt(["analyze", "--contract", str(contract), "--write", exe, EXPONENT])
    out = done.stdout.decode()
    assert done.status == 0, done.stderr.decode()
    assert "regions: 2 suggested, 2 written, 0 grown, 0 refused" in out, out
    assert "only the translator resolves it" not in out
    assert "no pass accepts" not in contract.read_text()
    run = run_leakdbt(["exec", "--contract", str(contract), "--mode", "hardened", "--stats",
                       exe, EXPONENT])
    assert run.status == 0, run.stderr.decode()
    assert run.stdout == run_native([exe, EXPONENT]).stdout
    assert run.stderr.decode().count("{'passes': ['if-conversion', 'ct-division']}") == 2


B64_SECRET = "00112233445566778899aabbccddeeff0011223344556677"


@pytest.fixture(scope="module")
def b64(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, str]:
    """The dynamic b64_decode's contract without protect.functions, after analyze --write."""
    exe = built("dynamic", "corpus/b64_decode")
    contract = tmp_path_factory.mktemp("b64") / "b64.toml"
    text = (REPO / "contracts" / "corpus" / "b64_decode.toml").read_text()
    contract.write_text("".join(line for line in text.splitlines(keepends=True)
                                if not line.startswith("functions = ")))
    done = run_leakdbt(["analyze", "--contract", str(contract), "--write", exe, B64_SECRET])
    assert done.status == 0, done.stderr.decode()
    return exe, contract, done.stdout.decode()


def test_whole_program_verdicts_match_exec(b64: tuple[str, Path, str]) -> None:
    exe, contract, out = b64
    refused = dict(re.findall(r"no pass accepts it: suggested (\S+): ([^;]*);", out))
    assert refused, out
    assert "only the translator resolves it" not in out
    run = run_leakdbt(["exec", "--contract", str(contract), "--mode", "hardened", exe,
                       B64_SECRET])
    assert run.status == 0, run.stderr.decode()
    assert run.stdout == run_native([exe, B64_SECRET]).stdout
    unhardened = dict(re.findall(r"leakdbt: region (\S+) runs unhardened: (.*)",
                                 run.stderr.decode()))
    assert set(unhardened) == set(refused), (unhardened, refused)

    def plain(reason: str) -> str:  # the two runs may load libraries at other addresses
        return re.sub(r"0x7f[0-9a-f]+", "ADDR", reason)

    for name, reason in refused.items():
        assert plain(unhardened[name]) == plain(reason), name


def test_loops_calling_through_the_libraries_plt_are_accepted(
        b64: tuple[str, Path, str]) -> None:
    _exe, _contract, out = b64
    loops = re.findall(r"region libb64\.so\.0d:base64_decode_block\+0x\w+ kind loop "
                       r"bound rbx - r15: written\n(?!    no pass)", out)
    assert len(loops) == 3, out
