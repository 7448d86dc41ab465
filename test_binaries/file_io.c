/* file_io: file-descriptor syscalls inside a scratch directory.
 *
 * Usage: file_io DIR
 *   Works only inside DIR/fio_sub (created and removed again): mkdir, open,
 *   write, pwrite, pread, lseek (incl. a hole), read, ftruncate, fstat/stat
 *   (sizes only), readv/writev, dup/dup2/fcntl (F_DUPFD_CLOEXEC, FD flags,
 *   status flags, shared offsets), O_APPEND, rename, unlink, rmdir, and a few
 *   expected errors (ENOENT, EEXIST, ENOTEMPTY, EBADF).  Prints one line per
 *   step.  Exit 0 on success, 1 as soon as a step misbehaves ("FAIL: ...").
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

static const char *dir;

static void fail(const char *what)
{
    printf("FAIL: %s: errno=%s\n", what, strerrorname_np(errno) ?: "?");
    exit(1);
}

/* Check a syscall result that must be >= 0. */
static long ok(long r, const char *what)
{
    if (r < 0)
        fail(what);
    return r;
}

/* Check a syscall that must fail with a given errno. */
static void expect_err(long r, int want, const char *what)
{
    if (r >= 0) {
        printf("FAIL: %s: unexpectedly succeeded\n", what);
        exit(1);
    }
    if (errno != want)
        fail(what);
    printf("%s: errno=%s (expected)\n", what, strerrorname_np(errno));
}

static void expect_eq(long got, long want, const char *what)
{
    if (got != want) {
        printf("FAIL: %s: got %ld, want %ld\n", what, got, want);
        exit(1);
    }
}

static char *path(const char *rel)
{
    static char buf[2][4096];
    static int which;
    char *p = buf[which ^= 1];
    snprintf(p, sizeof buf[0], "%s/fio_sub%s%s", dir, *rel ? "/" : "", rel);
    return p;
}

static long fsize(int fd)
{
    struct stat st;
    ok(fstat(fd, &st), "fstat");
    return (long)st.st_size;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIR\n", argv[0]);
        return 2;
    }
    dir = argv[1];
    char buf[256];
    ssize_t n;

    umask(022);     /* printed modes must not depend on the caller's umask */

    /* leftovers of an interrupted earlier run */
    unlink(path("a.txt"));
    unlink(path("b.txt"));
    rmdir(path("inner"));
    rmdir(path(""));

    ok(mkdir(path(""), 0755), "mkdir");
    printf("mkdir fio_sub: ok\n");
    expect_err(mkdir(path(""), 0755), EEXIST, "mkdir again");
    ok(mkdir(path("inner"), 0700), "mkdir inner");

    int fd = (int)ok(open(path("a.txt"), O_CREAT | O_EXCL | O_RDWR, 0644), "open a.txt");
    expect_err(open(path("a.txt"), O_CREAT | O_EXCL | O_RDWR, 0644), EEXIST, "open O_EXCL again");

    /* write + pwrite: pwrite must not move the file offset */
    const char *msg = "hello, file_io world\n";
    n = ok(write(fd, msg, strlen(msg)), "write");
    printf("write: %zd bytes\n", n);
    n = ok(pwrite(fd, "HELLO", 5, 0), "pwrite");
    printf("pwrite: %zd bytes, offset now %ld\n", n, (long)ok(lseek(fd, 0, SEEK_CUR), "lseek CUR"));

    ok(lseek(fd, 0, SEEK_SET), "lseek SET");
    n = ok(read(fd, buf, sizeof buf - 1), "read");
    buf[n] = 0;
    printf("read back %zd bytes: %s", n, buf);
    expect_eq(read(fd, buf, sizeof buf), 0, "read at EOF");
    printf("read at EOF: 0\n");

    n = ok(pread(fd, buf, 5, 7), "pread");
    printf("pread(7,5): %.*s\n", (int)n, buf);

    /* a hole: seek past EOF and write one byte */
    printf("lseek END: %ld\n", (long)ok(lseek(fd, 0, SEEK_END), "lseek END"));
    ok(lseek(fd, 100, SEEK_SET), "lseek 100");
    ok(write(fd, "X", 1), "write X");
    printf("size after hole write: %ld\n", fsize(fd));
    ok(pread(fd, buf, 4, 50), "pread hole");
    printf("hole bytes zero: %s\n", !buf[0] && !buf[1] && !buf[2] && !buf[3] ? "yes" : "no");

    ok(ftruncate(fd, 12), "ftruncate");
    printf("size after ftruncate(12): %ld\n", fsize(fd));

    /* writev/readv with uneven iovecs */
    ok(lseek(fd, 0, SEEK_SET), "lseek 0");
    struct iovec wv[3] = {
        { "abc", 3 }, { "", 0 }, { "defghij", 7 },
    };
    n = ok(writev(fd, wv, 3), "writev");
    printf("writev: %zd bytes\n", n);
    char r1[4] = {0}, r2[16] = {0};
    struct iovec rv[2] = { { r1, 3 }, { r2, 15 } };
    ok(lseek(fd, 0, SEEK_SET), "lseek 0");
    n = ok(readv(fd, rv, 2), "readv");
    printf("readv: %zd bytes: [%s] [%.*s]\n", n, r1, (int)(n > 3 ? n - 3 : 0), r2);

    /* dup shares the file offset */
    int fd2 = (int)ok(dup(fd), "dup");
    printf("dup: new fd distinct: %s\n", fd2 != fd ? "yes" : "no");
    ok(lseek(fd2, 4, SEEK_SET), "lseek via dup");
    printf("offset seen via original after lseek on dup: %ld\n", (long)lseek(fd, 0, SEEK_CUR));
    printf("dup2(fd, 50) = %d\n", (int)ok(dup2(fd, 50), "dup2"));
    printf("dup2(50, 50) = %d\n", (int)ok(dup2(50, 50), "dup2 same"));
    int fd3 = (int)ok(fcntl(fd, F_DUPFD_CLOEXEC, 60), "F_DUPFD_CLOEXEC");
    printf("F_DUPFD_CLOEXEC(60) = %d\n", fd3);
    printf("F_GETFD(dup2 fd) cloexec: %d\n", (int)(ok(fcntl(50, F_GETFD), "F_GETFD") & FD_CLOEXEC));
    printf("F_GETFD(F_DUPFD_CLOEXEC fd) cloexec: %d\n", (int)(ok(fcntl(fd3, F_GETFD), "F_GETFD") & FD_CLOEXEC));
    ok(fcntl(fd3, F_SETFD, 0), "F_SETFD");
    printf("after F_SETFD 0 cloexec: %d\n", (int)(ok(fcntl(fd3, F_GETFD), "F_GETFD") & FD_CLOEXEC));
    int fl = (int)ok(fcntl(fd, F_GETFL), "F_GETFL");
    printf("F_GETFL: accmode=%s append=%d\n",
           (fl & O_ACCMODE) == O_RDWR ? "O_RDWR" : "other", !!(fl & O_APPEND));
    ok(fcntl(fd, F_SETFL, fl | O_APPEND), "F_SETFL");
    fl = (int)ok(fcntl(fd2, F_GETFL), "F_GETFL dup");
    printf("F_GETFL via dup after F_SETFL O_APPEND: append=%d\n", !!(fl & O_APPEND));
    ok(write(fd2, "+", 1), "append write");
    printf("size after append via dup: %ld\n", fsize(fd));
    ok(close(fd2), "close");
    ok(close(50), "close 50");
    ok(close(fd3), "close fd3");
    expect_err(close(50), EBADF, "close 50 again");
    expect_err(fcntl(50, F_GETFD), EBADF, "F_GETFD closed fd");
    ok(close(fd), "close fd");

    /* O_APPEND via open */
    fd = (int)ok(open(path("a.txt"), O_WRONLY | O_APPEND), "open append");
    ok(lseek(fd, 0, SEEK_SET), "lseek");
    ok(write(fd, "tail\n", 5), "write tail");
    printf("size after O_APPEND write: %ld\n", fsize(fd));
    ok(close(fd), "close");

    /* rename + stat */
    ok(rename(path("a.txt"), path("b.txt")), "rename");
    struct stat st;
    ok(stat(path("b.txt"), &st), "stat b.txt");
    printf("stat b.txt: size=%ld regular=%s mode=%o\n", (long)st.st_size,
           S_ISREG(st.st_mode) ? "yes" : "no", (unsigned)(st.st_mode & 0777));
    expect_err(stat(path("a.txt"), &st), ENOENT, "stat a.txt after rename");
    ok(stat(path("inner"), &st), "stat inner");
    printf("stat inner: dir=%s mode=%o\n", S_ISDIR(st.st_mode) ? "yes" : "no",
           (unsigned)(st.st_mode & 0777));

    fd = (int)ok(open(path("b.txt"), O_RDONLY), "open b.txt");
    n = ok(read(fd, buf, sizeof buf - 1), "read b.txt");
    buf[n] = 0;
    printf("b.txt content (%zd bytes): ", n);
    for (ssize_t i = 0; i < n; i++)
        putchar(buf[i] >= 32 && buf[i] < 127 ? buf[i] : '.');
    putchar('\n');
    expect_err(write(fd, "x", 1), EBADF, "write to O_RDONLY fd");
    ok(close(fd), "close");

    /* cleanup, with the classic errors on the way */
    expect_err(rmdir(path("")), ENOTEMPTY, "rmdir non-empty");
    ok(unlink(path("b.txt")), "unlink b.txt");
    expect_err(unlink(path("b.txt")), ENOENT, "unlink b.txt again");
    ok(rmdir(path("inner")), "rmdir inner");
    ok(rmdir(path("")), "rmdir fio_sub");
    expect_err(open(path("b.txt"), O_RDONLY), ENOENT, "open in removed dir");
    printf("file_io: all ok\n");
    return 0;
}
