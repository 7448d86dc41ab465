/* mm_stress: the guest memory map -- brk, mmap, munmap, mremap, mprotect,
 * MAP_FIXED, and a file-backed private mapping of the program's own ELF.
 *
 * Usage: mm_stress [OPS]     (OPS = malloc/free operations, default 20000)
 *   argv[0] must be an openable path of the executable (it is mapped;
 *   /proc/self/exe is deliberately not used).  Prints facts ("yes"/"no") and
 *   FNV-1a checksums of data contents (never addresses); the ELF checksum
 *   differs between builds but not between runs.  Exit 0, or 1 if a check
 *   fails ("FAIL: ...").
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static long pg;
static int failures;

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;
static uint64_t rng(void)
{
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}
#define FNV0 0xcbf29ce484222325ull

static void check(int cond, const char *what)
{
    printf("%s: %s\n", what, cond ? "yes" : "no");
    if (!cond)
        failures++;
}

static void die(const char *what)
{
    printf("FAIL: %s: errno=%s\n", what, strerrorname_np(errno) ?: "?");
    exit(1);
}

/* Is [p, p+len) mapped?  msync fails with ENOMEM on unmapped ranges. */
static int mapped(void *p, size_t len)
{
    return msync(p, len, MS_ASYNC) == 0;
}

/* ---- phase 1: malloc/free/realloc churn --------------------------------- */

#define NSLOTS 2048
struct slot { unsigned char *p; size_t n; unsigned char tag; };
static struct slot slots[NSLOTS];

static size_t pick_size(void)
{
    uint64_t r = rng();
    unsigned cls = (unsigned)(r % 100);
    r >>= 8;
    if (cls < 80)
        return 1 + r % 512;                 /* small: bins, brk heap */
    if (cls < 97)
        return 513 + r % (64 * 1024);       /* medium: still brk heap */
    return 128 * 1024 + r % (2 << 20);      /* large: around the mmap threshold */
}

/* Touch the head, tail and one byte per page of a block. */
static void fill(struct slot *s)
{
    size_t head = s->n < 64 ? s->n : 64;
    memset(s->p, s->tag, head);
    memset(s->p + s->n - head, s->tag ^ 0x5a, head);
    for (size_t off = 4096; off + 64 < s->n; off += 4096)
        s->p[off] = (unsigned char)(s->tag + off / 4096);
}

static uint64_t verify(const struct slot *s, uint64_t h)
{
    size_t head = s->n < 64 ? s->n : 64;
    for (size_t off = 4096; off + 64 < s->n; off += 4096)
        if (s->p[off] != (unsigned char)(s->tag + off / 4096))
            failures++;
    h = fnv(h, s->p, head);
    h = fnv(h, s->p + s->n - head, head);
    return h;
}

static void phase_malloc(long ops)
{
    char *heap0 = sbrk(0);

    /* Before any free, glibc's mmap threshold is 128 KiB: a 1 MiB block is mmapped. */
    char *big = malloc(1 << 20);
    if (!big)
        die("malloc 1MiB");
    memset(big, 7, 1 << 20);
    char *heap1 = sbrk(0);
    check(big + (1 << 20) <= heap0 || big >= heap1, "malloc(1 MiB) outside brk heap");

    uint64_t h = FNV0, maxbrk = 0;
    long nmalloc = 0, nfree = 0, nrealloc = 0;
    for (long i = 0; i < ops; i++) {
        struct slot *s = &slots[rng() % NSLOTS];
        if (s->p) {
            h = verify(s, h);
            if (rng() % 8 == 0) {            /* realloc keeps the head bytes */
                size_t keep = s->n < 64 ? s->n : 64;
                unsigned char old[64];
                memcpy(old, s->p, keep);
                size_t n = pick_size();
                unsigned char *q = realloc(s->p, n);
                if (!q)
                    die("realloc");
                if (memcmp(q, old, keep < n ? keep : n) != 0)
                    failures++;
                s->p = q;
                s->n = n;
                fill(s);
                nrealloc++;
            } else {
                free(s->p);
                s->p = NULL;
                nfree++;
            }
        } else {
            s->n = pick_size();
            s->tag = (unsigned char)rng();
            s->p = malloc(s->n);
            if (!s->p)
                die("malloc");
            fill(s);
            nmalloc++;
        }
        uint64_t b = (uint64_t)(uintptr_t)sbrk(0);
        if (b > maxbrk)
            maxbrk = b;
    }
    for (int i = 0; i < NSLOTS; i++)
        if (slots[i].p) {
            h = verify(&slots[i], h);
            free(slots[i].p);
            slots[i].p = NULL;
        }
    free(big);

    /* calloc must return zeroed memory, also when it reuses freed chunks */
    int zero = 1;
    for (int i = 0; i < 64; i++) {
        size_t n = 1 + (size_t)(rng() % 5000);
        unsigned char *c = calloc(n, 1);
        if (!c)
            die("calloc");
        for (size_t j = 0; j < n; j++)
            zero &= c[j] == 0;
        memset(c, 0xff, n);
        free(c);
    }

    printf("malloc ops: %ld malloc, %ld free, %ld realloc\n", nmalloc, nfree, nrealloc);
    check(maxbrk - (uint64_t)(uintptr_t)heap0 > (1u << 20), "brk heap grew by more than 1 MiB");
    check(zero, "calloc memory zeroed");
    printf("malloc data checksum: %016llx\n", (unsigned long long)h);
}

/* ---- phase 2: explicit mmap/mremap/mprotect/munmap ---------------------- */

static void phase_mmap(void)
{
    /* anonymous RW mapping: zero-filled, writable */
    size_t len = 16 * pg;
    unsigned char *a = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (a == MAP_FAILED)
        die("mmap anon");
    int zero = 1;
    for (size_t i = 0; i < len; i++)
        zero &= a[i] == 0;
    check(zero, "anonymous mmap zero-filled");
    for (size_t i = 0; i < len; i++)
        a[i] = (unsigned char)(i * 31 + (i >> 12));
    printf("anon mmap checksum: %016llx\n", (unsigned long long)fnv(FNV0, a, len));

    /* mremap shrink in place */
    unsigned char *b = mremap(a, len, 4 * pg, 0);
    if (b == MAP_FAILED)
        die("mremap shrink");
    check(b == a, "mremap shrink stays in place");
    check(!mapped(a + 4 * pg, pg), "shrunk tail unmapped");
    printf("after shrink checksum: %016llx\n", (unsigned long long)fnv(FNV0, b, 4 * pg));
    munmap(b, 4 * pg);

    /* mremap grow in place: reserve 8 pages, keep only the first one */
    unsigned char *c = mmap(NULL, 8 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (c == MAP_FAILED)
        die("mmap reserve");
    if (munmap(c + pg, 7 * pg) != 0)
        die("munmap tail");
    memset(c, 0xab, pg);
    unsigned char *d = mremap(c, pg, 4 * pg, 0);
    if (d == MAP_FAILED)
        die("mremap grow in place");
    check(d == c, "mremap grow (no MAYMOVE) stays in place");
    int keep = 1;
    for (long i = 0; i < pg; i++)
        keep &= d[i] == 0xab;
    zero = 1;
    for (long i = pg; i < 4 * pg; i++)
        zero &= d[i] == 0;
    check(keep && zero, "grown mapping keeps data, new pages zero");

    /* mremap that must move: the page right after the range is still mapped */
    unsigned char *e = mmap(NULL, 2 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (e == MAP_FAILED)
        die("mmap 2 pages");
    for (long i = 0; i < 2 * pg; i++)
        e[i] = (unsigned char)(i ^ 0x3c);
    errno = 0;
    void *r = mremap(e, pg, 4 * pg, 0);
    check(r == MAP_FAILED && errno == ENOMEM, "mremap grow blocked without MAYMOVE fails ENOMEM");
    unsigned char *f = mremap(e, pg, 4 * pg, MREMAP_MAYMOVE);
    if (f == MAP_FAILED)
        die("mremap MAYMOVE");
    check(f != e, "mremap MAYMOVE moved");
    check(!mapped(e, pg), "old range unmapped after move");
    check(mapped(e + pg, pg), "untouched neighbour page still mapped");
    keep = 1;
    for (long i = 0; i < pg; i++)
        keep &= f[i] == (unsigned char)(i ^ 0x3c);
    check(keep, "moved data preserved");
    memset(f + pg, 0x11, 3 * pg);
    printf("moved mapping checksum: %016llx\n", (unsigned long long)fnv(FNV0, f, 4 * pg));
    munmap(f, 4 * pg);
    munmap(e + pg, pg);
    munmap(d, 4 * pg);

    /* mprotect round trip */
    unsigned char *m = mmap(NULL, 3 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        die("mmap for mprotect");
    memset(m, 0x42, 3 * pg);
    if (mprotect(m, 3 * pg, PROT_READ) != 0)
        die("mprotect R");
    uint64_t hr = fnv(FNV0, m, 3 * pg);
    if (mprotect(m + pg, pg, PROT_NONE) != 0)
        die("mprotect NONE");
    if (mprotect(m, 3 * pg, PROT_READ | PROT_WRITE) != 0)
        die("mprotect RW");
    m[pg] = 0x43;
    m[pg] = 0x42;
    check(fnv(FNV0, m, 3 * pg) == hr, "data survives mprotect R -> NONE -> RW");
    printf("mprotect data checksum: %016llx\n", (unsigned long long)hr);
    errno = 0;
    check(mprotect(m + 1, pg, PROT_READ) != 0 && errno == EINVAL, "mprotect unaligned fails EINVAL");

    /* punch a hole with munmap, then MAP_FIXED a fresh zero page into it */
    if (munmap(m + pg, pg) != 0)
        die("munmap middle");
    check(mapped(m, pg) && !mapped(m + pg, pg) && mapped(m + 2 * pg, pg), "munmap punched a hole");
    unsigned char *fx = mmap(m + pg, pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    check(fx == m + pg && fx[0] == 0 && fx[pg - 1] == 0, "MAP_FIXED refills the hole with zeros");
    /* MAP_FIXED over existing data replaces it */
    fx = mmap(m, pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    check(fx == m && m[0] == 0 && m[2 * pg] == 0x42, "MAP_FIXED over data replaces only its range");
    munmap(m, 3 * pg);

    errno = 0;
    check(mmap(NULL, pg, PROT_READ, MAP_PRIVATE, -1, 0) == MAP_FAILED && errno == EBADF,
          "file mmap with fd -1 fails EBADF");
}

/* ---- phase 3: private file mapping of our own executable ----------------- */

static void phase_file(const char *self)
{
    int fd = open(self, O_RDONLY);
    if (fd < 0)
        die("open argv[0]");
    struct stat st;
    if (fstat(fd, &st) != 0)
        die("fstat argv[0]");
    size_t size = (size_t)st.st_size;

    unsigned char *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED)
        die("mmap argv[0]");
    check(memcmp(map, "\177ELF", 4) == 0, "mapped file starts with ELF magic");
    unsigned char *copy = malloc(size);
    if (!copy)
        die("malloc copy");
    size_t got = 0;
    while (got < size) {
        ssize_t n = pread(fd, copy + got, size - got, (off_t)got);
        if (n <= 0)
            die("pread argv[0]");
        got += (size_t)n;
    }
    check(memcmp(map, copy, size) == 0, "file mmap matches pread");
    printf("executable checksum: %016llx (%zu bytes)\n",
           (unsigned long long)fnv(FNV0, map, size), size);
    /* the bytes past EOF in the last page read as zero */
    size_t tail = (size_t)((pg - (long)(size % pg)) % pg);
    int zero = 1;
    for (size_t i = 0; i < tail; i++)
        zero &= map[size + i] == 0;
    check(zero, "last page zero-filled past EOF");
    munmap(map, size);

    /* offset mapping, writable but private: writes never reach the file */
    if (size > 2 * (size_t)pg) {
        unsigned char *w = mmap(NULL, pg, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, pg);
        if (w == MAP_FAILED)
            die("mmap offset");
        check(memcmp(w, copy + pg, pg) == 0, "offset mapping matches file");
        memset(w, 0xee, 128);
        unsigned char again[128];
        if (pread(fd, again, sizeof again, pg) != (ssize_t)sizeof again)
            die("pread again");
        check(memcmp(again, copy + pg, sizeof again) == 0, "private write not visible in file");
        munmap(w, pg);
    }
    errno = 0;
    check(mmap(NULL, pg, PROT_READ, MAP_PRIVATE, fd, 1) == MAP_FAILED && errno == EINVAL,
          "unaligned file offset fails EINVAL");
    free(copy);
    close(fd);
}

int main(int argc, char **argv)
{
    long ops = argc > 1 ? atol(argv[1]) : 20000;
    pg = sysconf(_SC_PAGESIZE);
    printf("page size: %ld\n", pg);
    phase_malloc(ops);
    phase_mmap();
    phase_file(argv[0]);
    printf("mm_stress: %s\n", failures ? "FAILED" : "all ok");
    return failures ? 1 : 0;
}
