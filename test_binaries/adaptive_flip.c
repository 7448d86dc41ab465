/* adaptive_flip: ct_modexp's modexp() called in a loop while the program watches the mode
 * page of its adaptive hardened build (docs/harden.md), for the test that flips the monitor's
 * word while the program runs (tests/integration/test_monitor_flip.py).
 *
 * Usage: adaptive_flip EXP MODE_FILE MAX_ROUNDS
 *   EXP         the secret exponent, 16 hex digits (contracts/ct_modexp.toml applies: the
 *               same modexp, compiled from the same source)
 *   MODE_FILE   the mode file; region 0's entry counters are read from it (u64 at 64: fast
 *               entries, at 72: hardened), summed over every process that maps it
 *   MAX_ROUNDS  bound on the calls of modexp
 *   Calls modexp until this run has seen entries in both modes (fast first, then hardened),
 *   or MAX_ROUNDS calls, then prints
 *   "adaptive_flip: e=<hex> r=<hex> rounds=<n> fast=<n> hardened=<n>", the entries counted
 *   during this run (0 0 when MODE_FILE cannot be mapped, or the program is not hardened).
 *   Exit 0; a malformed argument prints a usage line on stderr and exits 2.
 */
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

/* The very same modexp() as ct_modexp (so its contract's offsets hold): its main is renamed
 * out of the way. */
#define main ct_modexp_main
#include "ct_modexp.c"
#undef main

static uint64_t counter(const volatile uint64_t *page, int index)
{
    return page ? page[index] : 0;
}

int main(int argc, char **argv)
{
    uint8_t eb[8];
    char *end;
    if (argc != 4 || parse_hex(argv[1], eb, 8) != 0)
        usage();
    unsigned long long max_rounds = strtoull(argv[3], &end, 10);
    if (*argv[3] == '\0' || *end != '\0')
        usage();
    uint64_t e = 0;
    for (int i = 0; i < 8; i++)
        e = e << 8 | eb[i];
    const volatile uint64_t *page = NULL;
    int fd = open(argv[2], O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        void *p = mmap(NULL, 4096, PROT_READ, MAP_SHARED, fd, 0);
        close(fd);
        if (p != MAP_FAILED)
            page = p;
    }
    const uint64_t fast0 = counter(page, 8), hard0 = counter(page, 9);
    uint32_t r = modexp(2, e, 4294967291u);
    unsigned long long rounds = 1;
    uint64_t fast = counter(page, 8) - fast0, hard = counter(page, 9) - hard0;
    uint64_t hard_before_fast = fast ? hard : 0;
    for (; rounds < max_rounds; rounds++) {
        fast = counter(page, 8) - fast0;
        hard = counter(page, 9) - hard0;
        if (!fast)
            hard_before_fast = hard;
        else if (hard > hard_before_fast)
            break;  /* a hardened entry after a fast one: the word flipped during this run */
        if (modexp(2, e, 4294967291u) != r)
            return 1;
    }
    fast = counter(page, 8) - fast0;  /* with the last call's entries */
    hard = counter(page, 9) - hard0;
    printf("adaptive_flip: e=%.16s r=%08x rounds=%llu fast=%llu hardened=%llu\n", argv[1],
           (unsigned)r, rounds, (unsigned long long)fast, (unsigned long long)hard);
    return 0;
}
