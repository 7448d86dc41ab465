"""The writer's side of the mode file (docs/harden.md) and `leakdbt monitor`'s service loop:
the word for each mode, fail-safe hardened on open and on close, files the programs would
ignore refused, and stopping on a signal or when the started program exits."""

from __future__ import annotations

import os
import signal
import stat
import sys
import threading
from pathlib import Path

import pytest

from leakdbt.contract.model import Adversary
from leakdbt.dbt.mode import Mode
from leakdbt.errors import UsageError
from leakdbt.monitor.modefile import FAST_WORD, PAGE, ModeFile, entry_counts
from leakdbt.monitor.monitor import Monitor
from leakdbt.monitor.serve import serve
from leakdbt.plugin_api import CoTenant, Tenancy


def word(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[:4], "little")


def test_a_new_mode_file_is_one_private_page_that_says_hardened(tmp_path: Path) -> None:
    path = tmp_path / "mode"
    mf = ModeFile(str(path))
    assert path.stat().st_size == PAGE and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert mf.mode is Mode.HARDENED and word(path) == 0
    mf.set_mode(Mode.FAST)
    assert word(path) == FAST_WORD == int.from_bytes(b"FAST", "little")
    mf.set_mode(Mode.HARDENED)
    assert word(path) == 0
    mf.set_mode(Mode.FAST)
    mf.close()
    assert word(path) == 0  # fail-safe: nobody watches any more


def test_an_existing_file_keeps_its_counters_and_grows_to_a_page(tmp_path: Path) -> None:
    path = tmp_path / "mode"
    page = bytearray(128)
    page[0:4] = FAST_WORD.to_bytes(4, "little")  # a stale word from a monitor that died
    page[80:96] = (5).to_bytes(8, "little") + (9).to_bytes(8, "little")  # region 1
    path.write_bytes(bytes(page))
    path.chmod(0o600)
    mf = ModeFile(str(path))
    assert word(path) == 0 and path.stat().st_size == PAGE
    assert mf.counts(1) == (5, 9) == entry_counts(path.read_bytes(), 1)
    assert mf.counts(0) == (0, 0)
    mf.close()


@pytest.mark.parametrize(("make", "says"), [
    (lambda p: (p.write_bytes(bytes(PAGE)), p.chmod(0o620)), "writable by group or others"),
    (lambda p: (p.write_bytes(bytes(PAGE)), p.chmod(0o602)), "writable by group or others"),
    (lambda p: p.mkdir(), "Is a directory"),
    (lambda p: os.symlink("/dev/null", p), "links"),
])
def test_files_the_programs_would_ignore_are_refused(tmp_path: Path, make, says: str) -> None:
    path = tmp_path / "mode"
    make(path)
    with pytest.raises(UsageError, match=says):
        ModeFile(str(path))


def test_a_fifo_is_not_a_mode_file(tmp_path: Path) -> None:
    path = tmp_path / "fifo"
    os.mkfifo(path, 0o600)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # so that opening it for writing returns
    try:
        with pytest.raises(UsageError, match="not a regular file"):
            ModeFile(str(path))
    finally:
        os.close(fd)


class Alone:
    def observe(self) -> Tenancy:
        return Tenancy(evidence="nobody")


class Busy:
    def observe(self) -> Tenancy:
        return Tenancy((CoTenant("core", pid=1, name="x"),), evidence="seen")


def test_serve_stops_on_sigterm_and_the_caller_leaves_the_word_hardened(tmp_path: Path) -> None:
    path = tmp_path / "mode"
    mf = ModeFile(str(path))
    monitor = Monitor(Alone(), mf, Adversary.CO_RESIDENT, poll_ms=1, hold_ms=0)
    seen: list[int] = []

    def later() -> None:
        seen.append(word(path))  # serve wrote the first word before this can run
        os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    timer = threading.Timer(0.2, later)
    timer.start()
    assert serve(monitor, []) == 0
    timer.join()
    assert seen == [FAST_WORD] and monitor.stats.polls >= 1
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is put back
    mf.close()
    assert word(path) == 0


def test_serve_runs_a_command_and_returns_its_status(tmp_path: Path) -> None:
    path = tmp_path / "mode"
    mf = ModeFile(str(path))
    probe = f"import sys; sys.exit(3 if open({str(path)!r}, 'rb').read(4) == b'FAST' else 4)"
    assert serve(Monitor(Alone(), mf, Adversary.SAME_CORE), [sys.executable, "-c", probe]) == 3
    assert serve(Monitor(Busy(), mf, Adversary.SAME_CORE), [sys.executable, "-c", probe]) == 4
    killed = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]
    assert serve(Monitor(Busy(), mf, Adversary.SAME_CORE), killed) == 128 + 9
    with pytest.raises(UsageError, match="No such file"):
        serve(Monitor(Busy(), mf, Adversary.SAME_CORE), [str(tmp_path / "missing")])
    mf.close()
