"""FileSystem (guest path resolution, sandbox) and FdTable/OpenFile, against the host."""

from __future__ import annotations

import errno
import os
import stat
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leakdbt.errors import UsageError
from leakdbt.linux.files import DT_DIR, DT_LNK, DT_REG, FdTable, OpenFile
from leakdbt.linux.fs import DEVICE, HOST, MISSING, VDIR, FileSystem, Node


def _errno(excinfo: pytest.ExceptionInfo[OSError]) -> int | None:
    return excinfo.value.errno


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path, FileSystem]:
    """A guest root with a writable subdirectory, a host directory outside it, and links."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("SECRET")
    root = tmp_path / "root"
    root.mkdir()
    (root / "etc").mkdir()
    (root / "etc" / "hello.txt").write_text("hello")
    (root / "a").mkdir()
    (root / "a" / "file.txt").write_text("in a")
    (root / "b").mkdir()
    (root / "bin").mkdir()
    (root / "bin" / "prog").write_bytes(b"\x7fELFprog")
    (root / "rw").mkdir()
    (root / "rw" / "sub").mkdir()
    # A decoy with the same name as the outside directory, where clamped ".." lands.
    (root / "outside").mkdir()
    (root / "outside" / "secret.txt").write_text("DECOY")
    os.symlink(str(outside), root / "abs_out")  # host-absolute: means root/<that path>
    os.symlink("../outside", root / "up_out")  # climbs above the root
    os.symlink("../../../../../../outside/secret.txt", root / "a" / "deep_out")
    os.symlink("/etc", root / "a" / "to_etc")  # guest-absolute
    os.symlink("loop2", root / "loop1")
    os.symlink("loop1", root / "loop2")
    os.symlink("/etc/hello.txt", root / "rw" / "to_ro")  # writable dir, read-only target
    fs = FileSystem(str(root), rw=[str(root / "rw")], cwd="/")
    fs.exe_path = "/bin/prog"
    return root, outside, fs


def _inside(root: Path, host: str) -> bool:
    """Whether ``host`` (whose last component may be a symlink, not followed) is in root."""
    real = os.path.join(os.path.realpath(os.path.dirname(host)), os.path.basename(host))
    real = os.path.normpath(real)
    r = str(root.resolve())
    return real == r or real.startswith(r + "/")


# -- construction ------------------------------------------------------------------------


def test_constructor_validates(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        FileSystem(str(tmp_path / "nope"))
    with pytest.raises(UsageError):
        FileSystem(str(tmp_path), rw=[str(tmp_path / "nope")])
    with pytest.raises(UsageError):
        FileSystem(str(tmp_path), cwd="/missing")
    (tmp_path / "d").mkdir()
    fs = FileSystem(str(tmp_path), cwd="/d/../d/")
    assert fs.getcwd() == "/d"


def test_root_slash_maps_guest_to_host(tmp_path: Path) -> None:
    fs = FileSystem("/", cwd=str(tmp_path))
    (tmp_path / "x").write_text("x")
    node = fs.resolve("x")
    assert node.kind == HOST and node.host == str(tmp_path.resolve() / "x")
    assert fs.stat("x").st_ino == os.stat(tmp_path / "x").st_ino


# -- resolution --------------------------------------------------------------------------


def test_dotdot_stops_at_root(tree: tuple[Path, Path, FileSystem]) -> None:
    root, _, fs = tree
    assert fs.resolve("/../../../etc/hello.txt").host == str(root / "etc" / "hello.txt")
    node = fs.resolve("../../..", base="/a")
    assert node.parts == () and node.host == str(root)
    assert fs.resolve("/a/./../b/.").guest == "/b"


def test_absolute_symlink_is_guest_absolute(tree: tuple[Path, Path, FileSystem]) -> None:
    root, _, fs = tree
    node = fs.resolve("/a/to_etc/hello.txt")
    assert node.host == str(root / "etc" / "hello.txt")
    assert node.guest == "/etc/hello.txt"


def test_host_absolute_symlink_does_not_escape(tree: tuple[Path, Path, FileSystem]) -> None:
    _, outside, fs = tree
    with pytest.raises(OSError) as e:
        fs.open("/abs_out/secret.txt", os.O_RDONLY)
    assert _errno(e) == errno.ENOENT
    with pytest.raises(OSError):
        fs.stat("/abs_out/secret.txt")
    assert (outside / "secret.txt").read_text() == "SECRET"


def test_relative_symlinks_are_clamped(tree: tuple[Path, Path, FileSystem]) -> None:
    root, _, fs = tree
    for path in ("/up_out/secret.txt", "/a/deep_out"):
        f = fs.open(path, os.O_RDONLY)
        try:
            assert f.read(100) == b"DECOY"
        finally:
            f.close_host()
    assert fs.resolve("/a/deep_out").host == str(root / "outside" / "secret.txt")


def test_symlink_loop_is_eloop(tree: tuple[Path, Path, FileSystem]) -> None:
    _, _, fs = tree
    with pytest.raises(OSError) as e:
        fs.resolve("/loop1")
    assert _errno(e) == errno.ELOOP
    assert fs.readlink("/loop1") == "loop2"  # not followed: fine


def test_forty_links_ok_forty_one_eloop(tree: tuple[Path, Path, FileSystem]) -> None:
    root, _, fs = tree
    chain = root / "chain"
    chain.mkdir()
    (chain / "l0").write_text("end")
    for i in range(1, 42):
        os.symlink(f"l{i - 1}", chain / f"l{i}")
    assert fs.resolve("/chain/l40").guest == "/chain/l0"
    with pytest.raises(OSError) as e:
        fs.resolve("/chain/l41")
    assert _errno(e) == errno.ELOOP


def test_missing_and_notdir(tree: tuple[Path, Path, FileSystem]) -> None:
    _, _, fs = tree
    node = fs.resolve("/etc/nothere")
    assert node.kind == MISSING
    with pytest.raises(OSError) as e:
        fs.resolve("/nothere/x")
    assert _errno(e) == errno.ENOENT
    with pytest.raises(OSError) as e:
        fs.resolve("/etc/hello.txt/x")
    assert _errno(e) == errno.ENOTDIR
    with pytest.raises(OSError) as e:
        fs.resolve("/etc/hello.txt/")
    assert _errno(e) == errno.ENOTDIR
    with pytest.raises(OSError) as e:
        fs.resolve("")
    assert _errno(e) == errno.ENOENT


def test_nofollow_keeps_final_link(tree: tuple[Path, Path, FileSystem]) -> None:
    _, _, fs = tree
    node = fs.resolve("/a/to_etc", follow=False)
    assert node.st is not None and stat.S_ISLNK(node.st.st_mode)
    assert fs.resolve("/a/to_etc/", follow=False).guest == "/etc"  # trailing slash follows
    assert stat.S_ISLNK(fs.stat("/a/to_etc", follow=False).st_mode)
    assert stat.S_ISDIR(fs.stat("/a/to_etc").st_mode)


# -- writes are confined to rw directories ----------------------------------------------


def test_writes_outside_rw_are_refused(tree: tuple[Path, Path, FileSystem]) -> None:
    root, _, fs = tree
    hello = root / "etc" / "hello.txt"
    attempts = [
        lambda: fs.open("/etc/new", os.O_CREAT | os.O_WRONLY),
        lambda: fs.open("/etc/hello.txt", os.O_WRONLY),
        lambda: fs.open("/etc/hello.txt", os.O_RDWR),
        lambda: fs.open("/etc/hello.txt", os.O_RDONLY | os.O_TRUNC),
        lambda: fs.open("/etc", os.O_RDWR | os.O_TMPFILE),
        lambda: fs.mkdir("/etc/d"),
        lambda: fs.unlink("/etc/hello.txt"),
        lambda: fs.rename("/etc/hello.txt", "/etc/moved"),
        lambda: fs.rename("/etc/hello.txt", "/rw/moved"),
        lambda: fs.symlink("/x", "/etc/ln"),
        lambda: fs.chmod("/etc/hello.txt", 0o777),
        lambda: fs.truncate("/etc/hello.txt", 0),
        lambda: fs.rmdir("/b"),
        lambda: fs.rmdir("/rw"),  # the rw directory itself lives in a read-only parent
        lambda: fs.open("/rw/to_ro", os.O_WRONLY),  # link in rw, target outside
        lambda: fs.access("/etc/hello.txt", os.W_OK),
    ]
    before = sorted(os.listdir(root / "etc")), hello.stat().st_mode
    for attempt in attempts:
        with pytest.raises(OSError) as e:
            attempt()
        assert _errno(e) == errno.EACCES
    assert (sorted(os.listdir(root / "etc")), hello.stat().st_mode) == before
    assert hello.read_text() == "hello"
    assert (root / "b").is_dir() and (root / "rw").is_dir()
    assert not (root / "rw" / "moved").exists()


def test_reads_outside_rw_allowed(tree: tuple[Path, Path, FileSystem]) -> None:
    _, _, fs = tree
    f = fs.open("/etc/hello.txt", os.O_RDONLY | os.O_CREAT)  # O_CREAT of existing: no write
    try:
        assert f.read(10) == b"hello"
        assert not f.in_rw
    finally:
        f.close_host()
    fs.access("/etc/hello.txt", os.R_OK)


def test_writes_inside_rw(tree: tuple[Path, Path, FileSystem]) -> None:
    root, _, fs = tree
    f = fs.open("/rw/new.txt", os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644)
    try:
        assert f.write(b"data") == 4
        assert f.in_rw and f.path == "/rw/new.txt"
    finally:
        f.close_host()
    assert (root / "rw" / "new.txt").read_bytes() == b"data"
    with pytest.raises(OSError) as e:
        fs.open("/rw/new.txt", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    assert _errno(e) == errno.EEXIST
    fs.mkdir("/rw/d", 0o755)
    assert (root / "rw" / "d").is_dir()
    fs.rename("/rw/new.txt", "/rw/d/moved.txt")
    assert (root / "rw" / "d" / "moved.txt").read_bytes() == b"data"
    fs.symlink("moved.txt", "/rw/d/ln")
    assert os.readlink(root / "rw" / "d" / "ln") == "moved.txt"
    assert fs.readlink("/rw/d/ln") == "moved.txt"
    fs.chmod("/rw/d/ln", 0o600)  # follows the link
    assert stat.S_IMODE((root / "rw" / "d" / "moved.txt").stat().st_mode) == 0o600
    fs.truncate("/rw/d/moved.txt", 2)
    assert (root / "rw" / "d" / "moved.txt").read_bytes() == b"da"
    with pytest.raises(OSError) as e:
        fs.rmdir("/rw/d")
    assert _errno(e) == errno.ENOTEMPTY
    fs.unlink("/rw/d/ln")
    fs.unlink("/rw/d/moved.txt")
    fs.rmdir("/rw/d")
    assert sorted(os.listdir(root / "rw")) == ["sub", "to_ro"]


def test_tmpfile_in_rw(tree: tuple[Path, Path, FileSystem]) -> None:
    root, _, fs = tree
    f = fs.open("/rw/sub", os.O_TMPFILE | os.O_RDWR, 0o600)
    try:
        assert f.write(b"anon") == 4 and f.pread(4, 0) == b"anon"
        assert os.listdir(root / "rw" / "sub") == []
    finally:
        f.close_host()


def test_entry_errors(tree: tuple[Path, Path, FileSystem]) -> None:
    _, _, fs = tree
    cases = [
        (lambda: fs.mkdir("/rw/sub"), errno.EEXIST),
        (lambda: fs.mkdir("/rw/sub/."), errno.EEXIST),
        (lambda: fs.rmdir("/rw/sub/."), errno.EINVAL),
        (lambda: fs.rmdir("/rw/sub/.."), errno.ENOTEMPTY),
        (lambda: fs.unlink("/rw/sub"), errno.EISDIR),
        (lambda: fs.unlink("/rw/missing"), errno.ENOENT),
        (lambda: fs.rmdir("/rw/to_ro"), errno.ENOTDIR),
        (lambda: fs.rename("/rw/missing", "/rw/x"), errno.ENOENT),
        (lambda: fs.symlink("x", "/rw/sub"), errno.EEXIST),
        (lambda: fs.mkdir("/proc/x"), errno.EACCES),
        (lambda: fs.open("/rw/newdir/", os.O_CREAT | os.O_WRONLY), errno.EISDIR),
        (lambda: fs.open("/rw/sub", os.O_WRONLY), errno.EISDIR),
        (lambda: fs.open("/etc/hello.txt", os.O_RDONLY | os.O_DIRECTORY), errno.ENOTDIR),
        (lambda: fs.open("/rw/to_ro", os.O_RDONLY | os.O_NOFOLLOW), errno.ELOOP),
    ]
    for call, code in cases:
        with pytest.raises(OSError) as e:
            call()
        assert _errno(e) == code, call


def test_rename_flags(tree: tuple[Path, Path, FileSystem]) -> None:
    root, _, fs = tree
    (root / "rw" / "x").write_text("x")
    (root / "rw" / "y").write_text("y")
    with pytest.raises(OSError) as e:
        fs.rename("/rw/x", "/rw/y", flags=1)  # RENAME_NOREPLACE
    assert _errno(e) == errno.EEXIST
    fs.rename("/rw/x", "/rw/y", flags=2)  # RENAME_EXCHANGE
    assert (root / "rw" / "x").read_text() == "y" and (root / "rw" / "y").read_text() == "x"


def test_umask_applies_not_host_umask(tree: tuple[Path, Path, FileSystem]) -> None:
    root, _, fs = tree
    fs.umask = 0
    fs.open("/rw/open777", os.O_CREAT | os.O_WRONLY, 0o777).close_host()
    fs.mkdir("/rw/dir777", 0o777)
    fs.umask = 0o077
    fs.open("/rw/open600", os.O_CREAT | os.O_WRONLY, 0o666).close_host()
    assert stat.S_IMODE((root / "rw" / "open777").stat().st_mode) == 0o777
    assert stat.S_IMODE((root / "rw" / "dir777").stat().st_mode) == 0o777
    assert stat.S_IMODE((root / "rw" / "open600").stat().st_mode) == 0o600


def test_component_swapped_for_symlink_cannot_redirect_writes(
    tree: tuple[Path, Path, FileSystem], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory replaced by a symlink between resolution and open makes the open fail."""
    root, outside, fs = tree
    real_resolve = fs.resolve

    def racy_resolve(path: str, base: str | None = None, *, follow: bool = True) -> Node:
        node = real_resolve(path, base, follow=follow)
        if (root / "rw" / "sub").is_dir() and not (root / "rw" / "sub").is_symlink():
            os.rmdir(root / "rw" / "sub")
            os.symlink(str(outside), root / "rw" / "sub")
        return node

    monkeypatch.setattr(fs, "resolve", racy_resolve)
    with pytest.raises(OSError) as e:
        fs.open("/rw/sub/planted", os.O_CREAT | os.O_WRONLY)
    assert _errno(e) in (errno.ELOOP, errno.ENOTDIR)
    assert sorted(os.listdir(outside)) == ["secret.txt"]


def test_chdir_and_relative_paths(tree: tuple[Path, Path, FileSystem]) -> None:
    root, _, fs = tree
    fs.chdir("/a/to_etc")
    assert fs.getcwd() == "/etc"
    assert fs.resolve("hello.txt").host == str(root / "etc" / "hello.txt")
    assert fs.resolve("hello.txt", base="/a").kind == MISSING
    with pytest.raises(OSError) as e:
        fs.chdir("/etc/hello.txt")
    assert _errno(e) == errno.ENOTDIR
    with pytest.raises(OSError) as e:
        fs.chdir("/proc")
    assert _errno(e) == errno.EACCES


# -- virtual /proc, /sys, /dev ------------------------------------------------------------


def test_proc_self_exe(tree: tuple[Path, Path, FileSystem]) -> None:
    _, _, fs = tree
    assert fs.readlink("/proc/self/exe") == "/bin/prog"
    assert fs.readlink("/proc/thread-self/../self/exe") == "/bin/prog"
    assert fs.readlink(f"/proc/{os.getpid()}/exe") == "/bin/prog"
    f = fs.open("/proc/self/exe", os.O_RDONLY)
    try:
        assert f.read(100) == b"\x7fELFprog"
    finally:
        f.close_host()
    lst = fs.stat("/proc/self/exe", follow=False)
    assert stat.S_ISLNK(lst.st_mode) and lst.st_size == len("/bin/prog")


def test_proc_everything_else_denied(tree: tuple[Path, Path, FileSystem]) -> None:
    _, _, fs = tree
    for path in (
        "/proc/self/maps",
        "/proc/1/status",
        "/proc/cpuinfo",
        "/sys/kernel",
        "/sys",
        "/proc/self/fd",
        "/proc",
        "/dev",
        "/dev/sda",
        "/dev/shm/x",
    ):
        with pytest.raises(OSError) as e:
            f = fs.open(path, os.O_RDONLY)
            f.close_host()
        assert _errno(e) == errno.EACCES, path
    with pytest.raises(OSError) as e:
        fs.stat("/proc/self/maps")
    assert _errno(e) == errno.EACCES
    assert fs.resolve("/proc/self").kind == VDIR
    with pytest.raises(OSError) as e:
        fs.readlink("/proc/self/maps")
    assert _errno(e) == errno.EACCES


def test_proc_self_fd(tree: tuple[Path, Path, FileSystem]) -> None:
    _, _, fs = tree
    table = FdTable(stdio=False)
    fs.fd_paths = table.guest_path
    fd = table.install(fs.open("/etc/hello.txt", os.O_RDONLY))
    assert fs.readlink(f"/proc/self/fd/{fd}") == "/etc/hello.txt"
    f = fs.open(f"/proc/self/fd/{fd}", os.O_RDONLY)
    try:
        assert f.read(5) == b"hello"
    finally:
        f.close_host()
    with pytest.raises(OSError) as e:
        fs.readlink("/proc/self/fd/99")
    assert _errno(e) == errno.ENOENT
    table.close_all()


def test_dev_devices(tree: tuple[Path, Path, FileSystem]) -> None:
    _, _, fs = tree
    node = fs.resolve("/dev/null")
    assert node.kind == DEVICE
    null = fs.open("/dev/null", os.O_WRONLY)
    zero = fs.open("/dev/zero", os.O_RDONLY)
    urandom = fs.open("/dev/urandom", os.O_RDONLY)
    try:
        assert null.write(b"discard") == 7
        assert zero.read(16) == bytes(16)
        assert len(urandom.read(16)) == 16
        assert stat.S_ISCHR(null.fstat().st_mode)
    finally:
        for f in (null, zero, urandom):
            f.close_host()
    with pytest.raises(OSError) as e:
        fs.open("/dev/zero", os.O_WRONLY)
    assert _errno(e) == errno.EACCES
    assert fs.readlink("/dev/stdout") == "/proc/self/fd/1"
    with pytest.raises(OSError) as e:
        fs.resolve("/dev/null/")
    assert _errno(e) == errno.ENOTDIR
    assert stat.S_ISCHR(fs.stat("/dev/null").st_mode)


# -- property: nothing resolves outside the root --------------------------------------------

_COMPONENTS = ["..", ".", "a", "b", "link_out", "link_up", "/"]


@pytest.fixture(scope="module")
def prop_tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, FileSystem]:
    base = tmp_path_factory.mktemp("prop")
    outside = base / "outside"
    outside.mkdir()
    (outside / "a").mkdir()
    (outside / "b").write_text("outside")
    root = base / "root"
    for d in (root / "a" / "b", root / "b" / "a"):
        d.mkdir(parents=True)
    # The host-absolute link would escape if resolved by the host; the relative ones climb
    # past the root and must land in the decoy root/outside instead.
    os.symlink(str(outside), root / "link_out")
    for d in (root / "a", root / "b"):
        os.symlink("../../outside", d / "link_out")
    for d in (root / "a" / "b", root / "b" / "a"):
        os.symlink("../../../../../outside/a", d / "link_out")
    for d in (root, root / "a", root / "b", root / "a" / "b", root / "b" / "a"):
        os.symlink("../../../../..", d / "link_up")
    (root / "outside" / "a").mkdir(parents=True)
    (root / "outside" / "b").write_text("decoy")
    return root, FileSystem(str(root), rw=[str(root / "a")])


@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(_COMPONENTS), min_size=1, max_size=12), st.booleans())
def test_property_never_outside_root(
    prop_tree: tuple[Path, FileSystem], comps: list[str], follow: bool
) -> None:
    root, fs = prop_tree
    path = "/".join(comps)
    try:
        node = fs.resolve(path, follow=follow)
    except OSError:
        return
    assert node.kind in (HOST, MISSING)
    assert _inside(root, node.host)
    try:
        f = fs.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        assert _inside(root, os.path.realpath(os.readlink(f"/proc/self/fd/{f.host_fd}")))
    finally:
        f.close_host()


# -- FdTable / OpenFile ---------------------------------------------------------------------


def test_stdio_pass_through_and_not_closed() -> None:
    table = FdTable()
    assert {0, 1, 2} <= set(table)
    assert table.get(1).host_fd == 1 and not table.get(1).owned
    d = table.dup(1)
    assert d == 3 and table.get(d) is table.get(1)
    table.close(1)
    table.close_all()
    os.fstat(1)  # the host's stdout is still open
    os.fstat(2)
    assert len(table) == 0


def _file_table(tmp_path: Path, content: bytes = b"0123456789") -> tuple[FdTable, int, Path]:
    p = tmp_path / "f.bin"
    p.write_bytes(content)
    fs = FileSystem(str(tmp_path), rw=[str(tmp_path)])
    table = FdTable(stdio=False)
    fd = table.install(fs.open("/f.bin", os.O_RDWR))
    return table, fd, p


def test_lowest_free_and_dup_semantics(tmp_path: Path) -> None:
    table, fd, _ = _file_table(tmp_path)
    assert fd == 0
    a = table.dup(fd)
    b = table.dup(fd, lowest=10, cloexec=True)
    assert (a, b) == (1, 10)
    assert table.get_cloexec(b) and not table.get_cloexec(a)
    table.close(a)
    assert table.dup(fd) == 1
    # dup'ed fds share the offset
    assert table.get(fd).read(3) == b"012"
    assert table.get(b).read(3) == b"345"
    # dup2 onto an open fd replaces it; dup2(x, x) is a no-op
    assert table.dup2(fd, 1) == 1
    assert table.dup2(fd, fd) == fd
    with pytest.raises(OSError) as e:
        table.dup2(55, 3)
    assert _errno(e) == errno.EBADF
    with pytest.raises(OSError) as e:
        table.close(77)
    assert _errno(e) == errno.EBADF
    host = table.get(fd).host_fd
    for x in list(table):
        table.close(x)
    with pytest.raises(OSError):
        os.fstat(host)  # the last close released the host fd


def test_emfile(tmp_path: Path) -> None:
    table, fd, _ = _file_table(tmp_path)
    table.max_fds = 4
    for _ in range(3):
        table.dup(fd)
    with pytest.raises(OSError) as e:
        table.dup(fd)
    assert _errno(e) == errno.EMFILE
    table.close_all()


def test_close_on_exec(tmp_path: Path) -> None:
    table, fd, _ = _file_table(tmp_path)
    c = table.dup(fd, cloexec=True)
    table.close_on_exec()
    assert fd in table and c not in table
    table.close_all()


def test_read_write_seek_pread(tmp_path: Path) -> None:
    table, fd, p = _file_table(tmp_path)
    f = table.get(fd)
    assert f.pread(4, 2) == b"2345"
    assert f.lseek(0, os.SEEK_CUR) == 0
    assert f.lseek(-2, os.SEEK_END) == 8
    assert f.read(100) == b"89"
    assert f.read(100) == b""
    assert f.pwrite(b"AB", 0) == 2
    f.ftruncate(5)
    assert p.read_bytes() == b"AB234"
    assert f.fstat().st_size == 5
    with pytest.raises(OSError) as e:
        f.ftruncate(-1)
    assert _errno(e) == errno.EINVAL
    big = f.pread(10 << 20, 0)  # larger than the file: full content, no error
    assert big == b"AB234"
    table.close_all()


def test_append(tmp_path: Path) -> None:
    (tmp_path / "log").write_bytes(b"start")
    fs = FileSystem(str(tmp_path), rw=[str(tmp_path)])
    f = fs.open("/log", os.O_WRONLY | os.O_APPEND)
    try:
        f.lseek(0, os.SEEK_SET)
        f.write(b"+end")
    finally:
        f.close_host()
    assert (tmp_path / "log").read_bytes() == b"start+end"


def _parse_dirents(data: bytes) -> list[tuple[int, int, int, int, str]]:
    out = []
    pos = 0
    while pos < len(data):
        ino, off, reclen, dtype = struct.unpack_from("<QqHB", data, pos)
        name = data[pos + 19 : pos + reclen].split(b"\0", 1)[0].decode()
        out.append((ino, off, reclen, dtype, name))
        pos += reclen
    return out


def test_getdents64_matches_listdir(tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    for i in range(60):
        (d / f"file_{i:03d}_{'x' * (i % 13)}").write_text(str(i))
    (d / "subdir").mkdir()
    os.symlink("file_000_", d / "ln")
    fs = FileSystem(str(tmp_path))
    f = fs.open("/d", os.O_RDONLY | os.O_DIRECTORY)
    try:
        records = []
        while True:
            chunk = f.getdents64(256)
            if not chunk:
                break
            assert len(chunk) <= 256
            records += _parse_dirents(chunk)
        assert f.getdents64(256) == b""
        names = [r[4] for r in records]
        assert sorted(names) == sorted([".", "..", *os.listdir(d)])
        for ino, _off, reclen, dtype, name in records:
            assert reclen % 8 == 0
            if name not in (".", ".."):
                st_ = os.lstat(d / name)
                assert ino == st_.st_ino
                want = DT_LNK if name == "ln" else DT_DIR if name == "subdir" else DT_REG
                assert dtype == want
        assert [r[1] for r in records] == list(range(1, len(records) + 1))
        dot = next(r for r in records if r[4] == ".")
        assert dot[0] == os.stat(d).st_ino and dot[3] == DT_DIR
        # seeking back to a d_off resumes from there; to 0 rewinds
        f.lseek(records[5][1], os.SEEK_SET)
        assert _parse_dirents(f.getdents64(4096))[0][4] == records[6][4]
        f.lseek(0, os.SEEK_SET)
        assert _parse_dirents(f.getdents64(4096))[0][4] == records[0][4]
        f.lseek(0, os.SEEK_SET)
        with pytest.raises(OSError) as e:
            f.getdents64(10)
        assert _errno(e) == errno.EINVAL
    finally:
        f.close_host()


def test_getdents64_root_dotdot_is_root(tmp_path: Path) -> None:
    fs = FileSystem(str(tmp_path))
    f = fs.open("/", os.O_RDONLY | os.O_DIRECTORY)
    try:
        recs = {r[4]: r[0] for r in _parse_dirents(f.getdents64(4096))}
        assert recs[".."] == recs["."] == os.stat(tmp_path).st_ino
    finally:
        f.close_host()


def test_getdents64_on_file_is_enotdir(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    f = OpenFile(os.open(tmp_path / "f", os.O_RDONLY), "/f")
    try:
        with pytest.raises(OSError) as e:
            f.getdents64(4096)
        assert _errno(e) == errno.ENOTDIR
    finally:
        f.close_host()
