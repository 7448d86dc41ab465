"""Shared fixtures: the repository layout, built test programs, and a leakdbt runner."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TEST_BINARIES = REPO / "test_binaries"
BUILD = TEST_BINARIES / "build"
KINDS = ("static", "static-pie", "dynamic")
LEAKDBT = [sys.executable, "-m", "leakdbt"]
# LEAKDBT_SWEEP=1 runs the long input sweeps of end-to-end tests; by default each such test
# runs a few inputs chosen to take every path (the differential unit tests cover the rest).
SWEEP = os.environ.get("LEAKDBT_SWEEP") == "1"


@dataclass
class Run:
    """Outcome of one process run, with a shell-style exit status (128+N for signal N)."""

    status: int
    stdout: bytes
    stderr: bytes


def shell_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def run_native(argv: list[str], **kw: object) -> Run:
    p = subprocess.run(argv, capture_output=True, timeout=120, **kw)  # type: ignore[call-overload]
    return Run(shell_status(p.returncode), p.stdout, p.stderr)


def run_leakdbt(args: list[str], **kw: object) -> Run:
    p = subprocess.run([*LEAKDBT, *args], capture_output=True, timeout=600, **kw)  # type: ignore[call-overload]
    return Run(shell_status(p.returncode), p.stdout, p.stderr)


@pytest.fixture(scope="session")
def built() -> Path:
    """test_binaries/build, brought up to date by make (nothing to do after ``make test``'s
    own build); a lock on the Makefile keeps parallel test workers from building at once."""
    with open(TEST_BINARIES / "Makefile", "rb") as makefile:
        fcntl.flock(makefile, fcntl.LOCK_EX)
        subprocess.run(["make", "-s", "-C", str(TEST_BINARIES), "-j2"], check=True,
                       stdout=subprocess.DEVNULL)
    return BUILD


def binary(kind: str, name: str) -> str:
    return str(BUILD / kind / name)


@pytest.fixture(scope="session")
def fastmath_fp_secret(tmp_path_factory: pytest.TempPathFactory) -> str:
    """fp_secret linked with gcc's crtfastmath.o, which sets MXCSR.FTZ|DAZ before main: the
    native ground truth for what the fp-ftz-daz pass computes."""
    crt = subprocess.run(["gcc", "-print-file-name=crtfastmath.o"], capture_output=True,
                         text=True, check=True).stdout.strip()
    out = tmp_path_factory.mktemp("ftz") / "fp_secret"
    subprocess.run(["gcc", "-O2", "-static", "-o", str(out),
                    str(TEST_BINARIES / "fp_secret.c"), crt], check=True)
    return str(out)


# Core dumps of deliberately crashing native programs are noise.
try:
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
except (ImportError, ValueError, OSError):
    pass
