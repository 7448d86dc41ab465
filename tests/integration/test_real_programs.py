"""Programs nobody here wrote — Debian's busybox-static applets and the host's dynamically
linked coreutils — give byte-identical output under leakdbt and natively, also with
``--translate-all`` (every function they call runs from relocated copies)."""

from __future__ import annotations

import gzip
import random
import shutil
from pathlib import Path

import pytest

from tests.conftest import run_leakdbt, run_native

BUSYBOX = shutil.which("busybox") or "/bin/busybox"
ENV = {"LANG": "C", "LC_ALL": "C", "TZ": "UTC", "COLUMNS": "80"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("real")
    rng = random.Random(1234)
    words = ["delta", "alpha", "charlie", "bravo", "alpha", "echo", "delta", "Zulu", "10", "9"]
    (d / "words.txt").write_text("\n".join(rng.choice(words) for _ in range(3000)) + "\n")
    (d / "numbers.txt").write_text("\n".join(str(rng.randint(-10**6, 10**6))
                                             for _ in range(5000)) + "\n")
    (d / "random.bin").write_bytes(rng.randbytes(300_000))
    (d / "data.gz").write_bytes(gzip.compress(rng.randbytes(50_000) + b"x" * 50_000))
    (d / "sub").mkdir()
    (d / "sub" / "inner.txt").write_text("inner\n")
    return d


TRANSLATE = pytest.mark.parametrize("translate", [False, True], ids=["exec", "translate-all"])


def _compare(argv: list[str], cwd: Path, stdin: bytes = b"", translate: bool = False) -> None:
    flags = ["--clear-env"] + [f"--env={k}={v}" for k, v in ENV.items()]
    if translate:
        flags += ["--translate-all", "--stats"]
    native = run_native(argv, cwd=cwd, env=ENV, input=stdin)
    guest = run_leakdbt(["exec", *flags, *argv], cwd=cwd, input=stdin)
    assert native.status == 0, native.stderr
    assert guest.stdout == native.stdout, guest.stderr.decode(errors="replace")
    assert guest.status == native.status
    own, _, stats = guest.stderr.partition(b"leakdbt stats:\n")
    assert own == native.stderr
    if translate:
        translated = int(stats.split(b"functions translated:")[1].split()[0])
        refused = int(stats.split(b"functions refused:")[1].split()[0])
        assert translated >= 20 and refused <= translated // 50, stats.decode()


BUSYBOX_CASES = {
    "sha256sum": ["sha256sum", "random.bin", "words.txt"],
    "md5sum": ["md5sum", "random.bin"],
    "sort": ["sort", "words.txt"],
    "sort-n": ["sort", "-n", "numbers.txt"],
    "uniq": ["uniq", "-c", "words.txt"],
    "wc": ["wc", "words.txt", "numbers.txt", "random.bin"],
    "sed": ["sed", "-e", "s/a/A/g", "-e", "/delta/d", "words.txt"],
    "awk": ["awk", "{ s += $1; n++ } END { printf \"%d %d %.3f\\n\", s, n, s / n }",
            "numbers.txt"],
    "tr": ["tr", "a-z", "A-Z", "words.txt"],
    "od": ["od", "-A", "x", "-t", "x1", "-N", "4096", "random.bin"],
    "ls": ["ls", "-la", "--full-time", "."],
    "gunzip": ["gunzip", "-c", "data.gz"],
}


@TRANSLATE
@pytest.mark.parametrize("case", sorted(BUSYBOX_CASES))
def test_busybox_applet(workdir: Path, case: str, translate: bool) -> None:
    _compare([BUSYBOX, *BUSYBOX_CASES[case]], workdir, translate=translate)


@TRANSLATE
def test_busybox_gzip_from_stdin(workdir: Path, translate: bool) -> None:
    _compare([BUSYBOX, "gzip", "-c"], workdir, stdin=(workdir / "random.bin").read_bytes(),
             translate=translate)


COREUTILS_CASES = {
    "sha256sum": ["/usr/bin/sha256sum", "random.bin", "words.txt"],
    "sort": ["/usr/bin/sort", "words.txt"],
    "sort-rn": ["/usr/bin/sort", "-r", "-n", "numbers.txt"],
    "base64": ["/usr/bin/base64", "random.bin"],
    "ls": ["/bin/ls", "-la", "--time-style=full-iso", "."],
    "ls-R": ["/bin/ls", "-R", "."],
}


@TRANSLATE
@pytest.mark.parametrize("case", sorted(COREUTILS_CASES))
def test_host_coreutils(workdir: Path, case: str, translate: bool) -> None:
    _compare(COREUTILS_CASES[case], workdir, translate=translate)


# -- whole programs with processes and threads (issue 17) ------------------------------------
# Each case runs in a fresh directory at the same path natively and under leakdbt (there with
# --rw on it), so that paths in the output agree; the program may write there.

SH_SCRIPT = r"""
for i in 3 1 2; do echo "line $i" > f$i.txt; done
n=$(ls *.txt | wc -l); echo "files: $n $(echo nested $(echo deep))"
find . -name "f*.txt" -exec cat {} \; | sort
find . -name "f*.txt" | sort | xargs -n 1 basename
ls *.txt | xargs cat | wc -l
printf "a 1\nb 2\nc 3\n" | while read k v; do echo "$k=$((v * 10))"; done
cat f1.txt f2.txt | tr a-z A-Z | sed "s/LINE/L/" | sort -r
echo "to stderr" >&2; exit 3
"""

BASH_SCRIPT = r"""
x=$(echo abc | tr a-c A-C); echo "[$x]"
printf "1\n2\n3\n" | while read n; do echo $((n * n)); done | paste -sd+ | bc
false | true | (exit 4); echo "${PIPESTATUS[@]}"
ls -1 | sort -r | head -n 2 >&2; exit 5
"""

PYTHON_SCRIPT = r"""
import subprocess, sys, threading
results, lock, barrier = [], threading.Lock(), threading.Barrier(4)
def work(i):
    s = sum(j * j for j in range(i * 2000))
    barrier.wait()
    with lock:
        results.append((i, s))
threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
for t in threads: t.start()
for t in threads: t.join()
print(sorted(results))
r = subprocess.run(["/bin/echo", "from a child"], capture_output=True)
print(r.returncode, r.stdout)
p = subprocess.Popen(["/usr/bin/tr", "a-z", "A-Z"], stdin=subprocess.PIPE,
                     stdout=subprocess.PIPE)
print(p.communicate(b"through tr\n")[0].decode(), end="")
print("status", subprocess.call(["/bin/sh", "-c", "exit 3"]), file=sys.stderr)
sys.exit(6)
"""

PERL_SCRIPT = r"""
$| = 1; pipe(my $r, my $w) or die; my (@kids, @st);
for my $i (1 .. 3) {
    my $pid = fork // die "fork: $!";
    if ($pid == 0) { close $r; print $w "child $i: ", $i * 7, "\n"; close $w; exit $i }
    push @kids, $pid;
}
close $w; print sort <$r>;
for my $pid (@kids) { waitpid($pid, 0); push @st, $? >> 8 } print "statuses: @{[sort @st]}\n";
print `echo backtick | tr a-z A-Z`; print STDERR "to stderr\n"; exit 4
"""

# fork, setsid, fork again and let the middle process exit; the daemon writes its pid file
# and a report in the --rw directory; the parent waits for both and for the daemon's end.
DAEMON_SCRIPT = r"""
use POSIX (); my $d = shift; $| = 1;
my $pid = fork // die "fork: $!";
if ($pid == 0) {
    POSIX::setsid() or die "setsid: $!";
    my $second = fork // die "fork: $!";
    POSIX::_exit(0) if $second;
    chdir "/" or die; umask 022;
    open STDIN, "<", "/dev/null"; open STDOUT, ">", "/dev/null";
    open my $f, ">", "$d/daemon.pid.tmp" or die; print $f "$$\n"; close $f;
    rename "$d/daemon.pid.tmp", "$d/daemon.pid" or die;
    open my $o, ">", "$d/log" or die;
    print $o "daemon leads its group: ", (POSIX::getpgrp() == $$ ? "yes" : "no"), "\n";
    close $o; rename "$d/log", "$d/done" or die;
    POSIX::_exit(0);
}
waitpid($pid, 0); print "first child exited ", $? >> 8, "\n";
for (1 .. 3000) { last if -e "$d/done"; select(undef, undef, undef, 0.01) }
open my $p, "<", "$d/daemon.pid" or die "no pid file"; chomp(my $dpid = <$p>);
print "the pid file names another process: ", ($dpid != $$ && $dpid != $pid ? 1 : 0), "\n";
for (1 .. 3000) { last unless kill 0, $dpid; select(undef, undef, undef, 0.01) }
print "daemon gone: ", (kill(0, $dpid) ? 0 : 1), "\n";
open my $l, "<", "$d/done" or die; print <$l>;
"""

MAKEFILE = """\
WORDS := $(shell echo charlie alpha bravo | tr ' ' '\\n' | sort | tr '\\n' ' ')
all: joined.txt
\t@echo "words: $(WORDS)"
\twc -l < joined.txt
%.part:
\techo $* | tr a-z A-Z > $@
joined.txt: $(addsuffix .part,$(WORDS))
\tcat $^ > $@
broken: all
\t@echo about to fail >&2
\tfalse
"""

# name -> (argv, with "{dir}" standing for the directory; files to create there first)
FOREIGN_CASES: dict[str, tuple[list[str], dict[str, str]]] = {
    "busybox-sh": ([BUSYBOX, "sh", "-c", SH_SCRIPT], {}),
    "bash": (["/bin/bash", "-c", BASH_SCRIPT], {"a": "", "b": "", "c": ""}),
    "python3-threads-subprocess": (["/usr/bin/python3", "-c", PYTHON_SCRIPT], {}),
    "perl-fork": (["/usr/bin/perl", "-e", PERL_SCRIPT], {}),
    "perl-daemon": (["/usr/bin/perl", "-e", DAEMON_SCRIPT, "{dir}"], {}),
    "make-j2": (["/usr/bin/make", "-j2", "all", "broken"], {"Makefile": MAKEFILE}),
}
FOREIGN_ENV = {**ENV, "PATH": "/usr/bin:/bin"}


def _fresh(d: Path, files: dict[str, str]) -> None:
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    for name, text in files.items():
        (d / name).write_text(text)


@pytest.mark.parametrize("case", sorted(FOREIGN_CASES))
def test_foreign_program_same_as_native(tmp_path: Path, case: str) -> None:
    """stdout, stderr and exit status byte-identical to native; nothing reported unsupported
    (make's ids dance through setresuid, coreutils cat's copy_file_range, bash's
    getpeername on its stdin)."""
    template, files = FOREIGN_CASES[case]
    d = tmp_path / "w"
    argv = [a.replace("{dir}", str(d)) for a in template]
    _fresh(d, files)
    native = run_native(argv, cwd=d, env=FOREIGN_ENV)
    made = sorted(p.name for p in d.iterdir())
    _fresh(d, files)
    flags = ["--clear-env", *(f"--env={k}={v}" for k, v in FOREIGN_ENV.items()), "--rw", str(d)]
    guest = run_leakdbt(["exec", *flags, *argv], cwd=d)
    assert native.stdout and native.status not in (126, 127), native.stderr
    assert guest.stdout == native.stdout, guest.stderr.decode(errors="replace")
    assert (guest.stderr, guest.status) == (native.stderr, native.status)
    assert sorted(p.name for p in d.iterdir()) == made
