/* dirlist: directory listing via getdents64.
 *
 * Usage: dirlist DIR [raw]
 *   Default: opendir/readdir (glibc's getdents64 with its own 32 KiB buffer).
 *   "raw": getdents64 called directly with a 200-byte buffer, so a directory
 *   of more than a few entries needs several calls (tests the resume offset).
 *   Output (same in both modes): entries sorted by name, one per line as
 *   "TYPE NAME" (TYPE = DIR, REG, LNK, FIFO, SOCK, CHR, BLK or UNKNOWN;
 *   "." and ".." included), then "total N".  Exit 0, or 1 on error.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

struct ent { char *name; unsigned char type; };
static struct ent *ents;
static size_t n_ents, cap;

static void add(const char *name, unsigned char type)
{
    if (n_ents == cap) {
        cap = cap ? 2 * cap : 64;
        ents = realloc(ents, cap * sizeof *ents);
        if (!ents)
            exit(1);
    }
    ents[n_ents].name = strdup(name);
    ents[n_ents].type = type;
    n_ents++;
}

static const char *type_name(unsigned char t)
{
    switch (t) {
    case DT_DIR:  return "DIR";
    case DT_REG:  return "REG";
    case DT_LNK:  return "LNK";
    case DT_FIFO: return "FIFO";
    case DT_SOCK: return "SOCK";
    case DT_CHR:  return "CHR";
    case DT_BLK:  return "BLK";
    default:      return "UNKNOWN";
    }
}

static int cmp_ent(const void *a, const void *b)
{
    return strcmp(((const struct ent *)a)->name, ((const struct ent *)b)->name);
}

static int list_readdir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    struct dirent *e;
    errno = 0;
    while ((e = readdir(d)) != NULL)
        add(e->d_name, e->d_type);
    int err = errno;
    closedir(d);
    errno = err;
    return err ? -1 : 0;
}

/* struct linux_dirent64 as the kernel lays it out */
struct kdirent64 {
    unsigned long long d_ino;
    long long d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

static int list_raw(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    long buf[25];                       /* 200 bytes, 8-byte aligned */
    for (;;) {
        long n = syscall(SYS_getdents64, fd, buf, sizeof buf);
        if (n < 0) {
            int err = errno;
            close(fd);
            errno = err;
            return -1;
        }
        if (n == 0)
            break;
        for (long off = 0; off < n;) {
            struct kdirent64 *e = (struct kdirent64 *)((char *)buf + off);
            add(e->d_name, e->d_type);
            off += e->d_reclen;
        }
    }
    close(fd);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIR [raw]\n", argv[0]);
        return 2;
    }
    int raw = argc > 2 && strcmp(argv[2], "raw") == 0;
    if ((raw ? list_raw(argv[1]) : list_readdir(argv[1])) != 0) {
        printf("dirlist: %s: errno=%s\n", argv[1], strerrorname_np(errno) ?: "?");
        return 1;
    }
    qsort(ents, n_ents, sizeof *ents, cmp_ent);
    for (size_t i = 0; i < n_ents; i++)
        printf("%s %s\n", type_name(ents[i].type), ents[i].name);
    printf("total %zu\n", n_ents);
    return 0;
}
