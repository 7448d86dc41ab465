"""Nothing unsupported passes silently: every clone flag combination, exec and unknown system
call leakdbt does not run fails with an errno, is named once on stderr, and is fatal under
--strict.  (fork, vfork, posix_spawn's clone and execve run: tests/integration/
test_processes.py; threads: tests/unit/linux/test_thread_scheduler.py.)"""

from __future__ import annotations

import errno
import io
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from leakdbt.errors import UnsupportedSyscall
from leakdbt.linux.files import FdTable
from leakdbt.linux.fs import FileSystem
from leakdbt.linux.kernel import Kernel, ProcessIds
from leakdbt.linux.sys_clone import check_clone_flags, clone_flag_names
from leakdbt.linux.syscalls import SyscallDispatcher
from tests.unit.linux.test_sys_fs import FakeMemory

SIGCHLD = 17
PTHREAD = 0x3D0F00  # glibc 2.36 pthread_create: VM|FS|FILES|SIGHAND|THREAD|SYSVSEM|SETTLS|...
PTHREAD_NAMES = ("CLONE_VM|CLONE_FS|CLONE_FILES|CLONE_SIGHAND|CLONE_THREAD|CLONE_SYSVSEM|"
                 "CLONE_SETTLS|CLONE_PARENT_SETTID|CLONE_CHILD_CLEARTID")


class FakeCpu:
    """Registers in a dict; what SyscallDispatcher needs of the machine."""

    def __init__(self) -> None:
        self.regs: dict[str, int] = {"rip": 0x401000, "rflags": 0x202}
        self.exited = False

    def reg(self, name: str) -> int:
        return self.regs.get(name, 0)

    def set_reg(self, name: str, value: int) -> None:
        self.regs[name] = value & (1 << 64) - 1

    def stop(self) -> None:
        pass

    def defer(self, work: object) -> None:
        raise AssertionError("no signal work expected")


@pytest.fixture
def kernel(tmp_path: Path) -> Iterator[tuple[Kernel, FakeMemory]]:
    mem = FakeMemory()
    fds = FdTable()
    ids = ProcessIds(os.getpid(), os.getppid(), os.getuid(), os.getgid(), os.geteuid(),
                     os.getegid())
    k = Kernel(mem=mem, fs=FileSystem(str(tmp_path), rw=[], cwd="/"),  # type: ignore[arg-type]
               fds=fds, ids=ids, exe_path="/prog")
    yield k, mem
    fds.close_all()


def _call(d: SyscallDispatcher, nr: int, *args: int) -> int:
    cpu = FakeCpu()
    cpu.regs["rax"] = nr
    for reg, value in zip(("rdi", "rsi", "rdx", "r10", "r8", "r9"), args, strict=False):
        cpu.regs[reg] = value
    d(cpu)
    result = cpu.regs["rax"]
    return result - (1 << 64) if result >> 63 else result


def _clone3_args(mem: FakeMemory, flags: int, exit_signal: int) -> int:
    return mem.alloc(struct.pack("<11Q", flags, 0, 0, 0, exit_signal, 0, 0, 0, 0, 0, 0))


# (system call number, arguments or a function of memory giving them, expected report)
CASES = {
    # pthread_create's flags run (tests/unit/linux/test_thread_scheduler.py); a thread that asks for
    # a pidfd, or shares no fd table, does not.
    "thread-with-pidfd": (435, lambda m: (_clone3_args(m, PTHREAD | 0x1000, 0), 88),
                          "clone3 flags "
                          f"{PTHREAD_NAMES.replace('SIGHAND|', 'SIGHAND|CLONE_PIDFD|')}"
                          " (clone3, 435)"),
    "thread-own-files": (56, lambda m: (PTHREAD & ~0x400, 0x7000, 0, 0, 0),
                         f"clone flags {PTHREAD_NAMES.replace('CLONE_FILES|', '')} (clone, 56)"),
    "shared-fd-table": (56, lambda m: (0x400 | SIGCHLD, 0, 0, 0, 0),
                        "clone flags CLONE_FILES|SIGCHLD (clone, 56)"),
    "other-exit-signal": (56, lambda m: (10, 0, 0, 0, 0), "clone flags SIGUSR1 (clone, 56)"),
    "clone3-pidfd": (435, lambda m: (_clone3_args(m, 0x1000, SIGCHLD), 88),
                     "clone3 flags CLONE_PIDFD|SIGCHLD (clone3, 435)"),
    "plain-clone-vm": (56, lambda m: (0x100, 0x7000, 0, 0, 0),
                       "clone flags CLONE_VM (clone, 56)"),
    "namespaces": (56, lambda m: (0x10000000 | 0x20000000 | SIGCHLD, 0, 0, 0, 0),
                   "clone flags CLONE_NEWUSER|CLONE_NEWPID|SIGCHLD (clone, 56)"),
    "fexecve": (322, lambda m: (3, m.cstr(""), 0, 0, 0x1000),
                "execveat of an open file (AT_EMPTY_PATH) (execveat, 322)"),
    "execveat-dirfd": (322, lambda m: (3, m.cstr("true"), 0, 0, 0),
                       "execveat relative to a directory fd (execveat, 322)"),
    "unknown": (206, lambda m: (), "system call io_setup (206)"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_unsupported_is_reported_once(kernel: tuple[Kernel, FakeMemory], case: str) -> None:
    k, mem = kernel
    nr, make_args, what = CASES[case]
    err = io.StringIO()
    d = SyscallDispatcher(k, stderr=err)
    args = make_args(mem)
    assert _call(d, nr, *args) == -errno.ENOSYS
    assert _call(d, nr, *args) == -errno.ENOSYS
    assert err.getvalue() == f"leakdbt: unsupported {what} returns -ENOSYS\n"


@pytest.mark.parametrize("case", sorted(CASES))
def test_unsupported_is_fatal_when_strict(kernel: tuple[Kernel, FakeMemory], case: str) -> None:
    k, mem = kernel
    nr, make_args, what = CASES[case]
    d = SyscallDispatcher(k, strict=True, stderr=io.StringIO())
    with pytest.raises(UnsupportedSyscall, match="unsupported " + what.replace("|", r"\|")
                       .replace("(", r"\(").replace(")", r"\)")):
        _call(d, nr, *make_args(mem))


@pytest.mark.parametrize("flags", [
    0x10000 | 0x100,  # CLONE_THREAD without CLONE_SIGHAND
    0x800,  # CLONE_SIGHAND without CLONE_VM
    0x20000 | 0x200,  # CLONE_NEWNS with CLONE_FS
    0x10000000 | 0x200,  # CLONE_NEWUSER with CLONE_FS
    1 << 40,  # no such flag
])
def test_invalid_combinations_are_einval_like_linux(kernel: tuple[Kernel, FakeMemory],
                                                      flags: int) -> None:
    k, _ = kernel
    err = io.StringIO()
    d = SyscallDispatcher(k, strict=True, stderr=err)
    assert check_clone_flags(flags) == -errno.EINVAL
    if flags < 1 << 32:
        assert _call(d, 56, flags, 0, 0, 0, 0) == -errno.EINVAL
    assert err.getvalue() == ""


def test_clone3_rejects_a_short_struct(kernel: tuple[Kernel, FakeMemory]) -> None:
    k, mem = kernel
    d = SyscallDispatcher(k, strict=True)
    assert _call(d, 435, _clone3_args(mem, PTHREAD, 0), 32) == -errno.EINVAL


def test_flag_names_say_the_unknown_bits() -> None:
    assert clone_flag_names(0x100 | (1 << 40) | SIGCHLD) == f"CLONE_VM|{1 << 40:#x}|SIGCHLD"


def test_wait_without_children_is_echild(kernel: tuple[Kernel, FakeMemory]) -> None:
    k, _ = kernel
    d = SyscallDispatcher(k, strict=True)
    assert _call(d, 61, (1 << 64) - 1, 0, 0, 0) == -errno.ECHILD
