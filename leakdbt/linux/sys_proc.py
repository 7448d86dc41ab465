"""Process, identity, time, randomness and signal system calls (see the Linux man pages of
each call: exit_group(2), uname(2), sysinfo(2), prlimit(2), sched_getaffinity(2), arch_prctl(2),
futex(2), clock_gettime(2), nanosleep(2), getrandom(2))."""

from __future__ import annotations

import errno
import os
import resource
import struct
import time
from collections.abc import Callable

from leakdbt.linux.kernel import Kernel, s32, s64
from leakdbt.linux.sys_signal import interruptible_sleep

ARCH_SET_GS, ARCH_SET_FS, ARCH_GET_FS, ARCH_GET_GS = 0x1001, 0x1002, 0x1003, 0x1004
ARCH_CET_STATUS = 0x3001
FUTEX_WAIT, FUTEX_WAKE = 0, 1
FUTEX_CMD_MASK = ~(128 | 256)  # FUTEX_PRIVATE_FLAG | FUTEX_CLOCK_REALTIME
TIMER_ABSTIME = 1
CLOCKS = {0: time.CLOCK_REALTIME, 1: time.CLOCK_MONOTONIC, 2: time.CLOCK_PROCESS_CPUTIME_ID,
          3: time.CLOCK_THREAD_CPUTIME_ID, 4: time.CLOCK_MONOTONIC_RAW, 5: 5, 6: 6,
          7: time.CLOCK_BOOTTIME}
RLIMIT_STACK = 3
RLIM_NLIMITS = 16
GUEST_STACK_LIMIT = 8 << 20


class GuestExit(Exception):
    """Raised by exit/exit_group: the dispatcher stops the machine with this status."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status



def sys_getpid(k: Kernel) -> int:
    return k.ids.pid



def sys_getppid(k: Kernel) -> int:
    return k.ids.ppid


def sys_getuid(k: Kernel) -> int:
    return k.ids.uid


def sys_geteuid(k: Kernel) -> int:
    return k.ids.euid


def sys_getgid(k: Kernel) -> int:
    return k.ids.gid


def sys_getegid(k: Kernel) -> int:
    return k.ids.egid


def sys_getpgrp(k: Kernel) -> int:
    return os.getpgrp()


def _may_see(k: Kernel, pid: int) -> bool:
    """Process groups and sessions: the guest may name itself (0 or its pid), its parent and
    its own children; other host processes are out of its reach (ESRCH, no oracle)."""
    return pid in (0, k.ids.pid, k.ids.ppid) or pid in k.children


def _host_call(fn: Callable[[], int]) -> int:
    try:
        return fn()
    except OSError as e:
        return -(e.errno or errno.EPERM)


def sys_setpgid(k: Kernel, pid: int, pgid: int) -> int:
    """setpgid(2): guest processes are host processes, so the host's own rules apply (self
    or a child not yet exec'd, same session, EINVAL for a negative group)."""
    p, g = s32(pid), s32(pgid)
    if g < 0:
        return -errno.EINVAL
    if p not in (0, k.ids.pid) and p not in k.children:
        return -errno.ESRCH
    def setpgid() -> int:
        os.setpgid(p, g)
        return 0

    return _host_call(setpgid)


def sys_getpgid(k: Kernel, pid: int) -> int:
    """getpgid(2) of the guest, its parent or a child."""
    p = s32(pid)
    if not _may_see(k, p):
        return -errno.ESRCH
    return _host_call(lambda: os.getpgid(p))


def sys_setsid(k: Kernel) -> int:
    """setsid(2): the process (host and guest alike) leads a new session and group."""
    def setsid() -> int:
        os.setsid()
        return os.getpid()

    return _host_call(setsid)


def sys_getsid(k: Kernel, pid: int) -> int:
    """getsid(2) of the guest, its parent or a child."""
    p = s32(pid)
    if not _may_see(k, p):
        return -errno.ESRCH
    return _host_call(lambda: os.getsid(p))


def sys_uname(k: Kernel, buf: int) -> int:
    u = os.uname()
    fields = (u.sysname, u.nodename, u.release, u.version, "x86_64", "(none)")
    k.mem.write(buf, b"".join(f.encode()[:64].ljust(65, b"\0") for f in fields))
    return 0


def sys_sysinfo(k: Kernel, buf: int) -> int:
    pages = os.sysconf("SC_PHYS_PAGES")
    avail = os.sysconf("SC_AVPHYS_PAGES")
    page = os.sysconf("SC_PAGE_SIZE")
    uptime = int(time.clock_gettime(time.CLOCK_BOOTTIME))
    loads = [int(x * 65536) for x in os.getloadavg()]
    k.mem.write(buf, struct.pack("<q3Q6QHHxxxxQQI4x", uptime, *loads, pages * page,
                                 avail * page, 0, 0, 0, 0, 1, 0, 0, 0, 1))
    return 0


def sys_prlimit64(k: Kernel, pid: int, res: int, new: int, old: int) -> int:
    if s32(pid) not in (0, k.ids.pid):
        return -errno.ESRCH
    if res >= RLIM_NLIMITS:
        return -errno.EINVAL
    if old:
        k.mem.write(old, struct.pack("<QQ", *k.rlimits.get(res, _host_rlimit(res))))
    if new:
        soft, hard = struct.unpack("<QQ", k.mem.read(new, 16))
        if soft > hard:
            return -errno.EINVAL
        k.rlimits[res] = (soft, hard)  # remembered, not enforced
    return 0


def _host_rlimit(res: int) -> tuple[int, int]:
    if res == RLIMIT_STACK:
        return GUEST_STACK_LIMIT, (1 << 64) - 1
    soft, hard = resource.getrlimit(res)
    inf = (1 << 64) - 1
    return (inf if soft == resource.RLIM_INFINITY else soft,
            inf if hard == resource.RLIM_INFINITY else hard)


def sys_getrlimit(k: Kernel, res: int, addr: int) -> int:
    return sys_prlimit64(k, 0, res, 0, addr)


def sys_setrlimit(k: Kernel, res: int, addr: int) -> int:
    return sys_prlimit64(k, 0, res, addr, 0)


def sys_sched_getaffinity(k: Kernel, pid: int, size: int, addr: int) -> int:
    if size < 8 or size & 7:
        return -errno.EINVAL
    mask = 0
    for cpu in os.sched_getaffinity(0):
        mask |= 1 << cpu
    nbytes = max(8, (mask.bit_length() + 63) // 64 * 8)
    if size < nbytes:
        return -errno.EINVAL
    k.mem.write(addr, mask.to_bytes(nbytes, "little"))
    return nbytes


def sys_zero(k: Kernel, *_args: int) -> int:
    """Calls that succeed with no effect for a single-threaded guest."""
    return 0


def sys_enosys(k: Kernel, *_args: int) -> int:
    """Calls that glibc probes and that must fail quietly (e.g. rseq)."""
    return -errno.ENOSYS


def sys_refuse_network(k: Kernel, *_args: int) -> int:
    """Network access is not granted to guests."""
    return -errno.EACCES


def sys_arch_prctl(k: Kernel, code: int, addr: int) -> int:
    machine = k.cpu
    if code == ARCH_SET_FS:
        machine.set_reg("fs_base", addr)
    elif code == ARCH_SET_GS:
        machine.set_reg("gs_base", addr)
    elif code in (ARCH_GET_FS, ARCH_GET_GS):
        value = machine.reg("fs_base" if code == ARCH_GET_FS else "gs_base")
        k.mem.write(addr, struct.pack("<Q", value))
    else:
        return -errno.EINVAL  # includes ARCH_CET_STATUS: no CET
    return 0




def _timespec(ns: int) -> bytes:
    return struct.pack("<qq", ns // 1_000_000_000, ns % 1_000_000_000)


def sys_clock_gettime(k: Kernel, clk: int, tp: int) -> int:
    host = CLOCKS.get(s32(clk))
    if host is None:
        return -errno.EINVAL
    k.mem.write(tp, _timespec(k.clock_ns(host)))
    return 0


def sys_clock_getres(k: Kernel, clk: int, tp: int) -> int:
    host = CLOCKS.get(s32(clk))
    if host is None:
        return -errno.EINVAL
    if tp:
        k.mem.write(tp, _timespec(int(time.clock_getres(host) * 1e9) or 1))
    return 0


def sys_gettimeofday(k: Kernel, tv: int, tz: int) -> int:
    ns = k.clock_ns(time.CLOCK_REALTIME)
    if tv:
        k.mem.write(tv, struct.pack("<qq", ns // 1_000_000_000, ns // 1000 % 1_000_000))
    if tz:
        k.mem.write(tz, struct.pack("<ii", 0, 0))
    return 0


def sys_time(k: Kernel, tloc: int) -> int:
    now = k.clock_ns(time.CLOCK_REALTIME) // 10**9
    if tloc:
        k.mem.write(tloc, struct.pack("<q", now))
    return now


def _sleep(k: Kernel, clock: int, duration: int, rem: int) -> int:
    """nanosleep(2)'s end: 0, or -EINTR (with the time left in ``rem``) after a signal."""
    left = interruptible_sleep(k, clock, max(duration, 0))
    if not left:
        return 0
    if rem:
        k.mem.write(rem, _timespec(left))
    return -errno.EINTR


def sys_nanosleep(k: Kernel, req: int, rem: int) -> int:
    sec, nsec = struct.unpack("<qq", k.mem.read(req, 16))
    if sec < 0 or not 0 <= nsec < 1_000_000_000:
        return -errno.EINVAL
    return _sleep(k, time.CLOCK_MONOTONIC, sec * 1_000_000_000 + nsec, rem)


def sys_clock_nanosleep(k: Kernel, clk: int, flags: int, req: int, rem: int) -> int:
    host = CLOCKS.get(s32(clk))
    if host is None or s32(clk) in (2, 3):
        return -errno.EINVAL
    sec, nsec = struct.unpack("<qq", k.mem.read(req, 16))
    if sec < 0 or not 0 <= nsec < 1_000_000_000:
        return -errno.EINVAL
    ns = sec * 1_000_000_000 + nsec
    if flags & TIMER_ABSTIME:
        return _sleep(k, host, ns - k.clock_ns(host), 0)
    return _sleep(k, host, ns, rem)


def sys_getrandom(k: Kernel, buf: int, count: int, flags: int) -> int:
    count = min(count, 1 << 25)
    k.mem.write(buf, k.entropy(count))
    return count


def sys_getcpu(k: Kernel, cpu: int, node: int, _cache: int) -> int:
    if cpu:
        k.mem.write(cpu, struct.pack("<I", 0))
    if node:
        k.mem.write(node, struct.pack("<I", 0))
    return 0


def sys_prctl(k: Kernel, option: int, a2: int, *_rest: int) -> int:
    if option in (15, 16):  # PR_SET_NAME, PR_GET_NAME
        if option == 16:
            k.mem.write(a2, os.path.basename(k.exe_path).encode()[:15].ljust(16, b"\0"))
        return 0
    return -errno.EINVAL


def sys_getrusage(k: Kernel, who: int, buf: int) -> int:
    if s32(who) not in (0, -1, 1):
        return -errno.EINVAL
    ru = resource.getrusage(resource.RUSAGE_SELF)
    utime, stime = int(ru.ru_utime * 1e6), int(ru.ru_stime * 1e6)
    k.mem.write(buf, struct.pack("<4q14q", utime // 10**6, utime % 10**6, stime // 10**6,
                                 stime % 10**6, ru.ru_maxrss, *([0] * 13)))
    return 0


def sys_times(k: Kernel, buf: int) -> int:
    t = os.times()
    hz = os.sysconf("SC_CLK_TCK")
    if buf:
        k.mem.write(buf, struct.pack("<4q", int(t.user * hz), int(t.system * hz), 0, 0))
    return s64(int(t.elapsed * hz))


HANDLERS: dict[int, tuple[str, Callable[..., int]]] = {
    39: ("getpid", sys_getpid),
    41: ("socket", sys_refuse_network),
    42: ("connect", sys_refuse_network),
    43: ("accept", sys_refuse_network),
    46: ("sendmsg", sys_refuse_network),
    47: ("recvmsg", sys_refuse_network),
    49: ("bind", sys_refuse_network),
    50: ("listen", sys_refuse_network),
    54: ("setsockopt", sys_refuse_network),
    55: ("getsockopt", sys_refuse_network),
    63: ("uname", sys_uname),
    96: ("gettimeofday", sys_gettimeofday),
    97: ("getrlimit", sys_getrlimit),
    98: ("getrusage", sys_getrusage),
    99: ("sysinfo", sys_sysinfo),
    100: ("times", sys_times),
    102: ("getuid", sys_getuid),
    104: ("getgid", sys_getgid),
    107: ("geteuid", sys_geteuid),
    108: ("getegid", sys_getegid),
    110: ("getppid", sys_getppid),
    109: ("setpgid", sys_setpgid),
    111: ("getpgrp", sys_getpgrp),
    112: ("setsid", sys_setsid),
    121: ("getpgid", sys_getpgid),
    124: ("getsid", sys_getsid),
    157: ("prctl", sys_prctl),
    158: ("arch_prctl", sys_arch_prctl),
    160: ("setrlimit", sys_setrlimit),
    201: ("time", sys_time),
    204: ("sched_getaffinity", sys_sched_getaffinity),
    221: ("fadvise64", sys_zero),
    228: ("clock_gettime", sys_clock_gettime),
    229: ("clock_getres", sys_clock_getres),
    288: ("accept4", sys_refuse_network),
    302: ("prlimit64", sys_prlimit64),
    307: ("sendmmsg", sys_refuse_network),
    309: ("getcpu", sys_getcpu),
    318: ("getrandom", sys_getrandom),
    334: ("rseq", sys_enosys),
}
