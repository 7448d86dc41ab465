"""Credentials (leakdbt.linux.sys_ids): the set*id calls change the guest's view of its ids
by Linux's rules, checked against the host kernel itself on random id states and calls, and
never change leakdbt's own ids."""

from __future__ import annotations

import errno
import io
import json
import os
import random
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from leakdbt.linux.files import FdTable
from leakdbt.linux.fs import FileSystem
from leakdbt.linux.kernel import Kernel, ProcessIds
from leakdbt.linux.sys_exec import keep
from leakdbt.linux.syscalls import SyscallDispatcher
from tests.unit.linux.test_sys_fs import FakeMemory
from tests.unit.linux.test_unsupported import _call

SETUID, SETGID, SETREUID, SETREGID, GETGROUPS, SETGROUPS = 105, 106, 113, 114, 115, 116
SETRESUID, GETRESUID, SETRESGID, GETRESGID = 117, 118, 119, 120
GETUID, GETEUID, GETGID, GETEGID = 102, 107, 104, 108
M1 = (1 << 64) - 1  # -1 in a register
CALLS = {SETUID: 1, SETGID: 1, SETREUID: 2, SETREGID: 2, SETRESUID: 3, SETRESGID: 3,
         SETGROUPS: 0}


def _kernel(tmp_path: Path, ids: ProcessIds) -> tuple[Kernel, FakeMemory, SyscallDispatcher,
                                                      io.StringIO]:
    mem = FakeMemory()
    k = Kernel(mem=mem, fs=FileSystem(str(tmp_path), rw=[], cwd="/"),  # type: ignore[arg-type]
               fds=FdTable(), ids=ids, exe_path="/prog")
    err = io.StringIO()
    return k, mem, SyscallDispatcher(k, stderr=err), err


def _ids(uids: tuple[int, int, int], gids: tuple[int, int, int]) -> ProcessIds:
    return ProcessIds(1, 0, uids[0], gids[0], uids[1], gids[1], suid=uids[2], sgid=gids[2],
                      groups=())


def _res(d: SyscallDispatcher, mem: FakeMemory, nr: int) -> tuple[int, ...]:
    out = mem.alloc(12)
    assert _call(d, nr, out, out + 4, out + 8) == 0
    return struct.unpack("<3I", mem.read(out, 12))


Env = tuple[Kernel, FakeMemory, SyscallDispatcher, io.StringIO]


@pytest.fixture
def user(tmp_path: Path) -> Iterator[Env]:
    """An unprivileged guest: real 1000, effective 1001, saved 1002 (gids 2000..2002)."""
    yield _kernel(tmp_path, _ids((1000, 1001, 1002), (2000, 2001, 2002)))


def test_unprivileged_moves_between_its_own_ids(user: Env) -> None:
    k, mem, d, err = user
    host = (os.getresuid(), os.getresgid(), os.getgroups())
    assert _call(d, SETRESUID, M1, M1, M1) == 0
    assert _call(d, SETRESUID, 1002, 1000, 1001) == 0
    assert _res(d, mem, GETRESUID) == (1002, 1000, 1001)
    assert (_call(d, GETUID), _call(d, GETEUID)) == (1002, 1000)
    assert _call(d, SETRESUID, 0, M1, M1) == -errno.EPERM
    assert _call(d, SETRESUID, M1, 1003, M1) == -errno.EPERM
    assert _res(d, mem, GETRESUID) == (1002, 1000, 1001)  # a refused call changes nothing
    assert _call(d, SETRESGID, M1, 2002, M1) == 0
    assert _res(d, mem, GETRESGID) == (2000, 2002, 2002)
    assert (_call(d, GETGID), _call(d, GETEGID)) == (2000, 2002)
    assert _call(d, SETGID, 0) == -errno.EPERM
    assert _call(d, SETUID, M1) == -errno.EINVAL
    assert _call(d, SETGROUPS, 0, 0) == -errno.EPERM
    # Nothing reached the host, and nothing was reported as unsupported.
    assert (os.getresuid(), os.getresgid(), os.getgroups()) == host
    assert err.getvalue() == ""


def test_root_guest_changes_only_its_view(tmp_path: Path) -> None:
    k, mem, d, err = _kernel(tmp_path, _ids((0, 0, 0), (0, 0, 0)))
    host = (os.getresuid(), os.getresgid(), os.getgroups())
    groups = mem.alloc(struct.pack("<3I", 30, 10, 20))
    assert _call(d, SETGROUPS, 3, groups) == 0
    assert _call(d, SETRESGID, 100, 100, 100) == 0
    assert _call(d, SETRESUID, 1000, 1000, 0) == 0  # keeps root as its saved uid
    assert _call(d, SETRESUID, M1, 0, M1) == 0  # ... so it may take it back
    assert _call(d, SETUID, 1000) == 0  # privileged setuid: all three
    assert _res(d, mem, GETRESUID) == (1000, 1000, 1000)
    assert _call(d, SETRESUID, M1, 0, M1) == -errno.EPERM  # root is gone for good
    out = mem.alloc(16)
    assert _call(d, GETGROUPS, 0, 0) == 3
    assert _call(d, GETGROUPS, 2, out) == -errno.EINVAL
    assert _call(d, GETGROUPS, 4, out) == 3
    assert struct.unpack("<3I", mem.read(out, 12)) == (10, 20, 30)  # the kernel sorts them
    assert (os.getresuid(), os.getresgid(), os.getgroups()) == host
    assert err.getvalue() == ""


def test_setgroups_limits(tmp_path: Path) -> None:
    k, mem, d, _ = _kernel(tmp_path, _ids((0, 0, 0), (0, 0, 0)))
    assert _call(d, SETGROUPS, 65537, 0) == -errno.EINVAL
    assert _call(d, SETGROUPS, 1, 0x10) == -errno.EFAULT
    assert _call(d, SETGROUPS, 1, mem.alloc(struct.pack("<I", 0xFFFFFFFF))) == -errno.EINVAL
    assert _call(d, SETGROUPS, 0, 0) == 0 and _call(d, GETGROUPS, 0, 0) == 0


def test_default_ids_are_the_host_s(tmp_path: Path) -> None:
    ids = ProcessIds(1, 0, os.getuid(), os.getgid(), os.geteuid(), os.getegid())
    k, mem, d, _ = _kernel(tmp_path, ids)
    assert _res(d, mem, GETRESUID) == (os.getuid(), os.geteuid(), os.geteuid())
    out = mem.alloc(4 * 256)
    n = _call(d, GETGROUPS, 256, out)
    assert list(struct.unpack(f"<{n}I", mem.read(out, 4 * n))) == os.getgroups()


# -- the host kernel as the reference ---------------------------------------------------------


def _pool() -> list[int]:
    """Ids the random states and calls use: with root, a few distinct ones (0 among them);
    otherwise only the host's own (the only state a test can put a real process in)."""
    if os.geteuid() == 0:
        return [0, 1000, 1001, 1002]
    return sorted({os.getuid(), os.geteuid(), os.getgid(), os.getegid(), 1000})


# Run in a small separate Python process (forking it is much cheaper than forking pytest):
# for each trial, a forked child is put in the trial's id state, makes the raw system call
# (a list argument is passed as an array of uint32) and reports its -errno or 0 and the
# resulting ids and groups.
HOST_WORKER = r"""
import ctypes, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
out = []
for uids, gids, nr, args in json.load(sys.stdin):
    rd, wr = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(rd)
            if os.geteuid() == 0:
                os.setgroups([])
                os.setresgid(*gids)
                os.setresuid(*uids)
            raw = [(ctypes.c_uint32 * len(a))(*a) if isinstance(a, list) else ctypes.c_long(a)
                   for a in args]
            r = libc.syscall(ctypes.c_long(nr), *raw)
            result = -ctypes.get_errno() if r == -1 else r
            os.write(wr, json.dumps([result, os.getresuid(), os.getresgid(),
                                     sorted(os.getgroups())]).encode())
        finally:
            os._exit(0)
    os.close(wr)
    with os.fdopen(rd, "rb") as f:
        out.append(json.loads(f.read()))
    os.waitpid(pid, 0)
json.dump(out, sys.stdout)
"""


def _on_host(trials: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
    done = subprocess.run([sys.executable, "-c", HOST_WORKER], input=json.dumps(trials),
                          capture_output=True, text=True, check=True)
    return [(r, tuple(u), tuple(g), tuple(gs)) for r, u, g, gs in json.loads(done.stdout)]


def test_rules_match_the_host_kernel(tmp_path: Path) -> None:
    """300 random (id state, call) pairs: the result and the ids afterwards are Linux's."""
    rng = random.Random(17)
    pool = _pool()
    root = os.geteuid() == 0
    calls = sorted(CALLS) if root else sorted(set(CALLS) - {SETGROUPS})
    trials: list[tuple[object, ...]] = []
    for _ in range(300):
        uids = tuple(rng.choice(pool) for _ in range(3)) if root else os.getresuid()
        gids = tuple(rng.choice(pool) for _ in range(3)) if root else os.getresgid()
        nr = rng.choice(calls)
        args: list[int | list[int]]
        if nr == SETGROUPS:
            groups = [rng.choice(pool) for _ in range(rng.randrange(4))]
            args = [len(groups), groups]
        else:
            args = [rng.choice([*pool, -1]) for _ in range(CALLS[nr])]
        trials.append((uids, gids, nr, args))
    outcomes = set()
    for (uids, gids, nr, args), want in zip(trials, _on_host(trials), strict=True):
        mem = FakeMemory()
        regs = [mem.alloc(struct.pack(f"<{len(a)}I", *a)) if isinstance(a, list) else a & M1
                for a in args]  # type: ignore[union-attr]
        k, _, d, err = _kernel(tmp_path, _ids(uids, gids))  # type: ignore[arg-type]
        k.mem = mem  # type: ignore[assignment]
        k.ids.groups = ()
        got = _call(d, nr, *regs)
        state = (got, (k.ids.uid, k.ids.euid, k.ids.suid), (k.ids.gid, k.ids.egid, k.ids.sgid),
                 tuple(sorted(k.ids.groups)))
        if not root:  # the host process kept its own groups; the model started with none
            state, want = state[:3], want[:3]
        assert state == want, (uids, gids, nr, args)
        assert err.getvalue() == ""
        outcomes.add((nr, got))
    # Both successes and refusals were compared, for every call.
    assert {nr for nr, _ in outcomes} == set(calls)
    if root:
        assert {got for _, got in outcomes} >= {0, -errno.EPERM}


def test_execve_makes_the_saved_ids_the_effective_ones(tmp_path: Path) -> None:
    """A root guest that kept 0 as its saved uid loses it across execve(2), as in Linux."""
    k, mem, d, _ = _kernel(tmp_path, _ids((0, 0, 0), (0, 0, 0)))
    assert _call(d, SETRESGID, 100, 100, 0) == 0
    assert _call(d, SETRESUID, 1000, 1000, 0) == 0
    kept = keep(k)
    assert (kept.ids.uid, kept.ids.euid, kept.ids.suid) == (1000, 1000, 1000)
    assert (kept.ids.gid, kept.ids.egid, kept.ids.sgid) == (100, 100, 100)
    assert _call(d, SETRESUID, M1, 0, M1) == -errno.EPERM
