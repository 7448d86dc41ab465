"""Forked snapshots: the run up to the first access of a secret is done once for all trials.

Trials differ only in their secrets' values.  When those values are bytes of the process's
memory from its first instruction on, at addresses and lengths that are the same in every
trial, every trial's run is the same as every other's until the first access to one of
those bytes.  So a *template* run (the first trial's inputs) goes up to that access, and the
process forks there once per trial: each child writes its trial's bytes over the secrets
and goes on; the parent never executes the access.  Each child's trace holds the part
before the fork (the observers are forked with it), so its run is the trial's plain run.

What qualifies (:func:`unsound_reason` says why not, and the trials then run afresh):

- only ``argv`` and ``env`` secrets (strings on the initial stack), and every trial's argv
  and environment strings have the same lengths (``format`` hex and decimal always do;
  ``raw`` too, as bytes): the stack layout, AT_RANDOM and everything computed before the
  first access are then the same.  Secrets that arrive later — standard input and files
  through read(2), register and buffer secrets at a function's entry, globals when their
  module loads — are not snapshotted (their delivery is not a memory access to watch);
- the trials run here (not by a ``runner``), without a per-trial timeout (the engine's
  timer thread would not exist in a forked child), under virtual time (the clock and the
  random state are then the same in every trial and are forked with the snapshot).

The first access is noticed by an engine hook on reads and writes of the secrets' bytes
(a guest instruction), and by a wrapper of ``machine.mem.read`` (the emulated kernel reading
guest memory, e.g. write(2) of an argv string).  At the fork the template must still be one
process with only its standard streams open: if the guest has forked (its children would be
the template's), or holds another file (its offset would be shared by the children), the
snapshot is abandoned there — the template then runs on as the first trial's plain run and
the other trials run afresh.  If the secrets are never accessed, likewise.

In a child, guest file descriptors 0-2 get fresh files holding what the template wrote or
had left to read (they were shared with the siblings), and the process ids become the
child's own (guest pids are host pids).  Children run ``jobs`` at a time; each writes its
:class:`~leakdbt.leakage.trials.TrialRun` to a file the parent reads back, with what it
added to the caches of work every trial does alike (symbolic names, block figures, latency
sites): the parent adds that to its own, so that later children start with it, as the
trials of a worker process do.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, NoReturn

from leakdbt.contract.model import ArgvSource, EnvSource
from leakdbt.errors import LeakDBTError
from leakdbt.leakage import observe, trials
from leakdbt.machine.hooks import Hook
from leakdbt.machine.machine import Machine
from leakdbt.run.secrets import SecretInputs, argv_string
from leakdbt.run.secrets import _env_string as env_string
from leakdbt.run.session import adopt_this_process

if TYPE_CHECKING:
    from leakdbt.leakage.trials import Observation, TrialInput, TrialRun, TrialSetup

MAX_ACCESS = 64  # bytes: the widest single data access the engine reports
CHILD_FAILED = 125  # a child's exit status when its run raised (a bug): the check fails

# How often check used a snapshot (read by the tests): templates run, trials forked.
STATS = {"templates": 0, "forked": 0, "abandoned": 0}


class SnapshotTaken(BaseException):  # noqa: N818 - not an error: it ends the template run
    """Raised in the template process once every trial has run from the snapshot: it stops
    the template's run (a BaseException, so that no handler of the guest's run takes it)."""


def unsound_reason(setup: TrialSetup, inputs: Sequence[TrialInput]) -> str:
    """Why a forked snapshot would not give every trial its plain run ("" when it would)."""
    if len(inputs) < 2:
        return "a single trial"
    if setup.timeout:
        return "a per-trial timeout (its timer thread does not survive a fork)"
    for s in setup.contract.secrets:
        if not isinstance(s.source, ArgvSource | EnvSource):
            return f"secret {s.name} is not an argv or env secret"
    first = _layout(setup, inputs[0])
    for t in inputs[1:]:
        if _layout(setup, t) != first:
            return f"trial {t.index}'s argv or environment strings differ in length"
    return ""


def _layout(setup: TrialSetup, t: TrialInput) -> tuple[tuple[int, ...], tuple[int, ...]]:
    inputs = setup.secrets(t)
    return (tuple(len(os.fsencode(a)) for a in inputs.argv(setup.binary)),
            tuple(len(os.fsencode(e)) for e in inputs.env()))


class Snapshot:
    """One template run and the trials forked from it (see the module doc)."""

    def __init__(self, setup: TrialSetup, inputs: Sequence[TrialInput], what: Observation,
                 jobs: int, tell: Callable[[int], None] | None = None) -> None:
        self.setup = setup
        self.inputs = list(inputs)
        self.what = what
        self.jobs = max(1, jobs)
        self.tell = tell
        self.child: TrialInput | None = None  # in a forked child: its trial
        self.abandoned = ""  # why the template went on as a plain run
        self._machine: Machine | None = None
        self._kernel: Any = None
        self._ranges: list[tuple[int, int, int]] = []  # (secret index, address, length)
        self._hooks: list[Hook] = []
        self._stdio: tuple[int, ...] = ()  # host fds of the template's guest fds 0-2
        self._directory = ""
        self._fired = False
        self._results: dict[int, TrialRun] = {}
        self._known: list[int] = []  # in a child: its caches' sizes at the fork

    # -- the template -----------------------------------------------------------------------

    def run_all(self) -> list[TrialRun]:
        """Every trial's run, in trial order, forked from the snapshot; or, the snapshot
        abandoned, the template: the first trial's plain run (the caller runs the others)."""
        STATS["templates"] += 1
        with tempfile.TemporaryDirectory(prefix="leakdbt-snapshot-") as directory:
            self._directory = directory
            try:
                template = self.setup.run(self.inputs[0], self.what, snapshot=self)
            except SnapshotTaken:
                return [self._results[t.index] for t in self.inputs]
            except BaseException:
                if self.child is not None:
                    _die(CHILD_FAILED)
                raise
        STATS["abandoned"] += 1
        if self.tell is not None:
            self.tell(1)
        return [template]

    def attach(self, machine: Machine) -> None:
        """Watch the template's secrets (call at start, once the initial stack is built)."""
        self._machine = machine
        self._kernel = getattr(machine.syscall_handler, "kernel", None)
        if self._kernel is None:
            self.abandoned = "no kernel to fork"
            return
        for index, s in enumerate(self.setup.contract.secrets):
            source = s.source
            if isinstance(source, ArgvSource):
                address, _ = argv_string(machine, source.index)
            elif isinstance(source, EnvSource):
                where = env_string(machine, source.name)
                if where is None:
                    continue
                address = where[0]
            else:  # unsound_reason admits no other source
                raise LeakDBTError(f"internal error: snapshot of secret {s.name}")
            length = len(s.render(self.inputs[0].values[index][1]))
            if length:
                self._ranges.append((index, address, length))
        for _, address, length in self._ranges:  # an access may start before a secret
            self._hooks.append(machine.hooks.on_memory(
                self._on_access, max(0, address - MAX_ACCESS), address + length))
        memory = machine.mem
        plain_read = memory.read

        def read(address: int, size: int) -> bytes:
            if not self._fired and self._overlaps(address, size):
                self._fire()
            return plain_read(address, size)

        memory.read = read  # type: ignore[method-assign]

    def _overlaps(self, address: int, size: int) -> bool:
        return any(address < a + n and a < address + size for _, a, n in self._ranges)

    def _on_access(self, _is_write: bool, address: int, size: int) -> None:
        if not self._fired and self._overlaps(address, size):
            self._fire()

    def _fire(self) -> None:
        """The first access: fork one child per trial (``jobs`` at a time) — each returns
        from here and runs on — and end the template (SnapshotTaken) once all are done."""
        self._fired = True
        self._unwatch()
        why = self._why_not_now()
        if why:
            self.abandoned = why
            return
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        pending = list(self.inputs)
        running: dict[int, tuple[int, TrialInput]] = {}  # pidfd -> (pid, trial)
        done = 0
        try:
            while pending or running:
                while pending and len(running) < self.jobs:
                    t = pending.pop(0)
                    pid = os.fork()
                    if pid == 0:  # not the siblings' keeper: leave them be
                        for fd in running:
                            os.close(fd)
                        running.clear()
                        self._become(t)
                        return
                    STATS["forked"] += 1
                    running[os.pidfd_open(pid)] = (pid, t)
                ready, _, _ = select.select(list(running), [], [])
                for fd in ready:
                    pid, t = running.pop(fd)
                    os.close(fd)
                    _, status = os.waitpid(pid, 0)
                    if os.waitstatus_to_exitcode(status) != 0:
                        raise LeakDBTError(f"internal error: trial {t.index} forked from the "
                                           f"snapshot ended with status {status:#x}")
                    self._receive(t)
                    done += 1
                    if self.tell is not None:
                        self.tell(done)
        finally:
            for fd, (pid, _) in running.items():  # an error: do not leave children behind
                with contextlib.suppress(OSError):
                    os.kill(pid, 9)
                    os.waitpid(pid, 0)
                os.close(fd)
        raise SnapshotTaken

    def _why_not_now(self) -> str:
        """Why the process cannot be forked for the trials here ("" when it can)."""
        k = self._kernel
        if getattr(k, "children", None):
            return "the guest forked before it read its secrets"
        stdio = set(self._stdio)
        for fd in k.fds:
            if k.fds.get(fd).host_fd not in stdio:
                return "the guest had a file open other than its standard streams"
        return ""

    def set_stdio(self, stdio: tuple[int, int, int]) -> None:
        """The host fds of the template's guest fds 0-2 (the trial's files)."""
        self._stdio = stdio

    def _unwatch(self) -> None:
        machine = self._machine
        assert machine is not None
        for h in self._hooks:
            machine.hooks.remove(h)
        self._hooks = []
        with contextlib.suppress(AttributeError):
            del machine.mem.read  # the class's read again

    # -- a child ----------------------------------------------------------------------------

    def _become(self, t: TrialInput) -> None:
        """This process is now trial ``t``'s run: its secrets, its own files and ids."""
        self.child = t
        self._known = [len(c) for c in _caches()]
        adopt_this_process()  # execute() returns here, as in the first process
        machine = self._machine
        assert machine is not None
        values = SecretInputs(self.setup.contract, [v for _, v in t.values])
        secrets = self.setup.contract.secrets
        for index, address, length in self._ranges:
            data = secrets[index].render(values.values[index])
            assert len(data) == length
            machine.mem.write(address, data)
        for host_fd in self._stdio:
            _private_copy(host_fd)
        ids = self._kernel.ids
        ids.pid, ids.ppid = os.getpid(), os.getppid()

    def finish(self, run: TrialRun) -> TrialRun:
        """In a child: write ``run`` (as its trial's) for the parent and end; in the template
        (the snapshot abandoned): ``run`` itself."""
        if self.child is None:
            return run
        try:
            path = os.path.join(self._directory, f"trial-{self.child.index}")
            with open(path + ".part", "wb") as f:
                learned = [list(c.items())[n:] for c, n in zip(_caches(), self._known,
                                                               strict=True)]
                pickle.dump((replace(run, trial=self.child), learned), f,
                            protocol=pickle.HIGHEST_PROTOCOL)
            os.rename(path + ".part", path)
        except BaseException:  # noqa: BLE001 - the parent reports the failure
            _die(CHILD_FAILED)
        _die(0)

    def _receive(self, t: TrialInput) -> None:
        """Trial ``t``'s run, and what its caches learned: later children start with it."""
        path = os.path.join(self._directory, f"trial-{t.index}")
        with open(path, "rb") as f:
            run, learned = pickle.load(f)
        os.unlink(path)
        self._results[t.index] = run
        for cache, items in zip(_caches(), learned, strict=True):
            for key, value in items:
                cache.setdefault(key, value)


def _caches() -> list[dict[Any, Any]]:
    """The per-process caches of what every trial computes alike (symbol names, block
    figures, latency sites): a child hands back what it added to them."""
    return [*observe.SHARED_CACHES, trials.SYMBOLIC]


def _private_copy(host_fd: int) -> None:
    """Replace ``host_fd`` (shared with the template and the siblings) by a new file with the
    same contents and offset."""
    offset = os.lseek(host_fd, 0, os.SEEK_CUR)
    size = os.fstat(host_fd).st_size
    data = os.pread(host_fd, size, 0) if size else b""
    fd, path = tempfile.mkstemp(prefix="leakdbt-snapshot-")
    os.unlink(path)
    os.write(fd, data)
    os.lseek(fd, offset, os.SEEK_SET)
    os.dup2(fd, host_fd)
    os.close(fd)


def _die(status: int) -> NoReturn:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)
