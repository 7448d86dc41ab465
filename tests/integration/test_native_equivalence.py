"""Every test program, in every ELF kind, gives the same output bytes and exit status under
``leakdbt exec`` as when run natively — and so it does with ``--translate-all``, where every
function it calls runs from relocated copies in the code cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import KINDS, binary, run_leakdbt, run_native

ENV = {"LANG": "C", "LEAKDBT_T1": "alpha", "LEAKDBT_T2": "beta gamma"}


def _env_flags(env: dict[str, str]) -> list[str]:
    flags = ["--clear-env"]
    for k, v in env.items():
        flags += ["--env", f"{k}={v}"]
    return flags


# name -> (arguments, stdin bytes); "{dir}" is replaced by a scratch directory.
CASES: dict[str, tuple[list[str], bytes]] = {
    "hello": (["one", "two words"], b""),
    "args_env": (["LEAKDBT_T1", "LEAKDBT_T2", "MISSING", "--environ"], b""),
    "stdin_echo": ([], bytes(range(256)) * 97 + b"tail"),
    "stdin_echo-stdio": (["stdio"], b"line one\nline two\n" * 500),
    "file_io": (["{dir}"], b""),
    "mm_stress": (["3000"], b""),
    "dirlist": (["{listing}"], b""),
    "dirlist-raw": (["{listing}", "raw"], b""),
    "timecalls": ([], b""),
    "exitcode": ([], b""),
    "exitcode-exit": (["42", "exit"], b""),
    "exitcode-_exit": (["7", "_exit"], b""),
    "exitcode-big": (["300", "return"], b""),
    "segfault": ([], b""),
    "divzero": ([], b""),
    "sha256": (["1"], b""),
    "modexp": (["3000"], b""),
    "checksum_self": ([], b""),
    "region_loop": (["20000"], b""),
    "switch_loop": (["5", "300"], b""),
}


@pytest.fixture(scope="module")
def listing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("listing")
    for name in ("alpha.txt", "beta", "gamma.bin", "zz last"):
        (d / name).write_bytes(name.encode() * 3)
    (d / "subdir").mkdir()
    os.symlink("alpha.txt", d / "link-to-alpha")
    for i in range(40):  # enough entries to need several getdents64 calls
        (d / f"file{i:03d}").write_text(str(i))
    return d


@pytest.mark.parametrize("translate", [False, True], ids=["exec", "translate-all"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_same_as_native(built: Path, listing: Path, tmp_path: Path, kind: str,
                        case: str, translate: bool) -> None:
    program = case.split("-")[0]
    args, stdin = CASES[case]
    native_dir, guest_dir = tmp_path / "native", tmp_path / "guest"
    native_dir.mkdir()
    guest_dir.mkdir()
    exe = binary(kind, program)

    def fill(d: Path) -> list[str]:
        return [a.replace("{dir}", str(d)).replace("{listing}", str(listing)) for a in args]

    native = run_native([exe, *fill(native_dir)], input=stdin, env=ENV, cwd=tmp_path)
    flags = ["--translate-all", "--stats"] if translate else []
    guest = run_leakdbt(["exec", *flags, "--rw", str(guest_dir), *_env_flags(ENV), exe,
                         *fill(guest_dir)], input=stdin, cwd=tmp_path)
    assert guest.stdout == native.stdout, guest.stderr.decode(errors="replace")
    assert guest.status == native.status, guest.stderr.decode(errors="replace")
    if program == "stdin_echo":
        own = guest.stderr.split(b"leakdbt stats:")[0]
        assert own.splitlines()[-1] == native.stderr.splitlines()[-1]
    if native.status >= 128:  # a crash: one line naming the signal and the function
        last = guest.stderr.decode().strip().splitlines()[-1]
        expected = {"segfault": ("SIGSEGV", "crash_here"), "divzero": ("SIGFPE", "divide")}
        for word in expected[program]:
            assert word in last
    else:
        assert b"leakdbt:" not in guest.stderr, guest.stderr.decode()
    if translate:  # the copies really ran: functions were translated, none refused
        stats = guest.stderr.decode()
        translated = int(stats.split("functions translated:")[1].split()[0])
        assert translated >= 10, stats
        assert "functions refused:         0" in stats, stats


@pytest.mark.parametrize("translate", [False, True], ids=["exec", "translate-all"])
@pytest.mark.parametrize("kind", KINDS)
def test_avx_is_refused_not_run_wrongly(built: Path, kind: str, translate: bool) -> None:
    """Also from a relocated copy: code-cache pages are vetted like any code page."""
    flags = ["--translate-all"] if translate else []
    guest = run_leakdbt(["exec", *flags, binary(kind, "avx")])
    assert guest.stdout == b"avx: start\n"
    assert guest.status == 125
    last = guest.stderr.decode().strip().splitlines()
    assert len(last) == 1
    assert "unsupported instruction at avx_kernel" in last[0]
    assert "Traceback" not in guest.stderr.decode()
