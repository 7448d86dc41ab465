/* public_mode: a keyed mixing loop whose secret arm calls a routine that branches on a
 * public mode (issue 15: "branches on public values stay") and on the secret state.
 *
 * For each of the 64 key bits, round_() steps the state once, and once more (with the bit
 * index mixed in) when the bit is set: the secret arm holds a call to step().  step()
 * branches on the public mode (the contract's `public` registers: analyze finds the
 * register that carries it) and on a bit of the state, which depends on the key through
 * the path taken: analyze must not call that one public.
 *
 * Usage: public_mode KEY MODE
 *   KEY   the secret: exactly 16 hexadecimal digits (8 bytes, big-endian, no 0x)
 *   MODE  public, decimal, 0..4294967295
 *   Prints "public_mode: mode=<dec> r=<16 hex digits>".  Exit 0; a malformed argument
 *   prints a usage line on stderr and exits 2.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "secret_io.h"

__attribute__((noipa)) uint64_t step(uint64_t x, uint64_t mode)
{
    if (x & 0x100) {                /* secret: the state */
        x ^= x >> 7;
        x *= 0xff51afd7ed558ccdull;
    }
    if (mode & 1) {                 /* public */
        x = x * 0x9e3779b97f4a7c15ull;
        x ^= x >> 29;
    } else {
        x = x * 0xbf58476d1ce4e5b9ull + 7;
    }
    if (mode > 8) {                 /* public */
        x ^= x >> 31;
        x *= 0x94d049bb133111ebull;
    }
    return x;
}

/* One round: the key bit decides whether step() runs (the secret arm holds the call). */
__attribute__((noipa)) uint64_t round_(uint64_t r, uint64_t bit, uint64_t i, uint64_t mode)
{
    r = r * 6364136223846793005ull + 1442695040888963407ull;
    if (bit)                        /* secret key bit */
        r = step(r ^ i, mode);
    return r ^ (r >> 13);
}

__attribute__((noipa)) uint64_t run(uint64_t key, uint64_t mode)
{
    uint64_t r = 1;
    for (int i = 63; i >= 0; i--)
        r = round_(r, (key >> i) & 1, (uint64_t)i, mode);
    return r;
}

static void usage(void)
{
    fputs("usage: public_mode KEY(16 hex digits) MODE(decimal)\n", stderr);
    exit(2);
}

int main(int argc, char **argv)
{
    uint8_t kb[8];
    char line[64], *p = line;
    if (argc != 3 || parse_hex(argv[1], kb, 8) != 0)
        usage();
    char *end;
    unsigned long long mode = strtoull(argv[2], &end, 10);
    if (*argv[2] == '\0' || *end != '\0' || mode > 0xffffffffull)
        usage();
    uint64_t key = 0;
    for (int i = 0; i < 8; i++)
        key = key << 8 | kb[i];
    p = put_hex(p, run(key, mode), 16);
    *p = '\0';
    printf("public_mode: mode=%llu r=%s\n", mode, line);
    return 0;
}
