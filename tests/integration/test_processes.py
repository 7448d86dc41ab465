"""Processes: fork, vfork, posix_spawn's clone, wait4/waitid, pipes, kill of a child, and
execve (ELF files and "#!" scripts) give the same output and exit status as native runs; an
exec'd program is emulated inside the same sandbox (--root), and a path outside it fails as
every other path the guest names there.  (Threads: tests/integration/test_threads.py.)"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import KINDS, TEST_BINARIES, binary, run_leakdbt, run_native
from tests.integration.test_sandbox import CANARY, _probe_lines

BUSYBOX = shutil.which("busybox") or "/bin/busybox"


@pytest.mark.parametrize("kind", KINDS)
def test_fork_pipe_wait_same_as_native(built: Path, kind: str) -> None:
    """Children that exit, raise SIGTERM, are SIGKILLed, crash, and a vfork child: the
    parent reads the pipe to end of file; wait4/waitid report each status as Linux does."""
    exe = binary(kind, "fork_pipe")
    native = run_native([exe])
    guest = run_leakdbt(["exec", exe])
    assert native.status == 5
    assert guest.stdout == native.stdout, guest.stderr.decode(errors="replace")
    assert guest.status == native.status
    assert b"killed by signal 11" in guest.stdout and b"exited 7" in guest.stdout
    # Only the crash gets leakdbt's report (from the child); SIGTERM and SIGKILL are quiet.
    lines = guest.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("leakdbt: guest killed by SIGSEGV at main+")


@pytest.mark.parametrize("kind", KINDS)
def test_fork_exec_pipe_same_as_native(built: Path, kind: str) -> None:
    """The child's stdout is a pipe (dup2 over an O_CLOEXEC pipe2 end), it execs a host
    program (dynamically linked: ld.so and libc are loaded for the new image)."""
    argv = [binary(kind, "fork_exec"), "/bin/echo", "hello", "world"]
    native = run_native(argv)
    guest = run_leakdbt(["exec", *argv])
    assert native.stdout == b"hello world\nchild exited 0\n"
    assert (guest.stdout, guest.status) == (native.stdout, native.status), guest.stderr
    assert guest.stderr == b""


def test_stats_are_printed_by_the_first_process_only(built: Path) -> None:
    guest = run_leakdbt(["exec", "--stats", binary("static", "fork_pipe")])
    assert guest.status == 5
    assert guest.stderr.count(b"leakdbt stats:") == 1
    assert guest.stdout.count(b"my parent is the forker: 1") == 3


def test_forked_children_run_from_translated_code(built: Path) -> None:
    """The child is a copy of the emulator, translator and code cache included."""
    exe = binary("static", "fork_pipe")
    native = run_native([exe])
    guest = run_leakdbt(["exec", "--translate-all", "--stats", exe])
    assert (guest.stdout, guest.status) == (native.stdout, native.status), guest.stderr
    translated = int(guest.stderr.split(b"functions translated:")[1].split()[0])
    assert translated > 0


def _sh(script: str, *flags: str) -> tuple[bytes, int, bytes]:
    guest = run_leakdbt(["exec", *flags, BUSYBOX, "sh", "-c", script])
    return guest.stdout, guest.status, guest.stderr


SHELL_CASES = {
    "pipeline": "echo a | tr a b",
    "exit-status": "exit 3",
    "external-pipeline": "/bin/echo hi | /usr/bin/tr h H; x=$(echo sub); echo \"[$x]\"",
    "wait-and-kill": "(exit 9) & wait $!; echo $?; sleep 5 & kill $!; wait $!; echo $?",
    "background-wait": "sleep 0.1 & wait; echo done $?",
    "pipeline-status": "false | true; echo $?; true | false; echo $?",
}


@pytest.mark.parametrize("case", sorted(SHELL_CASES))
def test_busybox_sh_same_as_native(case: str) -> None:
    script = SHELL_CASES[case]
    native = run_native([BUSYBOX, "sh", "-c", script])
    stdout, status, stderr = _sh(script)
    assert (stdout, status) == (native.stdout, native.status), stderr
    if case == "pipeline":
        assert stdout == b"b\n"
    if case == "exit-status":
        assert status == 3


# Waiting for jobs: a CHLD trap, a loop polling a background job, a subshell in a pipeline
# (poll/select-free shells still block in wait4 and read), and busybox cat's sendfile.
JOB_CASES = {
    "chld-trap": 'trap "echo chld" CHLD; (exit 2); echo $?',  # "&" + wait would race
    "poll-a-job": "sleep 0.05 & p=$!; while kill -0 $p 2>/dev/null; do :; done; wait $p; "
                  "echo waited $?",
    "subshell-pipeline": "echo abc | (read x; echo got $x) | tr a-z A-Z; "
                         "(sleep 0.05; echo sub) | cat",
}


@pytest.mark.parametrize("shell", ["/bin/sh", "busybox"])
@pytest.mark.parametrize("case", sorted(JOB_CASES))
def test_shell_jobs_same_as_native(shell: str, case: str) -> None:
    argv = [BUSYBOX, "sh"] if shell == "busybox" else [shell]
    argv += ["-c", JOB_CASES[case]]
    native = run_native(argv)
    guest = run_leakdbt(["exec", *argv])
    assert native.stdout and native.stderr == b""
    assert (guest.stdout, guest.status, guest.stderr) == (native.stdout, native.status, b"")


def test_host_bash_pipeline() -> None:
    argv = ["/bin/bash", "-c", "echo a | tr a b; (exit 4)"]
    native = run_native(argv)
    guest = run_leakdbt(["exec", *argv])
    assert (guest.stdout, guest.status) == (native.stdout, native.status) == (b"b\n", 4)


@pytest.mark.parametrize("kind", KINDS)
def test_popen_system_and_a_double_fork_daemon_same_as_native(built: Path, kind: str,
                                                              tmp_path: Path) -> None:
    """test_binaries/spawn_daemon.c: popen and system (glibc's posix_spawn: clone3 with
    CLONE_VM|CLONE_VFORK), then setsid, a second fork, a pid file in the --rw directory."""
    exe = binary(kind, "spawn_daemon")
    outputs = []
    for run in ("native", "leakdbt"):
        directory = tmp_path / run
        directory.mkdir()
        done = run_native([exe, str(directory)]) if run == "native" else run_leakdbt(
            ["exec", "--rw", str(directory), exe, str(directory)])
        assert done.status == 0, done.stderr
        assert (directory / "daemon.pid").read_text().strip().isdigit()
        outputs.append(done.stdout)
    assert outputs[0] == outputs[1] == (b"got: from popen\npclose: 2\nsystem: 4\n"
                                        b"middle exited: 0\ndaemon reported: n\npid file: ok\n")


FORK_TIMER = r"""
#include <signal.h>
#include <stdio.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>
static volatile sig_atomic_t fired;
static void on_alarm(int s) { (void)s; fired = 1; }
int main(void) {
    signal(SIGALRM, on_alarm);
    struct itimerval t = {{0, 0}, {0, 50000}};
    setitimer(ITIMER_REAL, &t, 0);   /* armed in the parent: not inherited */
    pid_t c = fork();
    if (c == 0) {
        struct itimerval left;
        getitimer(ITIMER_REAL, &left);
        printf("child inherits no timer: %d\n",
               left.it_value.tv_sec == 0 && left.it_value.tv_usec == 0);
        setitimer(ITIMER_REAL, &t, 0);
        while (!fired) ;              /* spins: only the host timer thread can wake it */
        printf("child alarm\n");
        fflush(stdout);
        _exit(0);
    }
    int st;
    waitpid(c, &st, 0);
    while (!fired) ;
    printf("parent alarm, child %d\n", WEXITSTATUS(st));
    return 0;
}"""


def test_timers_in_a_child(tmp_path: Path) -> None:
    """A parent's timer is not inherited; the child's own timer fires while it spins (the
    host timer thread of the parent does not exist in the child: it is started anew)."""
    src = tmp_path / "fork_timer.c"
    src.write_text(FORK_TIMER)
    exe = tmp_path / "fork_timer"
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(src)], check=True)
    native = run_native([str(exe)])
    guest = run_leakdbt(["exec", "--timeout", "60", str(exe)])
    assert native.stdout == (b"child inherits no timer: 1\nchild alarm\n"
                             b"parent alarm, child 0\n")
    assert (guest.stdout, guest.status) == (native.stdout, native.status), guest.stderr


@pytest.fixture
def sandbox(built: Path, tmp_path: Path) -> Path:
    """A --root tree: busybox as /bin/sh, fork_exec, scripts in /tmp."""
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    (root / "tmp").mkdir()
    shutil.copy(BUSYBOX, root / "bin" / "busybox")
    os.symlink("busybox", root / "bin" / "sh")
    shutil.copy(binary("static", "fork_exec"), root / "bin" / "fork_exec")
    scripts = {
        "s.sh": '#!/bin/sh -e\necho "script: $0 $1"\nexit 6\n',
        "s2": "#!/tmp/s.sh\n",  # a script whose interpreter is a script
        "text": "just text\n",  # executable, but neither ELF nor "#!"
        "noexec.sh": "#!/bin/sh\necho never\n",
    }
    for name, text in scripts.items():
        (root / "tmp" / name).write_text(text)
        (root / "tmp" / name).chmod(0o644 if name == "noexec.sh" else 0o755)
    for i in range(6):  # a chain of "#!" deeper than Linux follows
        (root / "tmp" / f"deep{i}").write_text(f"#!/tmp/deep{i + 1}\n")
        (root / "tmp" / f"deep{i}").chmod(0o755)
    (root / "tmp" / "deep6").write_text("#!/bin/sh\necho deep enough\n")
    (root / "tmp" / "deep6").chmod(0o755)
    return root


def _in_root(root: Path, *argv: str) -> tuple[bytes, int, bytes]:
    guest = run_leakdbt(["exec", "--root", str(root), str(root / "bin" / "fork_exec"), *argv])
    return guest.stdout, guest.status, guest.stderr


def test_exec_of_a_script_inside_the_sandbox(sandbox: Path) -> None:
    """"#!/bin/sh -e" is /bin/sh of the sandbox (busybox), given its argument."""
    assert _in_root(sandbox, "/tmp/s.sh", "arg1")[:2] == (
        b"script: /tmp/s.sh arg1\nchild exited 6\n", 0)
    # A script as interpreter: argv is built as Linux builds it, level by level.
    assert _in_root(sandbox, "/tmp/s2", "arg1")[:2] == (
        b"script: /tmp/s.sh /tmp/s2\nchild exited 6\n", 0)


def test_a_shell_inside_the_sandbox_runs_scripts(sandbox: Path) -> None:
    guest = run_leakdbt(["exec", "--root", str(sandbox), str(sandbox / "bin" / "sh"), "-c",
                         "/tmp/s.sh x; echo $?; cat /etc/hostname; echo $?"])
    assert guest.stdout == b"script: /tmp/s.sh x\n6\n1\n", guest.stderr
    assert b"can't open '/etc/hostname': No such file or directory" in guest.stderr


@pytest.mark.parametrize(("path", "error"), [
    (str(TEST_BINARIES / "build" / "static" / "hello"), "No such file or directory"),
    ("/bin/bash", "No such file or directory"),
    ("/tmp", "Permission denied"),
    ("/tmp/noexec.sh", "Permission denied"),
    ("/tmp/text", "Exec format error"),
    ("/tmp/deep1", "Too many levels of symbolic links"),  # six scripts before the ELF file
    ("/tmp/deep2", "NOT-AN-ERROR"),  # five: as many as Linux follows
    ("/../../../bin/sh", "NOT-AN-ERROR"),
], ids=["host-path", "host-bash", "directory", "no-x-bit", "not-a-program", "deep-scripts",
        "scripts-deep-enough", "dotdot-stays-inside"])
def test_exec_failures_are_the_sandbox_s(sandbox: Path, path: str, error: str) -> None:
    """A host path outside --root does not exist for the guest; execve fails with the
    errno Linux gives, and the old program goes on (it prints the error)."""
    stdout, status, stderr = _in_root(sandbox, "-", path)
    if error == "NOT-AN-ERROR":  # ".." stops at the root: the sandbox's /bin/sh runs
        assert status == 0, stderr
        assert stdout == (b"deep enough\n" if "deep" in path else b""), stderr
        return
    assert stdout == f"exec {path}: {error}\n".encode(), stderr
    assert status == 1


@pytest.mark.parametrize("mode", ["stale-cwd", "stale-dirfd"])
def test_sandbox_escapes_fail_in_a_forked_and_exec_d_program(built: Path, tmp_path: Path,
                                                             mode: str) -> None:
    """test_sandbox.py's stale-directory attacks, run by a program that a forked child
    exec'd from inside the root: every probe stays inside it, with no existence oracle."""
    root = tmp_path / "root"
    (root / "rw").mkdir(parents=True)
    (root / "bin").mkdir()
    for name in ("fork_exec", "sandbox_probe"):
        shutil.copy(binary("static", name), root / "bin" / name)
    host = tmp_path / "host"
    host.mkdir()
    (host / "canary.txt").write_text(CANARY)
    r = run_leakdbt(["exec", "--root", str(root), "--rw", str(root / "rw"),
                     str(root / "bin" / "fork_exec"), "/bin/sandbox_probe", mode, "/rw",
                     str(host)])
    out = r.stdout.decode()
    assert r.status == 0, r.stderr
    assert out.endswith("child exited 0\n") and "SETUP" not in out and CANARY not in out
    existing, missing = _probe_lines(out, "canary.txt"), _probe_lines(out, "missing.txt")
    assert len(existing) >= 7
    assert existing == missing
    assert all(line.endswith("errno=ENOENT") for line in existing)


def test_exec_in_the_first_process_keeps_fds_and_cwd(tmp_path: Path) -> None:
    """The shell execs itself twice: fd 3 and the working directory survive, the last image's
    status is leakdbt's, and --stats is printed once (for the last image)."""
    script = 'cd sub && exec 3>out && exec /bin/busybox sh -c "echo kept >&3; pwd; exit 7"'
    (tmp_path / "sub").mkdir()
    guest = run_leakdbt(["exec", "--stats", "--rw", str(tmp_path), BUSYBOX, "sh", "-c", script],
                        cwd=tmp_path)
    assert guest.status == 7, guest.stderr
    assert guest.stdout == f"{tmp_path / 'sub'}\n".encode()
    assert (tmp_path / "sub" / "out").read_text() == "kept\n"
    assert guest.stderr.count(b"leakdbt stats:") == 1
    assert b"exit status:        7" in guest.stderr
