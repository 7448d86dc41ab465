"""Guest threads: one engine, threads take turns (a deterministic round-robin scheduler).

A thread is a saved CPU context (the engine's whole register state, FS base included), its
signal mask and alternate stack, its CHILD_CLEARTID word and what it waits for.  Only the
running thread's state is in the engine and the kernel; a switch saves it and loads the
next thread's, between two engine runs (the machine's ``defer``), so hooks — the
translator's entry jumps and code cache, observers, the monitor — are the same for every
thread: a switch is a register swap, nothing else changes.  What is rewritten between
engine runs (the dispatcher's entry jumps) avoids where any thread resumes: the scheduler
lists the parked threads' addresses on ``Machine.parked_pcs`` (:meth:`ThreadGroup.parked_pcs`).

Switches happen at two kinds of points, both the same in every run of the same guest:

- a thread blocks (a futex wait, a sleep) or ends: the next runnable thread runs;
- the running thread has run a quantum of guest instructions (:data:`DEFAULT_QUANTUM`,
  ``$LEAKDBT_QUANTUM``): the block counter stops the engine at the first block boundary
  past it (leakdbt.machine.machine.Machine.set_quantum) and the next runnable thread runs.

The order is round-robin in creation order; a woken thread waits its turn.  While a
contract's scoped function runs, the quantum is held until it returns (the scope is the
run's, not a thread's: leakdbt.run.scope, Machine.preemption_holds).  When no thread
can run, the scheduler waits for the earliest futex timeout or sleep (on the kernel's clock:
virtual under ``leakdbt check``); with none, the guest is deadlocked and the run ends with a
one-line :class:`~leakdbt.errors.Deadlock` (exit status 124) instead of hanging.

A call that would block on a host fd — ``read``/``readv`` with nothing to read, ``write``/
``writev`` into a full pipe or socket (leakdbt.linux.blocking.park_on_fd) — and a
``wait4``/``waitid`` for a child that has not ended (leakdbt.linux.sys_wait) block their
thread here too: the thread waits until a host poll(2) finds its fd ready (or one of the
children's pidfds readable), then makes the call again; a write that had written part of
its data keeps that count (``Thread.progress``) and goes on from there.  Readiness is
looked at each time the scheduler picks a thread (a zero-timeout poll); when nothing else
can run, the scheduler waits in poll(2) for any parked fd, bounded by the earliest thread
timeout and ``--timeout``.

What is deterministic: between the guest's own threads (a pipe or socketpair one thread
writes and another reads) readiness follows from what the guest did, so the order of
threads and switches repeats exactly.  An fd fed from outside the guest (a child process,
stdin, another process) or a child's end is seen at the first scheduling point after the
host sees it: the interleaving around it follows host timing, as it would in Linux.

(sendto/recvfrom wait the same way, in leakdbt.linux.sys_poll.)

poll, ppoll, select, pselect6, epoll_wait and epoll_pwait park on their whole set of host fds
(``Wait.fds``) with their deadline: readiness or the deadline makes the call again (on the
deadline with no time left, so it reports the timeout as Linux does), and the absolute
deadline is kept for it (``Thread.until``) so a call made again waits only what is left.
pause and rt_sigsuspend park until a signal their mask lets through is sent to the thread
(tgkill).  A signal that ends a wait made under a temporary mask (``Wait.mask``: ppoll,
pselect6, epoll_pwait, sigsuspend) runs its handler with that mask, the thread's own mask
saved in the frame, as rt_sigsuspend does.  These calls park only when nothing but the
guest's own threads or another process could end them (leakdbt.linux.blocking.parkable):
with an armed timer or a child whose end would run a SIGCHLD handler, they block every
thread, as before.  A signal for the process that arrives while no thread runs ends the
wait of the first thread parked in one of them whose mask lets it through
(``_route_signals``); when every thread
waits and one waits there with nothing in the run to end it, a host-time run waits as
Linux does (another process's signal may come), until --timeout; under virtual time it is
a deadlock.

Not here yet: a wait for a child that stops (WUNTRACED) rather than ends is woken only by
an end; while a thread runs, process-directed signals go to whichever thread runs next (they
do not end another thread's wait).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Protocol

from leakdbt.errors import Deadlock, UsageError
from leakdbt.linux.hostsignals import HOST
from leakdbt.linux.signals import AltStack, Signals, sender_info
from leakdbt.machine.memory import GuestMemoryFault

if TYPE_CHECKING:
    from leakdbt.machine.blockcount import BlockCounter

DEFAULT_QUANTUM = 100_000
MIN_QUANTUM = 1000  # above the engine's largest block (512 instructions): every turn runs
QUANTUM_ENV = "LEAKDBT_QUANTUM"
BITSET_ANY = 0xFFFF_FFFF


def quantum_from_env() -> int:
    """The scheduling quantum: ``$LEAKDBT_QUANTUM`` instructions, else the default."""
    text = os.environ.get(QUANTUM_ENV, "").strip()
    if not text:
        return DEFAULT_QUANTUM
    try:
        value = int(text, 0)
    except ValueError:
        value = -1
    if value < MIN_QUANTUM or value > 1 << 40:
        raise UsageError(f"{QUANTUM_ENV}={text!r}: the quantum must be an instruction count "
                         f"from {MIN_QUANTUM} to {1 << 40}")
    return value


class State(Enum):
    RUNNABLE = "runnable"
    BLOCKED = "blocked"
    EXITED = "exited"


@dataclass
class Wait:
    """What a blocked thread waits for: a futex word (``futex``, with a wake ``bitset``), a
    host fd to become ready for ``events`` (``fd``) or a child to end (``pidfds``, owned by
    the wait: closed when it ends) — the call ``restart`` is made again then —, or only
    time; ``deadline`` (host clock id, ns) ends the wait with ``timeout_result``."""

    futex: int = 0
    bitset: int = BITSET_ANY
    deadline: tuple[int, int] | None = None
    timeout_result: int = -errno.ETIMEDOUT
    fd: int = -1
    restart: int | None = None  # the system call number to make again when ``fd`` is ready
    events: int = select.POLLIN  # what ``fd`` waits for (poll events)
    pidfds: tuple[int, ...] = ()  # a wait4/waitid: the children it may report
    fds: dict[int, int] = field(default_factory=dict)  # poll/select/epoll: host fd -> events
    mask: int | None = None  # the signal mask while it waits (ppoll, sigsuspend...), if not
    # the thread's own
    on_eintr: Callable[[], None] | None = None  # run when a signal ends it (ppoll's time left)
    signals: bool = False  # poll, select, epoll_wait, pause, sigsuspend: a signal for the
    # process that its mask lets through ends it too (routed to it while no thread runs)


@dataclass
class Thread:
    """One guest thread (see the module doc)."""

    tid: int
    context: object | None = None  # the engine's saved state while not running
    state: State = State.RUNNABLE
    clear_tid: int = 0  # CLONE_CHILD_CLEARTID / set_tid_address: zeroed and woken at exit
    robust_list: tuple[int, int] = (0, 0)  # set_robust_list (head, length): recorded
    wait: Wait | None = None
    result: int | None = None  # rax when it next runs: the result of the call it blocked in
    restart: int | None = None  # or: the call it blocked in is made again (its number)
    blocked: int = 0  # its signal mask while not running
    altstack: AltStack = field(default_factory=AltStack)
    pending: list[tuple[int, bytes]] = field(default_factory=list)  # tgkill'd to it
    instructions: int = 0  # guest instructions it ran (counted since threads began)
    progress: int = 0  # bytes a parked write had written before it blocked
    until: tuple[int, tuple[int, int] | None] | None = None  # a parked poll's (call, deadline)
    suspended: int | None = None  # its own mask while a handler runs under a wait's mask
    exit_status: int = 0


class ThreadCpu(Protocol):
    """What the scheduler needs of the machine (leakdbt.machine.machine.Machine)."""

    def reg(self, name: str) -> int: ...

    def set_reg(self, name: str, value: int) -> None: ...

    def save_context(self) -> object: ...

    def restore_context(self, context: object) -> None: ...

    def set_quantum(self, quantum: int, handler: Callable[[], None] | None) -> None: ...

    def restart_quantum(self) -> None: ...

    def defer(self, work: Callable[[], None]) -> None: ...

    def instruction_counter(self) -> BlockCounter | None: ...

    @property
    def thread_listeners(self) -> list[Callable[[int], None]]: ...

    @property
    def parked_pcs(self) -> list[Callable[[], list[int]]]: ...

    def context_pc(self, context: object) -> int: ...


class Ids(Protocol):
    @property
    def pid(self) -> int: ...

    @property
    def uid(self) -> int: ...


class Memory(Protocol):
    def write(self, address: int, data: bytes) -> None: ...


class Kernel(Protocol):
    """What the scheduler needs of the kernel (leakdbt.linux.kernel.Kernel, which imports
    this module): ids, signal state, memory, the CPU, clocks, and where it keeps us."""

    tid_address: int
    threads: ThreadGroup | None
    virtual_time: bool

    def timeout_left(self, what: str) -> float | None: ...

    @property
    def ids(self) -> Ids: ...

    @property
    def signals(self) -> Signals: ...

    @property
    def mem(self) -> Memory: ...

    @property
    def cpu(self) -> object: ...

    @property
    def clock_ns(self) -> Callable[[int], int]: ...

    @property
    def wait_until(self) -> Callable[[int, int], None]: ...


class FutexTable:
    """Threads waiting on futex words, in arrival order per word (Linux's futex queues for
    threads of one priority).  Private and shared futexes are the same here: one address
    space."""

    def __init__(self) -> None:
        self.queues: dict[int, list[Thread]] = {}

    def add(self, thread: Thread, address: int) -> None:
        self.queues.setdefault(address, []).append(thread)

    def remove(self, thread: Thread) -> None:
        if thread.wait is None:
            return
        queue = self.queues.get(thread.wait.futex)
        if queue is not None and thread in queue:
            queue.remove(thread)
            if not queue:
                del self.queues[thread.wait.futex]

    def waiters(self, address: int) -> list[Thread]:
        return list(self.queues.get(address, ()))

    def take(self, address: int, count: int, bitset: int = BITSET_ANY) -> list[Thread]:
        """Remove and return up to ``count`` waiters on ``address`` whose bitset meets
        ``bitset`` (first come, first taken)."""
        taken: list[Thread] = []
        for thread in self.waiters(address):
            if len(taken) >= count:
                break
            assert thread.wait is not None
            if thread.wait.bitset & bitset:
                self.remove(thread)
                taken.append(thread)
        return taken

    def requeue(self, address: int, target: int, count: int) -> int:
        """Move up to ``count`` waiters of ``address`` to ``target``; how many moved."""
        moved = self.waiters(address)[:max(count, 0)]
        for thread in moved:
            self.remove(thread)
            assert thread.wait is not None
            thread.wait.futex = target
            self.add(thread, target)
        return len(moved)


class ThreadGroup:
    """The threads of the guest and their scheduler (``kernel.threads``)."""

    def __init__(self, k: Kernel, deliver: Callable[[], None],
                 quantum: int | None = None) -> None:
        """``deliver``: delivers the kernel's deliverable pending signals to the running
        thread (leakdbt.linux.sigdeliver.deliver_pending)."""
        self.k = k
        self.deliver = deliver
        self.quantum = quantum_from_env() if quantum is None else quantum
        main = Thread(k.ids.pid, clear_tid=k.tid_address, blocked=k.signals.blocked)
        self.threads: list[Thread] = [main]
        self.current = main
        self.futexes = FutexTable()
        self.switch_pending = False  # the dispatcher defers switch() after this call
        self.switches = 0
        self._next_tid = k.ids.pid + 1
        self._started_at = 0  # the counter's value when the current thread began its turn
        self.cpu.parked_pcs.append(self.parked_pcs)

    @property
    def cpu(self) -> ThreadCpu:
        return self.k.cpu  # type: ignore[return-value]

    def live(self) -> list[Thread]:
        return [t for t in self.threads if t.state is not State.EXITED]

    def find(self, tid: int) -> Thread | None:
        return next((t for t in self.threads if t.tid == tid and t.state is not State.EXITED),
                    None)

    def parked_pcs(self) -> list[int]:
        """Where each thread that is not running resumes (the code that rewrites guest
        code between engine runs must not split an instruction there: Machine.parked_pcs).
        One that may make its call again may resume at its syscall instruction too."""
        pcs = []
        for t in self.threads:
            if t is not self.current and t.context is not None and t.state is not State.EXITED:
                pc = self.cpu.context_pc(t.context)
                again = t.wait.restart if t.wait is not None else t.restart
                pcs += [pc, pc - 2] if again is not None else [pc]
        return pcs

    def instruction_counts(self) -> dict[int, int]:
        """Guest instructions per thread id, the running thread's turn included."""
        counts = {t.tid: t.instructions for t in self.threads}
        counts[self.current.tid] += self._done() - self._started_at
        return counts

    # -- creating and ending threads ----------------------------------------------------------

    def spawn(self, stack: int, tls: int | None, clear_tid: int) -> Thread:
        """A new thread that starts right after the current system call with rax 0, on
        ``stack`` (0: the caller's) and with FS base ``tls`` (None: the caller's).  Its
        context is taken once the call has completed (deferred); it runs at its turn."""
        thread = Thread(self._next_tid, clear_tid=clear_tid, blocked=self.k.signals.blocked)
        self._next_tid += 1
        self.threads.append(thread)

        def make_context() -> None:
            cpu = self.cpu
            parent = cpu.save_context()
            cpu.set_reg("rax", 0)
            if stack:
                cpu.set_reg("rsp", stack)
            if tls is not None:
                cpu.set_reg("fs_base", tls)
            thread.context = cpu.save_context()
            cpu.restore_context(parent)
            if self.quantum and len(self.live()) > 1:
                cpu.set_quantum(self.quantum, self.preempt)

        self.cpu.defer(make_context)
        return thread

    def exit_current(self, status: int) -> bool:
        """exit(2) of the running thread: zero its CHILD_CLEARTID word and wake one waiter
        there (how pthread_join learns of it).  True when it was the last thread (the
        process ends with ``status``); otherwise the next thread runs after this call."""
        thread = self.current
        thread.exit_status = status
        if thread.clear_tid:
            try:
                self.k.mem.write(thread.clear_tid, struct.pack("<I", 0))
                self.wake(thread.clear_tid, 1)
            except GuestMemoryFault:
                pass
        thread.state = State.EXITED
        if not self.live():
            return True
        self.switch_pending = True
        return False

    # -- blocking and waking ------------------------------------------------------------------

    def block(self, wait: Wait) -> None:
        """The running thread waits (its call returns what wakes it: 0 for a wake, the
        wait's timeout result, or -EINTR for a signal); the next thread runs after this
        call."""
        thread = self.current
        thread.state, thread.wait, thread.result = State.BLOCKED, wait, None
        if wait.futex:
            self.futexes.add(thread, wait.futex)
        self.switch_pending = True

    def wake(self, address: int, count: int, bitset: int = BITSET_ANY) -> int:
        """FUTEX_WAKE: make up to ``count`` waiters on ``address`` runnable; how many."""
        woken = self.futexes.take(address, count, bitset)
        for thread in woken:
            self._resume_later(thread, 0)
        return len(woken)

    def _resume_later(self, thread: Thread, result: int) -> None:
        """``thread`` runs again with ``result`` (a write that had written some of its data
        returns that count instead of an error, as write(2) does when a signal comes).  A
        signal ending a wait made under a temporary mask is delivered under that mask, the
        thread's own one restored after the handler (rt_sigsuspend's rule)."""
        self.futexes.remove(thread)
        wait = thread.wait
        if wait is not None:
            _release(wait)
            if result == -errno.EINTR:
                if wait.mask is not None:
                    thread.suspended, thread.blocked = thread.blocked, wait.mask
                if wait.on_eintr is not None:
                    wait.on_eintr()
        thread.until = None
        if thread.progress and result < 0:
            result = thread.progress
        thread.progress = 0
        thread.state, thread.wait, thread.result = State.RUNNABLE, None, result

    def _restart_later(self, thread: Thread) -> None:
        """``thread`` makes the call it blocked in again when it runs (its fd is ready)."""
        assert thread.wait is not None
        _release(thread.wait)
        thread.state, thread.restart, thread.wait = State.RUNNABLE, thread.wait.restart, None

    def _fd_waiters(self) -> list[Thread]:
        outside = self._outside() is not None
        return [t for t in self.threads if t.state is State.BLOCKED
                and t.wait is not None and (t.wait.fd >= 0 or t.wait.pidfds or t.wait.fds
                                            or outside and t.wait.signals)]

    def _outside(self) -> int | None:
        """The fd that says a caught signal came from another process (hostsignals), while
        a thread waits in a call such a signal ends (host time only)."""
        if self.k.virtual_time or not self._signal_waiters():
            return None
        return HOST.wake_fd

    def _signal_waiters(self) -> bool:
        return any(t.state is State.BLOCKED and t.wait is not None and t.wait.signals
                   for t in self.threads)

    def _route_signals(self) -> bool:
        """Signals for the process that no running thread takes: each ends the wait of the
        first thread (in creation order) in poll, select, epoll_wait, pause or sigsuspend
        whose mask lets it through, and is delivered to that thread; whether any woke."""
        woke = False
        for thread in self.threads:
            wait = thread.wait
            if thread.state is not State.BLOCKED or wait is None or not wait.signals:
                continue
            mask = wait.mask if wait.mask is not None else thread.blocked
            taken = self.k.signals.take(~mask & ((1 << 64) - 1))
            if taken is not None:
                thread.pending.append(taken)
                self._resume_later(thread, -errno.EINTR)
                woke = True
        return woke

    def _poll_fds(self, timeout: float | None) -> bool:
        """Wake the threads whose fd is ready (or one of whose children ended), waiting up
        to ``timeout`` seconds (None: until one is) for one; whether any woke.  Threads
        wake in creation order; an fd closed meanwhile (POLLNVAL) wakes its thread, whose
        call then finds out."""
        waiting = self._fd_waiters()
        if not waiting:
            return False
        want: dict[int, int] = {}
        for t in waiting:
            assert t.wait is not None
            if t.wait.fd >= 0:
                want[t.wait.fd] = want.get(t.wait.fd, 0) | t.wait.events
            for fd in t.wait.pidfds:
                want[fd] = want.get(fd, 0) | select.POLLIN
            for fd, events in t.wait.fds.items():
                want[fd] = want.get(fd, 0) | events
        outside = self._outside() if timeout != 0 else None
        if outside is not None:
            want[outside] = want.get(outside, 0) | select.POLLIN
        poller = select.poll()
        for fd, events in sorted(want.items()):
            poller.register(fd, events)
        ms = -1 if timeout is None else max(0, -(-int(timeout * 1e9) // 1_000_000))
        ready = dict(poller.poll(ms))
        woke = False
        if outside is not None and outside in ready:
            HOST.woken()
            HOST.drain(self.k.signals)
            woke = self._route_signals()
        for thread in waiting:
            wait = thread.wait
            if wait is None:  # ended by a signal above
                continue
            done = select.POLLERR | select.POLLHUP | select.POLLNVAL
            if (wait.fd >= 0 and ready.get(wait.fd, 0) & (wait.events | done)) \
                    or any(fd in ready for fd in wait.pidfds) \
                    or any(ready.get(fd, 0) & (events | done) for fd, events in wait.fds.items()):
                self._restart_later(thread)
                woke = True
        return woke

    def signal_thread(self, thread: Thread, sig: int, code: int) -> None:
        """tgkill(2) to ``thread``: queued for it; one blocked in a wait is woken with
        -EINTR when the signal is not blocked (it is delivered as the thread runs)."""
        info = sender_info(sig, code, self.k.ids.pid, self.k.ids.uid)
        if thread is self.current:
            self.k.signals.send(sig, info)
            return
        thread.pending.append((sig, info))
        wait = thread.wait
        mask = wait.mask if wait is not None and wait.mask is not None else thread.blocked
        if thread.state is State.BLOCKED and not mask >> (sig - 1) & 1:
            self._resume_later(thread, -errno.EINTR)

    def claim_own(self, mask: int) -> None:
        """Signals tgkill'd to the running thread while it blocked them and that ``mask``
        lets through: queued for delivery now (a sigsuspend or ppoll whose mask unblocks
        one ends at once, as in Linux)."""
        thread = self.current
        keep = []
        for sig, info in thread.pending:
            if mask >> (sig - 1) & 1:
                keep.append((sig, info))
            else:
                self.k.signals.send(sig, info)
        thread.pending = keep

    # -- switching ----------------------------------------------------------------------------

    def switch(self) -> None:
        """Between engine runs: save the running thread, run the next runnable one."""
        self.switch_pending = False
        current = self.current
        if current.state is not State.EXITED:
            current.context = self.cpu.save_context()
            current.blocked = self.k.signals.blocked
            current.altstack = self.k.signals.altstack
        self._account(current)
        self._run(self._next_after(current))

    def preempt(self) -> None:
        """The running thread's quantum is over: the next runnable thread runs (the same
        one when no other can)."""
        self._expire_timeouts()
        self._poll_fds(0)
        if any(t.state is State.RUNNABLE and t is not self.current for t in self.threads):
            self.switch()

    def _next_after(self, current: Thread) -> Thread:
        """The first runnable thread after ``current`` in creation order (``current`` last);
        when none can run, wait for the earliest timeout; none: deadlock."""
        while True:
            self._expire_timeouts()
            self._poll_fds(0)
            i = self.threads.index(current)
            for thread in self.threads[i + 1:] + self.threads[:i + 1]:
                if thread.state is State.RUNNABLE:
                    return thread
            if self._route_signals():  # a signal for the process ends a wait
                continue
            timed = [t for t in self.threads if t.state is State.BLOCKED
                     and t.wait is not None and t.wait.deadline is not None]
            first = min(timed, key=self._time_left) if timed else None
            # --timeout bounds host waits (past it, timeout_left raises LimitExceeded).
            limit = None if self.k.virtual_time else self.k.timeout_left("a thread wait")
            if first is not None and first.wait is not None and first.wait.deadline:
                wait = max(self._time_left(first), 0) / 1e9
                if self._poll_fds(wait if limit is None else min(wait, limit)):
                    continue
                if limit is None or wait <= limit:
                    self.k.wait_until(*first.wait.deadline)
                else:  # sleep out what --timeout leaves (it raises once that is past)
                    time.sleep(self.k.timeout_left("a thread wait") or 0)
            elif not self._poll_fds(limit) and not self._fd_waiters():
                if self.k.virtual_time or not self._signal_waiters():
                    raise self._deadlock()
                # Host time, a thread in pause or poll with nothing in the run to end it:
                # another process's signal may (its default action ends leakdbt as it
                # would end the guest), so wait as Linux does, until --timeout.
                if limit is None:
                    signal.pause()
                else:
                    time.sleep(limit)

    def _time_left(self, thread: Thread) -> int:
        assert thread.wait is not None and thread.wait.deadline is not None
        clock, deadline = thread.wait.deadline
        return deadline - self.k.clock_ns(clock)

    def _expire_timeouts(self) -> None:
        for thread in self.threads:
            wait = thread.wait
            if (thread.state is State.BLOCKED and wait is not None
                    and wait.deadline is not None and self._time_left(thread) <= 0):
                if wait.restart is not None:  # a poll: made again with no time left
                    self._restart_later(thread)
                else:
                    self._resume_later(thread, wait.timeout_result)

    def _deadlock(self) -> Deadlock:
        blocked = [t for t in self.threads if t.state is State.BLOCKED]
        if len(blocked) == 1 and blocked[0].wait is not None:
            return Deadlock(f"deadlock: the only guest thread waits {_on(blocked[0].wait)} "
                            "with no timeout")
        where = ", ".join(f"thread {t.tid} {_on(t.wait)}" for t in blocked
                          if t.wait is not None)
        return Deadlock(f"deadlock: all {len(blocked)} guest threads wait with no timeout "
                        f"and none can wake them ({where})")

    def _run(self, thread: Thread) -> None:
        cpu = self.cpu
        assert thread.context is not None
        cpu.restore_context(thread.context)
        thread.context = None
        if thread.result is not None:
            cpu.set_reg("rax", thread.result)
            thread.result = None
        if thread.restart is not None:  # back to its syscall instruction, to make it again
            cpu.set_reg("rax", thread.restart)
            cpu.set_reg("rip", cpu.reg("rip") - 2)
            thread.restart = None
        self.k.signals.blocked = thread.blocked
        self.k.signals.altstack = thread.altstack
        suspended, thread.suspended = thread.suspended, None
        if suspended is not None:  # its handler runs under the wait's mask, then its own
            self.k.signals.suspended_mask = suspended
        switched = thread is not self.current
        self.current = thread
        self._started_at = self._done()
        cpu.restart_quantum()
        if switched:
            self.switches += 1
            index = self.threads.index(thread)
            for listener in cpu.thread_listeners:
                listener(index)
        self._deliver_own(thread)

    def _deliver_own(self, thread: Thread) -> None:
        """Signals tgkill'd to ``thread`` while it was not running: delivered now, unless
        its mask blocks them (they stay queued for it)."""
        if not thread.pending:
            if self.k.signals.suspended_mask is not None:
                self.deliver()  # restores the thread's own mask
            return
        keep = []
        for sig, info in thread.pending:
            if thread.blocked >> (sig - 1) & 1:
                keep.append((sig, info))
            else:
                self.k.signals.send(sig, info)
        thread.pending = keep
        self.deliver()

    def _done(self) -> int:
        counter = self.cpu.instruction_counter()
        return counter.done if counter is not None else 0

    def _account(self, thread: Thread) -> None:
        done = self._done()
        thread.instructions += done - self._started_at
        self._started_at = done


def _on(wait: Wait) -> str:
    """What ``wait`` waits on, for the deadlock message."""
    if wait.futex:
        return f"on futex {wait.futex:#x}"
    if wait.restart is not None:
        return f"in system call {wait.restart}"
    return "for a signal"


def _release(wait: Wait) -> None:
    """Close what a wait owns (its children's pidfds)."""
    for fd in wait.pidfds:
        with contextlib.suppress(OSError):
            os.close(fd)
    wait.pidfds = ()


def thread_group(k: Kernel, deliver: Callable[[], None]) -> ThreadGroup:
    """The guest's threads, made on first use (the main thread alone)."""
    if k.threads is None:
        k.threads = ThreadGroup(k, deliver)
    return k.threads


def current_tid(k: Kernel) -> int:
    """gettid(2)."""
    return k.threads.current.tid if k.threads is not None else k.ids.pid
