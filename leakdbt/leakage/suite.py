"""``leakdbt suite``: the checks of a suite file, their trials as tasks on a Dask cluster.

Dask distributed (a ``LocalCluster`` of one single-threaded worker process per core — the
engine is per process — or an existing cluster) schedules the trials; no job queue of our
own.  Each entry is checked by :func:`leakdbt.leakage.check.run_check` itself, so its verdict
is exactly what ``leakdbt check`` gives; only ``CheckOptions.runner`` differs: every batch of
trials (each mode's, each directed round's) becomes Dask tasks.  The entries run at once, one
client thread each, so their tasks share the cluster; what runs on the client (planning,
comparing, the few witness traces) takes turns under one lock.

A worker that dies while running a trial, a trial that raises, or one that runs longer than
its entry's ``timeout``, is retried once
(``allowed-failures`` and ``retries`` = :data:`RETRIES`); after that the entry is reported as
an error and the rest of the suite completes.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING

from leakdbt.contract import load
from leakdbt.contract.profiles import choose_profile, get_profile
from leakdbt.dbt.dispatch import Mode
from leakdbt.errors import LeakDBTError, LimitExceeded, UsageError
from leakdbt.leakage.check import CheckOptions, run_check, trial_setup, with_args
from leakdbt.leakage.findings import CheckReport
from leakdbt.leakage.suite_file import SuiteEntry
from leakdbt.leakage.trials import Observation, TrialInput, TrialRun, TrialSetup

if TYPE_CHECKING:
    from distributed import Client

RETRIES = 1  # a failed or lost trial runs once more, then its entry is an error
CONNECT_TIMEOUT = "20s"


@dataclass
class EntryResult:
    """One entry's outcome: its check report, or the error that stopped it."""

    entry: SuiteEntry
    report: CheckReport | None = None
    error: str = ""

    @property
    def status(self) -> int:
        """0 no leak, 1 leaks, 2 error (as ``leakdbt check`` exits)."""
        if self.error or self.report is None:
            return 2
        return 1 if self.report.leaks else 0


@dataclass
class SuiteReport:
    """Everything ``leakdbt suite`` found."""

    suite: str
    workers: int
    results: list[EntryResult] = field(default_factory=list)
    tasks: int = 0
    seconds: float = 0.0

    @property
    def status(self) -> int:
        """The worst entry's status: 2 if any entry failed, else 1 if any leaks, else 0."""
        return max((r.status for r in self.results), default=0)


@dataclass(frozen=True)
class TrialTask:
    """What a worker needs to set up an entry's trials: paths valid on the worker too."""

    binary: str
    contract: str
    args: tuple[str, ...] | None
    profile: str
    mode: str
    max_insns: int
    timeout: float


_SETUPS: dict[TrialTask, TrialSetup] = {}  # per worker process: set up once per entry


def run_trial(task: TrialTask, trial: TrialInput, what: Observation) -> TrialRun:
    """One trial, on a Dask worker (the same ``TrialSetup.run`` as ``leakdbt check``)."""
    setup = _SETUPS.get(task)
    if setup is None:
        contract = with_args(load(task.contract, binary=task.binary), task.args)
        setup = replace(trial_setup(task.binary, contract, get_profile(task.profile),
                                    task.mode, task.max_insns), timeout=task.timeout)
        _SETUPS[task] = setup
    run = setup.run(trial, what)
    if task.timeout and run.status == LimitExceeded.exit_status and "--timeout" in run.error:
        # Host time is not an observation (it varies from run to run): a failure to retry.
        raise TrialTimeout(f"trial {trial.index}: {run.error}")
    return run


class TrialTimeout(Exception):
    """A trial ran longer than its entry's ``timeout``."""


@contextlib.contextmanager
def dask_client(scheduler: str | None, workers: int | None) -> Iterator[Client]:
    """A client of the cluster at ``scheduler``, or of a new ``LocalCluster`` of ``workers``
    single-threaded processes (default: one per core)."""
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set({"distributed.scheduler.allowed-failures": RETRIES,
                          "distributed.admin.system-monitor.gil.enabled": False}):
        if scheduler is not None:
            try:
                client = Client(scheduler, timeout=CONNECT_TIMEOUT)
            except (OSError, TimeoutError, ValueError) as e:
                raise UsageError(f"--scheduler {scheduler}: cannot connect: {e}") from None
            with client:
                yield client
            return
        with LocalCluster(n_workers=workers or os.cpu_count() or 1, threads_per_worker=1,
                          processes=True, dashboard_address=":0",
                          silence_logs=logging.CRITICAL) as cluster, Client(cluster) as client:
            yield client


def run_suite(path: str, entries: list[SuiteEntry], client: Client,
              progress: Callable[[str], None] | None = None,
              on_task_done: Callable[[int], None] | None = None) -> SuiteReport:
    """Check every entry with ``run_check``, all at once, their trials as tasks of
    ``client``; ``on_task_done(n)`` is told after the n-th finished task (tests kill a worker
    there)."""
    started = time.monotonic()
    report = SuiteReport(path, len(client.scheduler_info().get("workers", {})))
    tally = _Tally(progress, on_task_done)
    # One thread per entry: what runs on the client (planning, comparing, witness traces)
    # holds _CLIENT_LOCK, as the engine is per process; waiting for Dask releases it.
    with concurrent.futures.ThreadPoolExecutor(max(len(entries), 1)) as threads:
        results = list(threads.map(lambda e: _check_entry(e, client, tally), entries))
    report.results = results
    report.tasks = tally.submitted
    report.seconds = time.monotonic() - started
    return report


_CLIENT_LOCK = threading.Lock()


class _Tally:
    """Counts submitted and finished tasks (from every entry's thread) for the progress."""

    def __init__(self, progress: Callable[[str], None] | None,
                 on_task_done: Callable[[int], None] | None) -> None:
        self.lock = threading.Lock()
        self.submitted = self.done = 0
        self.started = time.monotonic()
        self.progress, self.on_task_done = progress, on_task_done

    def submit(self, n: int) -> None:
        with self.lock:
            self.submitted += n

    def finished(self) -> None:
        with self.lock:
            self.done += 1
            if self.progress is not None:
                elapsed = time.monotonic() - self.started
                eta = elapsed / self.done * (self.submitted - self.done)
                self.progress(f"suite: trials {self.done}/{self.submitted}, ETA {eta:.0f} s")
            if self.on_task_done is not None:
                self.on_task_done(self.done)


def _check_entry(entry: SuiteEntry, client: Client, tally: _Tally) -> EntryResult:
    """The entry checked by ``run_check`` with its trial batches run on Dask."""
    result = EntryResult(entry)
    with _CLIENT_LOCK:
        try:
            contract = load(entry.contract, binary=entry.binary)
            profile, _why = choose_profile(entry.cpu)
            runner = partial(_run_on_dask, client, tally, profile.name, entry.timeout)
            options = CheckOptions(entry.modes, entry.trials, entry.seed, 1, None,
                                   entry.max_insns, runner=runner)
            if entry.directed_rounds is not None:
                options = replace(options, directed_rounds=entry.directed_rounds)
            result.report = run_check(entry.binary, contract, profile, options, entry.args)
        except LeakDBTError as e:
            result.error = e.one_line()
        except TrialFailed as e:
            result.error = str(e)
    return result


class TrialFailed(Exception):
    """A trial failed on every try (its task raised, or its worker died)."""


def _run_on_dask(client: Client, tally: _Tally, profile: str, timeout: float,
                 setup: TrialSetup, inputs: Sequence[TrialInput], what: Observation,
                 label: str) -> list[TrialRun]:
    """``CheckOptions.runner``: the trials as tasks, their runs in trial order."""
    from distributed import as_completed

    mode = "original" if setup.mode is Mode.FAST else "hardened"
    task = TrialTask(setup.binary, setup.contract.path, tuple(setup.contract.check.args),
                     profile, mode, setup.max_insns, timeout)
    futures = [client.submit(run_trial, task, t, what, retries=RETRIES, pure=False)
               for t in inputs]
    tally.submit(len(futures))
    _CLIENT_LOCK.release()
    try:
        for _ in as_completed(futures, raise_errors=False):
            tally.finished()
        try:
            # Waits for results recomputed after a worker was lost; raises what failed twice.
            return [f.result() for f in futures]
        except Exception as e:  # noqa: BLE001 - a task's own error, or KilledWorker
            why = " ".join(f"{type(e).__name__}: {e}".split())
            raise TrialFailed(f"{label}a trial failed {RETRIES + 1} times: {why}") from None
    finally:
        _CLIENT_LOCK.acquire()
