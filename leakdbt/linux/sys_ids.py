"""Credentials: setuid(2), setgid(2), setreuid(2), setregid(2), setresuid(2), setresgid(2),
setgroups(2) and their readers getresuid(2), getresgid(2), getgroups(2).

The guest starts with the host's ids (so that ``id`` and ``ls -l`` print what they print
natively) and these calls change only the guest's view of them (``Kernel.ids``): the host
process keeps leakdbt's own ids, and files are still opened with them inside the sandbox's
rules (--root/--rw are the boundary, not the guest's uid).  Which changes succeed follows
Linux (kernel/sys.c) for a process whose capabilities are those of its effective uid (no
file capabilities, no securebits): with effective uid 0 any change is allowed (CAP_SETUID,
CAP_SETGID); otherwise an id may only become one the process already has (real, effective
or saved), and anything else fails with EPERM.  Programs that only move between the ids
they have (make's ``user_access``/``make_access``, daemons dropping a saved id) behave as
natively whatever user runs leakdbt.
"""

from __future__ import annotations

import errno
import os
import struct

from leakdbt.linux.kernel import Kernel, ProcessIds, s32

UNCHANGED = 0xFFFFFFFF  # (uid_t)-1: "leave this id alone"
NGROUPS_MAX = 65536


def _id(raw: int) -> int:
    return raw & 0xFFFFFFFF


def _privileged(ids: ProcessIds) -> bool:
    """CAP_SETUID/CAP_SETGID: the effective set follows the effective uid being 0."""
    return ids.euid == 0


# -- uids and gids: one implementation over (real, effective, saved) ------------------------

UIDS = ("uid", "euid", "suid")
GIDS = ("gid", "egid", "sgid")


def _get(ids: ProcessIds, names: tuple[str, ...]) -> tuple[int, int, int]:
    real, eff, saved = (getattr(ids, name) for name in names)
    return real, eff, saved


def _put(ids: ProcessIds, names: tuple[str, ...], values: tuple[int, int, int]) -> None:
    for name, value in zip(names, values, strict=True):
        setattr(ids, name, value)


def _set_id(k: Kernel, names: tuple[str, ...], raw: int) -> int:
    """setuid(2)/setgid(2): privileged, all of real/effective/saved; else effective only, to
    the real or saved id."""
    ids, new = k.ids, _id(raw)
    real, _eff, saved = _get(ids, names)
    if new == UNCHANGED:
        return -errno.EINVAL
    if _privileged(ids):
        _put(ids, names, (new, new, new))
    elif new in (real, saved):
        _put(ids, names, (real, new, saved))
    else:
        return -errno.EPERM
    return 0


def _set_re_id(k: Kernel, names: tuple[str, ...], raw_real: int, raw_eff: int) -> int:
    """setreuid(2)/setregid(2): the real id may become the real or effective one, the
    effective id any of the three; the saved id follows the new effective id when the real
    one is set or the effective one becomes something other than the old real id."""
    ids, r, e = k.ids, _id(raw_real), _id(raw_eff)
    real, eff, saved = _get(ids, names)
    privileged = _privileged(ids)
    if r != UNCHANGED and not privileged and r not in (real, eff):
        return -errno.EPERM
    if e != UNCHANGED and not privileged and e not in (real, eff, saved):
        return -errno.EPERM
    new_real = real if r == UNCHANGED else r
    new_eff = eff if e == UNCHANGED else e
    if r != UNCHANGED or (e != UNCHANGED and e != real):
        saved = new_eff
    _put(ids, names, (new_real, new_eff, saved))
    return 0


def _set_res_id(k: Kernel, names: tuple[str, ...], *raw: int) -> int:
    """setresuid(2)/setresgid(2): unprivileged, each new id must be one of the current three."""
    ids = k.ids
    new = [_id(v) for v in raw]
    have = _get(ids, names)
    if not _privileged(ids) and any(v != UNCHANGED and v not in have for v in new):
        return -errno.EPERM
    real, eff, saved = (old if v == UNCHANGED else v for v, old in zip(new, have, strict=True))
    _put(ids, names, (real, eff, saved))
    return 0


def _get_res_id(k: Kernel, names: tuple[str, ...], *addrs: int) -> int:
    """getresuid(2)/getresgid(2)."""
    for addr, value in zip(addrs, _get(k.ids, names), strict=True):
        k.mem.write(addr, struct.pack("<I", value))
    return 0


# The table's handlers: the system calls' own arities (syscalls._arity reads them).
def sys_setuid(k: Kernel, uid: int) -> int:
    return _set_id(k, UIDS, uid)


def sys_setgid(k: Kernel, gid: int) -> int:
    return _set_id(k, GIDS, gid)


def sys_setreuid(k: Kernel, ruid: int, euid: int) -> int:
    return _set_re_id(k, UIDS, ruid, euid)


def sys_setregid(k: Kernel, rgid: int, egid: int) -> int:
    return _set_re_id(k, GIDS, rgid, egid)


def sys_setresuid(k: Kernel, ruid: int, euid: int, suid: int) -> int:
    return _set_res_id(k, UIDS, ruid, euid, suid)


def sys_setresgid(k: Kernel, rgid: int, egid: int, sgid: int) -> int:
    return _set_res_id(k, GIDS, rgid, egid, sgid)


def sys_getresuid(k: Kernel, r: int, e: int, s: int) -> int:
    return _get_res_id(k, UIDS, r, e, s)


def sys_getresgid(k: Kernel, r: int, e: int, s: int) -> int:
    return _get_res_id(k, GIDS, r, e, s)


# -- supplementary groups --------------------------------------------------------------------


def _groups(k: Kernel) -> tuple[int, ...]:
    if k.ids.groups is None:  # the host's, until the guest sets its own
        k.ids.groups = tuple(os.getgroups())
    return k.ids.groups


def sys_getgroups(k: Kernel, size: int, addr: int) -> int:
    """getgroups(2): with size 0 only the count; a smaller list is EINVAL."""
    groups = _groups(k)
    n = s32(size)
    if n == 0:
        return len(groups)
    if n < len(groups):
        return -errno.EINVAL
    if groups:
        k.mem.write(addr, struct.pack(f"<{len(groups)}I", *groups))
    return len(groups)


def sys_setgroups(k: Kernel, size: int, addr: int) -> int:
    """setgroups(2): privileged only (EPERM first, as Linux checks), at most NGROUPS_MAX;
    the kernel keeps the list sorted (getgroups returns it so)."""
    if not _privileged(k.ids):
        return -errno.EPERM
    n = size & 0xFFFFFFFF
    if n > NGROUPS_MAX:
        return -errno.EINVAL
    raw = struct.unpack(f"<{n}I", k.mem.read(addr, 4 * n)) if n else ()
    if UNCHANGED in raw:
        return -errno.EINVAL
    k.ids.groups = tuple(sorted(raw))
    return 0


HANDLERS = {
    105: ("setuid", sys_setuid),
    106: ("setgid", sys_setgid),
    113: ("setreuid", sys_setreuid),
    114: ("setregid", sys_setregid),
    115: ("getgroups", sys_getgroups),
    116: ("setgroups", sys_setgroups),
    117: ("setresuid", sys_setresuid),
    118: ("getresuid", sys_getresuid),
    119: ("setresgid", sys_setresgid),
    120: ("getresgid", sys_getresgid),
}
