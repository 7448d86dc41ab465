/* escape: sandbox-escape attempts.  Under leakdbt every attempt that leaves
 * ARGDIR (the only writable directory) must print "denied"; natively several
 * succeed.  Tests compare behaviour (and whether files appeared outside
 * ARGDIR), not the native bytes.
 *
 * Usage: escape ARGDIR [OUTSIDE [--cleanup]]     OUTSIDE default /tmp
 *   OUTSIDE should be an absolute directory outside ARGDIR.  Each attempt
 *   prints one line, "ATTEMPT NAME: ok" or "ATTEMPT NAME: denied errno=NAME":
 *     read_dotdot      open ARGDIR/../../../../../../../../etc/passwd, read
 *     create_dotdot    create ARGDIR/../../escaped_by_dotdot
 *     symlink_create   symlink ARGDIR/escape_link -> OUTSIDE
 *     symlink_write    create ARGDIR/escape_link/escaped_via_symlink
 *     proc_mem_write   open /proc/self/mem O_RDWR
 *     proc_maps_read   open /proc/self/maps, read
 *     abs_write        create OUTSIDE/escaped_abs
 *     mkdir_outside    mkdir OUTSIDE/escaped_dir
 *     rename_out       rename ARGDIR/inside_file -> OUTSIDE/escaped_renamed
 *     chdir_dotdot     chdir ARGDIR, chdir ../../.., create escaped_by_chdir
 *   Nothing is removed afterwards (so a test can look for leaked files)
 *   unless --cleanup is given.  Exit 0.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void report(const char *name, int ok)
{
    if (ok)
        printf("ATTEMPT %s: ok\n", name);
    else
        printf("ATTEMPT %s: denied errno=%s\n", name, strerrorname_np(errno) ?: "?");
    fflush(stdout);
}

/* Create PATH and write a marker into it; 1 on success. */
static int create_file(const char *path)
{
    int fd = open(path, O_CREAT | O_WRONLY | O_TRUNC, 0644);
    if (fd < 0)
        return 0;
    int ok = write(fd, "escaped\n", 8) == 8;
    int err = errno;
    close(fd);
    errno = err;
    return ok;
}

/* Open PATH read-only and read a few bytes; 1 on success. */
static int read_file(const char *path)
{
    char buf[64];
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf);
    int err = errno;
    close(fd);
    errno = err;
    return n > 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s ARGDIR [OUTSIDE [--cleanup]]\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    const char *out = argc > 2 ? argv[2] : "/tmp";
    int cleanup = argc > 3 && strcmp(argv[3], "--cleanup") == 0;
    char p[4096], q[4096];
    int ok;

    snprintf(p, sizeof p, "%s/../../../../../../../../etc/passwd", dir);
    report("read_dotdot", read_file(p));

    snprintf(p, sizeof p, "%s/../../escaped_by_dotdot", dir);
    report("create_dotdot", ok = create_file(p));
    if (ok && cleanup)
        unlink(p);

    snprintf(p, sizeof p, "%s/escape_link", dir);
    report("symlink_create", symlink(out, p) == 0);
    snprintf(q, sizeof q, "%s/escape_link/escaped_via_symlink", dir);
    report("symlink_write", ok = create_file(q));
    if (ok && cleanup)
        unlink(q);
    if (cleanup)
        unlink(p);

    int fd = open("/proc/self/mem", O_RDWR);
    report("proc_mem_write", fd >= 0);
    if (fd >= 0)
        close(fd);
    report("proc_maps_read", read_file("/proc/self/maps"));

    snprintf(p, sizeof p, "%s/escaped_abs", out);
    report("abs_write", ok = create_file(p));
    if (ok && cleanup)
        unlink(p);

    snprintf(p, sizeof p, "%s/escaped_dir", out);
    report("mkdir_outside", ok = mkdir(p, 0755) == 0);
    if (ok && cleanup)
        rmdir(p);

    /* the source is inside ARGDIR (allowed), the destination is not */
    snprintf(p, sizeof p, "%s/inside_file", dir);
    snprintf(q, sizeof q, "%s/escaped_renamed", out);
    if (!create_file(p)) {
        report("rename_out (setup: create inside ARGDIR)", 0);
    } else {
        report("rename_out", ok = rename(p, q) == 0);
        if (cleanup)
            unlink(ok ? q : p);
    }

    /* relative paths after chdir: cwd must not be a way out either */
    if (chdir(dir) != 0) {
        report("chdir_dotdot (setup: chdir ARGDIR)", 0);
    } else if (chdir("../../..") != 0) {
        report("chdir_dotdot", 0);
    } else {
        report("chdir_dotdot", ok = create_file("escaped_by_chdir"));
        if (ok && cleanup)
            unlink("escaped_by_chdir");
    }
    return 0;
}
