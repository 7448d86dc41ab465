"""Programs nobody here wrote — Debian's busybox-static applets and the host's dynamically
linked coreutils — give byte-identical output under leakdbt and natively, also with
``--translate-all`` (every function they call runs from relocated copies)."""

from __future__ import annotations

import gzip
import random
import shutil
from pathlib import Path

import pytest

from tests.conftest import run_leakdbt, run_native

BUSYBOX = shutil.which("busybox") or "/bin/busybox"
ENV = {"LANG": "C", "LC_ALL": "C", "TZ": "UTC", "COLUMNS": "80"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("real")
    rng = random.Random(1234)
    words = ["delta", "alpha", "charlie", "bravo", "alpha", "echo", "delta", "Zulu", "10", "9"]
    (d / "words.txt").write_text("\n".join(rng.choice(words) for _ in range(3000)) + "\n")
    (d / "numbers.txt").write_text("\n".join(str(rng.randint(-10**6, 10**6))
                                             for _ in range(5000)) + "\n")
    (d / "random.bin").write_bytes(rng.randbytes(300_000))
    (d / "data.gz").write_bytes(gzip.compress(rng.randbytes(50_000) + b"x" * 50_000))
    (d / "sub").mkdir()
    (d / "sub" / "inner.txt").write_text("inner\n")
    return d


TRANSLATE = pytest.mark.parametrize("translate", [False, True], ids=["exec", "translate-all"])


def _compare(argv: list[str], cwd: Path, stdin: bytes = b"", translate: bool = False) -> None:
    flags = ["--clear-env"] + [f"--env={k}={v}" for k, v in ENV.items()]
    if translate:
        flags += ["--translate-all", "--stats"]
    native = run_native(argv, cwd=cwd, env=ENV, input=stdin)
    guest = run_leakdbt(["exec", *flags, *argv], cwd=cwd, input=stdin)
    assert native.status == 0, native.stderr
    assert guest.stdout == native.stdout, guest.stderr.decode(errors="replace")
    assert guest.status == native.status
    own, _, stats = guest.stderr.partition(b"leakdbt stats:\n")
    assert own == native.stderr
    if translate:
        translated = int(stats.split(b"functions translated:")[1].split()[0])
        refused = int(stats.split(b"functions refused:")[1].split()[0])
        assert translated >= 20 and refused <= translated // 50, stats.decode()


BUSYBOX_CASES = {
    "sha256sum": ["sha256sum", "random.bin", "words.txt"],
    "md5sum": ["md5sum", "random.bin"],
    "sort": ["sort", "words.txt"],
    "sort-n": ["sort", "-n", "numbers.txt"],
    "uniq": ["uniq", "-c", "words.txt"],
    "wc": ["wc", "words.txt", "numbers.txt", "random.bin"],
    "sed": ["sed", "-e", "s/a/A/g", "-e", "/delta/d", "words.txt"],
    "awk": ["awk", "{ s += $1; n++ } END { printf \"%d %d %.3f\\n\", s, n, s / n }",
            "numbers.txt"],
    "tr": ["tr", "a-z", "A-Z", "words.txt"],
    "od": ["od", "-A", "x", "-t", "x1", "-N", "4096", "random.bin"],
    "ls": ["ls", "-la", "--full-time", "."],
    "gunzip": ["gunzip", "-c", "data.gz"],
}


@TRANSLATE
@pytest.mark.parametrize("case", sorted(BUSYBOX_CASES))
def test_busybox_applet(workdir: Path, case: str, translate: bool) -> None:
    _compare([BUSYBOX, *BUSYBOX_CASES[case]], workdir, translate=translate)


@TRANSLATE
def test_busybox_gzip_from_stdin(workdir: Path, translate: bool) -> None:
    _compare([BUSYBOX, "gzip", "-c"], workdir, stdin=(workdir / "random.bin").read_bytes(),
             translate=translate)


COREUTILS_CASES = {
    "sha256sum": ["/usr/bin/sha256sum", "random.bin", "words.txt"],
    "sort": ["/usr/bin/sort", "words.txt"],
    "sort-rn": ["/usr/bin/sort", "-r", "-n", "numbers.txt"],
    "base64": ["/usr/bin/base64", "random.bin"],
    "ls": ["/bin/ls", "-la", "--time-style=full-iso", "."],
    "ls-R": ["/bin/ls", "-R", "."],
}


@TRANSLATE
@pytest.mark.parametrize("case", sorted(COREUTILS_CASES))
def test_host_coreutils(workdir: Path, case: str, translate: bool) -> None:
    _compare(COREUTILS_CASES[case], workdir, translate=translate)
