"""Waiting on descriptors and the descriptors waited on: poll(2), ppoll(2), select(2),
pselect6(2), epoll_create(2), epoll_create1(2), epoll_ctl(2), epoll_wait(2), epoll_pwait(2),
epoll_pwait2(2), eventfd(2), eventfd2(2), socketpair(2), and on the sockets it makes
sendto(2)/recvfrom(2) without an address and shutdown(2).

Every guest fd holds a host fd (leakdbt.linux.files), so readiness is the host's: a wait is
a host poll(2) through :func:`leakdbt.linux.blocking.block`, which also lets timers and
children's ends (SIGCHLD) interrupt it with EINTR, as Linux does for a signal with a handler
(none of these calls is restarted after a handler, SA_RESTART or not).  An epoll instance is
a host epoll fd: the host keeps the interest list, so level- and edge-triggered modes,
EPOLLONESHOT and the removal of a closed file's entries are Linux's own.  Layouts: struct
pollfd (8 bytes), fd_set (bit arrays of longs), struct epoll_event (12 bytes, packed on
x86-64), struct timespec/timeval.

With other guest threads, a wait that finds nothing ready parks its thread on the whole set
of host fds (leakdbt.linux.blocking.park_on_set) when only those threads could end it: the
others run, and readiness or the deadline makes the call again, which waits only until the
first call's deadline (on the deadline it reports the timeout, all zero, as Linux does).

A sendto/recvfrom that would block waits as read and write do (leakdbt.linux.blocking):
other threads run meanwhile, --timeout ends it; MSG_DONTWAIT or O_NONBLOCK answer EAGAIN.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import socket
import stat
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from leakdbt.linux.blocking import (
    Deadline,
    block,
    claim_own,
    interrupting,
    may_wait,
    nonblocking,
    park_on_fd,
    park_on_set,
    parkable,
    resumed_deadline,
    take_progress,
    write_waiting,
)
from leakdbt.linux.files import FsError, OpenFile
from leakdbt.linux.kernel import Kernel, Unsupported, s32
from leakdbt.linux.sigdeliver import send_from_kernel
from leakdbt.linux.signals import UNBLOCKABLE

POLLIN, POLLPRI, POLLOUT, POLLERR, POLLHUP, POLLNVAL = 1, 2, 4, 8, 0x10, 0x20
POLLRDNORM, POLLRDBAND, POLLWRNORM, POLLWRBAND = 0x40, 0x80, 0x100, 0x200
# fs/select.c: what counts as readable, writable and exceptional for select(2).
POLLIN_SET = POLLRDNORM | POLLRDBAND | POLLIN | POLLHUP | POLLERR
POLLOUT_SET = POLLWRBAND | POLLWRNORM | POLLOUT | POLLERR
POLLEX_SET = POLLPRI
POLLFD = struct.Struct("<ihh")
EPOLL_EVENT = struct.Struct("<IQ")  # packed: 12 bytes
EPOLL_CTL_ADD, EPOLL_CTL_DEL, EPOLL_CTL_MOD = 1, 2, 3
EPOLL_CLOEXEC = os.O_CLOEXEC
EP_MAX_EVENTS = 0x7FFFFFFF // EPOLL_EVENT.size
EFD_SEMAPHORE, EFD_CLOEXEC, EFD_NONBLOCK = 1, os.O_CLOEXEC, os.O_NONBLOCK
AF_UNIX = 1
SOCK_TYPE_MASK = 0xF
SOCK_NONBLOCK, SOCK_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC
SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET = 1, 2, 5
MSG_FLAGS = {0x40: "MSG_DONTWAIT", 0x4000: "MSG_NOSIGNAL", 0x2: "MSG_PEEK",
             0x100: "MSG_WAITALL"}
MSG_PEEK, MSG_DONTWAIT, MSG_WAITALL = 0x2, 0x40, 0x100
SENDTO, RECVFROM = 44, 45
POLL, SELECT, EPOLL_WAIT, PSELECT6, PPOLL, EPOLL_PWAIT, EPOLL_PWAIT2 = \
    7, 23, 232, 270, 271, 281, 441
SIGSET_SIZE = 8
NS = 1_000_000_000
FD_BITS = 64


# -- the wait itself ----------------------------------------------------------------------------


@dataclass
class _Watch:
    """Guest fds to watch, merged per host fd (dup'd fds share one)."""

    host: dict[int, int] = field(default_factory=dict)  # host fd -> poll events

    def add(self, f: OpenFile, events: int) -> None:
        self.host[f.host_fd] = self.host.get(f.host_fd, 0) | events


def _deadline(k: Kernel, ns: int | None) -> Deadline | None:
    if ns is None:
        return None
    clock = time.CLOCK_MONOTONIC
    return clock, k.clock_ns(clock) + max(ns, 0)


def _left(k: Kernel, until: Deadline | None) -> int:
    return 0 if until is None else max(0, until[1] - k.clock_ns(until[0]))


def _timespec_ns(k: Kernel, addr: int) -> int | None:
    """A struct timespec timeout (None: NULL, wait forever); EINVAL if malformed."""
    if not addr:
        return None
    sec, nsec = struct.unpack("<qq", k.mem.read(addr, 16))
    if sec < 0 or not 0 <= nsec < NS:
        raise FsError(errno.EINVAL)
    return sec * NS + nsec


def _sigmask(k: Kernel, addr: int, size: int) -> int | None:
    """The temporary signal mask of ppoll/pselect6/epoll_pwait (None: none given)."""
    if not addr:
        return None
    if size != SIGSET_SIZE:
        raise FsError(errno.EINVAL)
    return int(struct.unpack("<Q", k.mem.read(addr, 8))[0]) & ~UNBLOCKABLE


def _until(k: Kernel, nr: int, ns: int | None) -> Deadline | None:
    """The call's deadline: the first call's when it is made again after a park."""
    again, until = resumed_deadline(k, nr)
    return until if again else _deadline(k, ns)


Parked = None  # _wait's answer when the thread was parked: the call is made again later


def _wait(k: Kernel, want: dict[int, int], until: Deadline | None, mask: int | None,
          what: str, nr: int,
          on_eintr: Callable[[], None] | None = None) -> dict[int, int] | int | None:
    """Wait for ``want`` until ``until`` under the caller's temporary ``mask``: the ready
    fds, ``{}`` at the deadline, -EINTR, or None (:data:`Parked`) when the thread was
    parked (leakdbt.linux.blocking.park_on_set; ``on_eintr`` runs if a signal ends that
    wait).  Without parking, block() itself: on EINTR the handler runs with the old mask
    restored afterwards (sigsuspend's ``suspended_mask``); otherwise it is restored now."""
    effective = k.signals.blocked if mask is None else mask
    claim_own(k, effective)
    if (until is None or _left(k, until) > 0) and parkable(k, effective) \
            and not interrupting(k, effective):
        now = (time.CLOCK_MONOTONIC, k.clock_ns(time.CLOCK_MONOTONIC))
        ready = _block(k, want, now, mask, what)  # a look: nothing waits
        if ready != {}:
            return ready
        park_on_set(k, want, until, mask, nr, on_eintr)
        return Parked
    return _block(k, want, until, mask, what)


def _block(k: Kernel, want: dict[int, int], until: Deadline | None, mask: int | None,
           what: str) -> dict[int, int] | int:
    sigs = k.signals
    if mask is None:
        return block(k, want, until, sigs.blocked, what)
    old = sigs.blocked
    sigs.blocked = mask
    result = block(k, want, until, mask, what)
    if result == -errno.EINTR:
        sigs.suspended_mask = old
    else:
        sigs.blocked = old
    return result


# -- poll -------------------------------------------------------------------------------------


def _do_poll(k: Kernel, fds_addr: int, nfds: int, until: Deadline | None, mask: int | None,
             nr: int, on_eintr: Callable[[], None] | None = None) -> int | None:
    """poll's work; None when the thread was parked (the call is made again later)."""
    count = nfds & 0xFFFFFFFF
    if count > k.fds.max_fds:
        return -errno.EINVAL
    entries = list(POLLFD.iter_unpack(k.mem.read(fds_addr, POLLFD.size * count))) \
        if count else []
    watch = _Watch()
    files: list[OpenFile | None] = []
    for fd, events, _ in entries:
        f = None
        if fd >= 0 and fd in k.fds:
            f = k.fds.get(fd)
            watch.add(f, (events & 0xFFFF) | POLLERR | POLLHUP)
        files.append(f)
    nvalid = any(fd >= 0 and f is None for (fd, _, _), f in zip(entries, files, strict=True))
    if nvalid:
        until = _deadline(k, 0)
    ready = _wait(k, watch.host, until, mask, "poll", nr, on_eintr)
    if ready is Parked or isinstance(ready, int):
        return ready
    out = []
    n = 0
    for (fd, events, _), f in zip(entries, files, strict=True):
        if fd < 0:
            revents = 0
        elif f is None:
            revents = POLLNVAL
        else:
            revents = ready.get(f.host_fd, 0) & ((events & 0xFFFF) | POLLERR | POLLHUP
                                                 | POLLNVAL)
        n += bool(revents)
        out.append(POLLFD.pack(fd, events, revents))
    if count:
        k.mem.write(fds_addr, b"".join(out))
    return n


def _poll_entry(fn: Callable[..., int]) -> Callable[..., int]:
    """Map FsError/OSError raised while reading arguments to -errno."""

    def handler(k: Kernel, *args: int) -> int:
        try:
            return fn(k, *args)
        except OSError as e:
            return -(e.errno or errno.EINVAL)

    handler.__name__ = fn.__name__
    handler.__doc__ = fn.__doc__
    handler.__wrapped__ = fn  # type: ignore[attr-defined]
    return handler


@_poll_entry
def sys_poll(k: Kernel, fds: int, nfds: int, timeout: int) -> int:
    """poll(2): ``timeout`` in ms, negative for none."""
    ms = s32(timeout)
    until = _until(k, POLL, None if ms < 0 else ms * 1_000_000)
    return _do_poll(k, fds, nfds, until, None, POLL) or 0


@_poll_entry
def sys_ppoll(k: Kernel, fds: int, nfds: int, tmo: int, sigmask: int, size: int) -> int:
    """ppoll(2): the timeout is written back with the time left, as Linux does."""
    ns = _timespec_ns(k, tmo)
    mask = _sigmask(k, sigmask, size)
    until = _until(k, PPOLL, ns)
    result = _do_poll(k, fds, nfds, until, mask, PPOLL,
                      lambda: _write_left(k, tmo, until, -errno.EINTR))
    if result is Parked:
        return 0  # made again once a fd is ready or at the deadline
    _write_left(k, tmo, until, result)
    return result


def _write_left(k: Kernel, tmo: int, until: Deadline | None, result: int) -> None:
    if tmo and until is not None and result != -errno.EFAULT:
        left = _left(k, until)
        k.mem.write(tmo, struct.pack("<qq", left // NS, left % NS))


# -- select -------------------------------------------------------------------------------------


def _read_set(k: Kernel, addr: int, nfds: int) -> int:
    if not addr or not nfds:
        return 0
    size = (nfds + FD_BITS - 1) // FD_BITS * 8
    return int.from_bytes(k.mem.read(addr, size), "little") & ((1 << nfds) - 1)


def _write_set(k: Kernel, addr: int, nfds: int, bits: int) -> None:
    if addr and nfds:
        size = (nfds + FD_BITS - 1) // FD_BITS * 8
        k.mem.write(addr, bits.to_bytes(size, "little"))


def _do_select(k: Kernel, nfds: int, rd: int, wr: int, ex: int, until: Deadline | None,
               mask: int | None, nr: int, on_eintr: Callable[[], None]) -> int | None:
    """select's work; None when the thread was parked (the call is made again later)."""
    n = s32(nfds)
    if n < 0:
        return -errno.EINVAL
    n = min(n, k.fds.max_fds)
    sets = [_read_set(k, a, n) for a in (rd, wr, ex)]
    watch = _Watch()
    files: dict[int, OpenFile] = {}
    for fd in range(n):
        events = 0
        for bits, flags in zip(sets, (POLLIN_SET, POLLOUT_SET, POLLEX_SET), strict=True):
            if bits >> fd & 1:
                events |= flags
        if not events:
            continue
        if fd not in k.fds:
            return -errno.EBADF
        files[fd] = k.fds.get(fd)
        watch.add(files[fd], events)
    ready = _wait(k, watch.host, until, mask, "select", nr, on_eintr)
    if ready is Parked or isinstance(ready, int):
        return ready
    out = [0, 0, 0]
    total = 0
    for fd, f in files.items():
        revents = ready.get(f.host_fd, 0)
        for i, flags in enumerate((POLLIN_SET, POLLOUT_SET, POLLEX_SET)):
            if sets[i] >> fd & 1 and revents & flags:
                out[i] |= 1 << fd
                total += 1
    for addr, bits in zip((rd, wr, ex), out, strict=True):
        _write_set(k, addr, n, bits)
    return total


@_poll_entry
def sys_select(k: Kernel, nfds: int, rd: int, wr: int, ex: int, tvp: int) -> int:
    """select(2): the timeval is written back with the time left, as Linux does."""
    ns = None
    if tvp:
        sec, usec = struct.unpack("<qq", k.mem.read(tvp, 16))
        if sec < 0 or usec < 0:
            return -errno.EINVAL
        ns = sec * NS + usec * 1000
    until = _until(k, SELECT, ns)

    def write_left() -> None:
        if tvp and until is not None:
            left = _left(k, until)
            k.mem.write(tvp, struct.pack("<qq", left // NS, left % NS // 1000))

    result = _do_select(k, nfds, rd, wr, ex, until, None, SELECT, write_left)
    if result is Parked:
        return 0  # made again once a fd is ready or at the deadline
    write_left()
    return result


@_poll_entry
def sys_pselect6(k: Kernel, nfds: int, rd: int, wr: int, ex: int, tsp: int, sig: int) -> int:
    """pselect6(2): the sixth argument points to {const sigset_t *ss; size_t ss_len}."""
    ns = _timespec_ns(k, tsp)
    mask = None
    if sig:
        ss, ss_len = struct.unpack("<QQ", k.mem.read(sig, 16))
        mask = _sigmask(k, ss, ss_len)
    until = _until(k, PSELECT6, ns)
    result = _do_select(k, nfds, rd, wr, ex, until, mask, PSELECT6,
                        lambda: _write_left(k, tsp, until, -errno.EINTR))
    if result is Parked:
        return 0  # made again once a fd is ready or at the deadline
    _write_left(k, tsp, until, result)
    return result


# -- epoll ---------------------------------------------------------------------------------------


@dataclass(eq=False)
class EpollFile(OpenFile):
    """An epoll instance: a host epoll fd holding the interest list; ``data`` is the guest's
    epoll_data per watched host fd (and the guest fd it was added by)."""

    epoll: select.epoll | None = None
    data: dict[int, tuple[int, int]] = field(default_factory=dict)  # host fd -> (fd, data)

    def close_host(self) -> None:
        """Close the host instance through its object (which would otherwise close the fd
        number again when collected)."""
        if self.epoll is not None:
            self.epoll.close()


def _new_epoll(k: Kernel, cloexec: bool) -> int:
    ep = select.epoll(flags=select.EPOLL_CLOEXEC)
    f = EpollFile(host_fd=ep.fileno(), flags=os.O_RDWR, owned=True, epoll=ep)
    try:
        return k.fds.install(f, cloexec=cloexec)
    except OSError:
        ep.close()
        raise


@_poll_entry
def sys_epoll_create(k: Kernel, size: int) -> int:
    """epoll_create(2): ``size`` must be positive and is otherwise ignored."""
    if s32(size) <= 0:
        return -errno.EINVAL
    return _new_epoll(k, False)


@_poll_entry
def sys_epoll_create1(k: Kernel, flags: int) -> int:
    """epoll_create1(2) (EPOLL_CLOEXEC)."""
    if s32(flags) & ~EPOLL_CLOEXEC:
        return -errno.EINVAL
    return _new_epoll(k, bool(s32(flags) & EPOLL_CLOEXEC))


def _epoll(k: Kernel, epfd: int) -> EpollFile:
    f = k.fds.get(s32(epfd))
    if not isinstance(f, EpollFile) or f.epoll is None:
        raise FsError(errno.EINVAL)
    return f


@_poll_entry
def sys_epoll_ctl(k: Kernel, epfd: int, op: int, fd: int, event: int) -> int:
    """epoll_ctl(2): ADD, MOD, DEL on the host instance."""
    ep = _epoll(k, epfd)
    guest_fd, cmd = s32(fd), s32(op)
    target = k.fds.get(guest_fd)
    assert ep.epoll is not None
    if target is ep:
        return -errno.EINVAL
    if cmd not in (EPOLL_CTL_ADD, EPOLL_CTL_DEL, EPOLL_CTL_MOD):
        return -errno.EINVAL
    events, data = 0, 0
    if cmd != EPOLL_CTL_DEL:
        events, data = EPOLL_EVENT.unpack(k.mem.read(event, EPOLL_EVENT.size))
    host = target.host_fd
    known = ep.data.get(host)
    if known is not None and known[0] != guest_fd and cmd == EPOLL_CTL_ADD:
        try:
            ep.epoll.register(host, events)
        except FileExistsError:
            raise Unsupported("epoll_ctl ADD of a second fd sharing an open file (dup) "
                              "with a watched one", errno.EPERM) from None
        ep.data[host] = (guest_fd, data)
        return 0
    if known is not None and known[0] != guest_fd:
        return -errno.ENOENT  # the entry is the other fd's (Linux keys on the fd too)
    if cmd == EPOLL_CTL_ADD:
        ep.epoll.register(host, events)
        ep.data[host] = (guest_fd, data)
    elif cmd == EPOLL_CTL_MOD:
        ep.epoll.modify(host, events)
        ep.data[host] = (guest_fd, data)
    else:
        ep.epoll.unregister(host)
        ep.data.pop(host, None)
    return 0


def _do_epoll_wait(k: Kernel, epfd: int, events: int, maxevents: int, ns: int | None,
                   mask: int | None, nr: int) -> int:
    """epoll_wait's work (a parked thread makes call ``nr`` again later: 0, unused)."""
    until = _until(k, nr, ns)
    ep = _epoll(k, epfd)
    count = s32(maxevents)
    if count <= 0 or count > EP_MAX_EVENTS:
        return -errno.EINVAL
    assert ep.epoll is not None
    while True:
        got = ep.epoll.poll(0, count)
        if got:
            out = b"".join(EPOLL_EVENT.pack(ev & 0xFFFFFFFF, ep.data.get(fd, (0, 0))[1])
                           for fd, ev in got)
            k.mem.write(events, out)
            return len(got)
        if until is not None and k.clock_ns(until[0]) >= until[1]:
            return 0
        ready = _wait(k, {ep.host_fd: POLLIN}, until, mask, "epoll_wait", nr)
        if ready is Parked:
            return 0  # made again once an event is ready or at the deadline
        if isinstance(ready, int):
            return ready


@_poll_entry
def sys_epoll_wait(k: Kernel, epfd: int, events: int, maxevents: int, timeout: int) -> int:
    """epoll_wait(2): ``timeout`` in ms, negative for none."""
    ms = s32(timeout)
    return _do_epoll_wait(k, epfd, events, maxevents, None if ms < 0 else ms * 1_000_000,
                          None, EPOLL_WAIT)


@_poll_entry
def sys_epoll_pwait(k: Kernel, epfd: int, events: int, maxevents: int, timeout: int,
                    sigmask: int, size: int) -> int:
    """epoll_pwait(2)."""
    ms = s32(timeout)
    return _do_epoll_wait(k, epfd, events, maxevents, None if ms < 0 else ms * 1_000_000,
                          _sigmask(k, sigmask, size), EPOLL_PWAIT)


@_poll_entry
def sys_epoll_pwait2(k: Kernel, epfd: int, events: int, maxevents: int, timeout: int,
                     sigmask: int, size: int) -> int:
    """epoll_pwait2(2): epoll_pwait with a struct timespec timeout (NULL: none)."""
    return _do_epoll_wait(k, epfd, events, maxevents, _timespec_ns(k, timeout),
                          _sigmask(k, sigmask, size), EPOLL_PWAIT2)


# -- eventfd, socketpair ---------------------------------------------------------------------


def _install_new(k: Kernel, f: OpenFile, cloexec: bool) -> int:
    try:
        return k.fds.install(f, cloexec=cloexec)
    except OSError:
        f.close_host()
        raise


@_poll_entry
def sys_eventfd2(k: Kernel, initval: int, flags: int) -> int:
    """eventfd2(2): a host eventfd (EFD_SEMAPHORE, EFD_NONBLOCK, EFD_CLOEXEC)."""
    fl = s32(flags)
    if fl & ~(EFD_SEMAPHORE | EFD_CLOEXEC | EFD_NONBLOCK):
        return -errno.EINVAL
    host = os.eventfd(initval & 0xFFFFFFFF, (fl & ~EFD_CLOEXEC) | os.EFD_CLOEXEC)
    f = OpenFile(host_fd=host, flags=os.O_RDWR | (fl & EFD_NONBLOCK))
    return _install_new(k, f, bool(fl & EFD_CLOEXEC))


def sys_eventfd(k: Kernel, initval: int) -> int:
    """eventfd(2): eventfd2 without flags."""
    return sys_eventfd2(k, initval, 0)


@_poll_entry
def sys_socketpair(k: Kernel, domain: int, kind: int, protocol: int, sv: int) -> int:
    """socketpair(2): AF_UNIX stream, datagram or seqpacket pairs, made on the host."""
    dom, ty, proto = s32(domain), s32(kind), s32(protocol)
    base = ty & SOCK_TYPE_MASK
    if ty & ~(SOCK_TYPE_MASK | SOCK_NONBLOCK | SOCK_CLOEXEC):
        return -errno.EINVAL
    if dom != AF_UNIX:
        return -errno.EAFNOSUPPORT if dom < 0 or dom >= 46 else -errno.EOPNOTSUPP
    if base not in (SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET):
        return -errno.EINVAL if base not in (3, 4, 6, 10) else -errno.ESOCKTNOSUPPORT
    if proto not in (0, AF_UNIX):
        return -errno.EPROTONOSUPPORT
    a, b = socket.socketpair(socket.AF_UNIX, base | socket.SOCK_CLOEXEC
                             | (ty & SOCK_NONBLOCK), proto)
    ends = [OpenFile(host_fd=s.detach(), flags=os.O_RDWR | (ty & SOCK_NONBLOCK))
            for s in (a, b)]
    installed: list[int] = []
    try:
        for end in ends:
            installed.append(k.fds.install(end, cloexec=bool(ty & SOCK_CLOEXEC)))
        k.mem.write(sv, struct.pack("<2i", *installed))
    except BaseException:
        for fd in installed:
            k.fds.close(fd)
        for end in ends[len(installed):]:
            end.close_host()
        raise
    return 0


def _socket(k: Kernel, fd: int) -> OpenFile:
    f = k.fds.get(s32(fd))
    if not stat.S_ISSOCK(f.fstat().st_mode):
        raise FsError(errno.ENOTSOCK)
    return f


def _msg_flags(flags: int, call: str) -> int:
    unknown = flags & ~sum(MSG_FLAGS)
    if unknown:
        raise Unsupported(f"{call} flags {unknown:#x}", errno.EINVAL)
    return flags


@_poll_entry
def sys_sendto(k: Kernel, fd: int, buf: int, length: int, flags: int, addr: int,
               addrlen: int) -> int:
    """sendto(2)/send(3) on a connected socket (a socketpair end); an address would reach
    the network, which guests are not granted (EACCES).  A send that would block lets other
    threads run and keeps what it sent (blocking.write_waiting), unless MSG_DONTWAIT or
    O_NONBLOCK make it answer EAGAIN."""
    done = take_progress(k)
    if addr:
        return -errno.EACCES
    f = _socket(k, fd)
    fl = _msg_flags(s32(flags), "sendto")
    data = k.mem.read(buf, min(length, 0x7FFFF000)) if length else b""
    with socket.socket(fileno=os.dup(f.host_fd)) as s:
        try:
            if data and _waits(k, f, fl):
                return write_waiting(k, f, data, SENDTO, done, "sendto", fl)
            return s.send(data, fl)
        except BrokenPipeError:
            if not fl & 0x4000:  # MSG_NOSIGNAL
                send_from_kernel(k, signal.SIGPIPE, "send to a socket with no reader")
            raise


def _waits(k: Kernel, f: OpenFile, flags: int) -> bool:
    """Must a send or receive on socket ``f`` that would block wait our way (other threads,
    or --timeout; blocking.may_wait)?  Not with MSG_DONTWAIT or O_NONBLOCK: EAGAIN."""
    return not flags & MSG_DONTWAIT and may_wait(k, f) and not nonblocking(f.host_fd)


def _recv_waiting(k: Kernel, f: OpenFile, buf: int, size: int, flags: int,
                  done: int) -> int | None:
    """A blocking receive that waits our way: the count received, or None when the thread
    was parked until the socket is readable (the call is made again then).  MSG_WAITALL on
    a stream socket goes on until ``size`` bytes came, the peer shut down or an error
    (what it received before a park is kept in ``Thread.progress``, as a write's is)."""
    with socket.socket(fileno=os.dup(f.host_fd)) as s:
        whole = bool(flags & MSG_WAITALL) and not flags & MSG_PEEK \
            and s.type == socket.SOCK_STREAM
        while True:
            if park_on_fd(k, f.host_fd, select.POLLIN, RECVFROM, "recvfrom"):
                assert k.threads is not None
                k.threads.current.progress = done
                return None
            try:
                data = s.recv(size - done, (flags & ~MSG_WAITALL) | MSG_DONTWAIT)
            except BlockingIOError:
                continue  # taken by someone else first: wait again
            except OSError:
                if done:
                    return done
                raise
            if data:
                k.mem.write(buf + done, data)
            done += len(data)
            if not whole or not data or done >= size:
                return done


@_poll_entry
def sys_recvfrom(k: Kernel, fd: int, buf: int, length: int, flags: int, addr: int,
                 addrlen: int) -> int:
    """recvfrom(2)/recv(3) on a socketpair end; the peer of a socketpair is unnamed, so the
    address is its sa_family alone (2 bytes), as Linux reports it.  A receive that would
    block lets other threads run (_recv_waiting), unless MSG_DONTWAIT or O_NONBLOCK make it
    answer EAGAIN."""
    done = take_progress(k)
    f = _socket(k, fd)
    fl = _msg_flags(s32(flags), "recvfrom")
    size = min(length, 0x7FFFF000)
    if _waits(k, f, fl):
        got = _recv_waiting(k, f, buf, size, fl, done)
        if got is None:
            return 0  # made again once readable
    else:
        with socket.socket(fileno=os.dup(f.host_fd)) as s:
            data = s.recv(size, fl)
        if data:
            k.mem.write(buf, data)
        got = len(data)
    if addr and addrlen:
        size = struct.unpack("<I", k.mem.read(addrlen, 4))[0]
        k.mem.write(addr, struct.pack("<H", AF_UNIX)[:size])
        k.mem.write(addrlen, struct.pack("<I", 2))
    return got


@_poll_entry
def sys_shutdown(k: Kernel, fd: int, how: int) -> int:
    """shutdown(2) of a socketpair end."""
    f = _socket(k, fd)
    if s32(how) not in (0, 1, 2):
        return -errno.EINVAL
    with socket.socket(fileno=os.dup(f.host_fd)) as s:
        s.shutdown(s32(how))
    return 0


HANDLERS: dict[int, tuple[str, Callable[..., int]]] = {
    POLL: ("poll", sys_poll),
    SELECT: ("select", sys_select),
    SENDTO: ("sendto", sys_sendto),
    RECVFROM: ("recvfrom", sys_recvfrom),
    48: ("shutdown", sys_shutdown),
    53: ("socketpair", sys_socketpair),
    213: ("epoll_create", sys_epoll_create),
    232: ("epoll_wait", sys_epoll_wait),
    233: ("epoll_ctl", sys_epoll_ctl),
    270: ("pselect6", sys_pselect6),
    271: ("ppoll", sys_ppoll),
    281: ("epoll_pwait", sys_epoll_pwait),
    284: ("eventfd", sys_eventfd),
    290: ("eventfd2", sys_eventfd2),
    291: ("epoll_create1", sys_epoll_create1),
    441: ("epoll_pwait2", sys_epoll_pwait2),
}
