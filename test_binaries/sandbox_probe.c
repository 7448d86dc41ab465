/* sandbox_probe: what a hostile guest tries against leakdbt's --root/--rw sandbox,
 * and Linux behaviours the sandbox must keep.  One subcommand per case:
 *
 *   stale-cwd RW HOSTDIR       mkdir RW/d, chdir RW/d, rename RW/d -> RW/d_moved,
 *                              symlink HOSTDIR -> RW/d; then probe "canary.txt" and
 *                              "missing.txt" relative to the (moved) working directory
 *   stale-dirfd RW HOSTDIR     the same with a directory fd RW/e and the *at() calls
 *   mprotect FILE              map FILE (opened read-only) MAP_SHARED and MAP_PRIVATE,
 *                              then mprotect each PROT_READ|PROT_WRITE
 *   whiteout RW                renameat2(RW/a, RW/b, RENAME_WHITEOUT) (RW/a is created)
 *   pipe-writer [ignore]       write "y\n" to stdout forever; with "ignore", SIGPIPE is
 *                              SIG_IGN first.  A failed write prints its errno name on
 *                              stderr and exits 3.
 *
 * Probe lines are "PROBE <call> <name>: ok[ <data>]" or "... errno=<NAME>", so that a test
 * can compare the lines of an existing and a missing host file.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/xattr.h>
#include <unistd.h>

static const char *ename(int e)
{
    const char *n = strerrorname_np(e);
    return n ? n : "?";
}

static void line(const char *call, const char *name, int ok, const char *data)
{
    if (ok)
        printf("PROBE %s %s: ok%s%s\n", call, name, data ? " " : "", data ? data : "");
    else
        printf("PROBE %s %s: errno=%s\n", call, name, ename(errno));
    fflush(stdout);
}

/* Every read and metadata call on NAME relative to DIRFD (AT_FDCWD: the cwd). */
static void probe(int dirfd, const char *name)
{
    char buf[256];
    struct stat st;
    struct statx stx;
    struct statfs sfs;
    const char *p = name; /* the path calls without an *at() form use the cwd */

    int fd = openat(dirfd, name, O_RDONLY);
    ssize_t n = fd >= 0 ? read(fd, buf, sizeof buf - 1) : -1;
    if (n >= 0)
        buf[n] = 0;
    line("open+read", name, n >= 0, n >= 0 ? buf : NULL);
    if (fd >= 0)
        close(fd);
    line("fstatat", name, fstatat(dirfd, name, &st, 0) == 0, NULL);
    line("lstat", name, fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0, NULL);
    line("statx", name, statx(dirfd, name, 0, STATX_BASIC_STATS, &stx) == 0, NULL);
    n = readlinkat(dirfd, name, buf, sizeof buf - 1);
    if (n >= 0)
        buf[n] = 0;
    line("readlinkat", name, n >= 0, n >= 0 ? buf : NULL);
    line("faccessat", name, faccessat(dirfd, name, F_OK, 0) == 0, NULL);
    line("faccessat2", name, faccessat(dirfd, name, R_OK, AT_EACCESS) == 0, NULL);
    if (dirfd == AT_FDCWD) {
        line("stat", name, stat(p, &st) == 0, NULL);
        line("access", name, access(p, F_OK) == 0, NULL);
        line("statfs", name, statfs(p, &sfs) == 0, NULL);
        n = getxattr(p, "user.canary", buf, sizeof buf - 1);
        if (n >= 0)
            buf[n] = 0;
        line("getxattr", name, n >= 0, n >= 0 ? buf : NULL);
        n = lgetxattr(p, "user.canary", buf, sizeof buf - 1);
        line("lgetxattr", name, n >= 0, NULL);
        n = listxattr(p, buf, sizeof buf - 1);
        line("listxattr", name, n >= 0, NULL);
        n = readlink(p, buf, sizeof buf - 1);
        line("readlink", name, n >= 0, NULL);
    }
}

static void must(int ok, const char *what)
{
    if (!ok) {
        printf("SETUP %s failed: errno=%s\n", what, ename(errno));
        exit(2);
    }
}

static int stale(const char *mode, const char *rw, const char *hostdir)
{
    char dir[4096], moved[4200], cwd[4096];
    int cwd_mode = strcmp(mode, "stale-cwd") == 0;
    snprintf(dir, sizeof dir, "%s/%s", rw, cwd_mode ? "d" : "e");
    snprintf(moved, sizeof moved, "%s_moved", dir);
    must(mkdir(dir, 0755) == 0, "mkdir");
    int dirfd = AT_FDCWD;
    if (cwd_mode)
        must(chdir(dir) == 0, "chdir");
    else
        must((dirfd = open(dir, O_RDONLY | O_DIRECTORY)) >= 0, "open dir");
    must(rename(dir, moved) == 0, "rename");
    must(symlink(hostdir, dir) == 0, "symlink");
    if (cwd_mode)
        printf("CWD %s\n", getcwd(cwd, sizeof cwd) ? cwd : ename(errno));
    probe(dirfd, "canary.txt");
    probe(dirfd, "missing.txt");
    return 0;
}

static int mprotect_case(const char *file)
{
    int fd = open(file, O_RDONLY);
    must(fd >= 0, "open");
    void *shared = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0);
    void *private = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, fd, 0);
    must(shared != MAP_FAILED && private != MAP_FAILED, "mmap");
    int r = mprotect(shared, 4096, PROT_READ | PROT_WRITE);
    printf("mprotect shared: %s\n", r == 0 ? "ok" : ename(errno));
    r = mprotect(private, 4096, PROT_READ | PROT_WRITE);
    printf("mprotect private: %s\n", r == 0 ? "ok" : ename(errno));
    r = mprotect(shared, 4096, PROT_READ);
    printf("mprotect shared read: %s\n", r == 0 ? "ok" : ename(errno));
    return 0;
}

static int whiteout(const char *rw)
{
    char a[4096], b[4096];
    snprintf(a, sizeof a, "%s/a", rw);
    snprintf(b, sizeof b, "%s/b", rw);
    int fd = open(a, O_CREAT | O_WRONLY, 0644);
    must(fd >= 0, "create");
    close(fd);
    int r = renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_WHITEOUT);
    printf("renameat2 whiteout: %s\n", r == 0 ? "ok" : ename(errno));
    return 0;
}

static int pipe_writer(int ignore)
{
    if (ignore)
        signal(SIGPIPE, SIG_IGN);
    for (;;) {
        if (write(1, "y\n", 2) < 0) {
            fprintf(stderr, "write: %s\n", ename(errno));
            return 3;
        }
    }
}

int main(int argc, char **argv)
{
    if (argc >= 4 && (!strcmp(argv[1], "stale-cwd") || !strcmp(argv[1], "stale-dirfd")))
        return stale(argv[1], argv[2], argv[3]);
    if (argc >= 3 && !strcmp(argv[1], "mprotect"))
        return mprotect_case(argv[2]);
    if (argc >= 3 && !strcmp(argv[1], "whiteout"))
        return whiteout(argv[2]);
    if (argc >= 2 && !strcmp(argv[1], "pipe-writer"))
        return pipe_writer(argc >= 3 && !strcmp(argv[2], "ignore"));
    fprintf(stderr, "usage: sandbox_probe stale-cwd|stale-dirfd RW HOSTDIR | mprotect FILE | "
                    "whiteout RW | pipe-writer [ignore]\n");
    return 2;
}
