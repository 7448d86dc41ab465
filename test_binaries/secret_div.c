/* secret_div: integer division by a secret divisor, in 32 and 64 bits,
 * unsigned and signed.  Each divmod_* function computes q = x / s and
 * r = x % s with one `div`/`idiv` instruction, whose latency depends on the
 * operands on many processors.
 *
 * Usage: secret_div DIVISOR
 *   DIVISOR  the secret: exactly 16 hexadecimal digits (8 bytes, big-endian,
 *            no 0x).  The 64-bit functions divide by it as uint64_t /
 *            int64_t, the 32-bit ones by its low 32 bits as uint32_t /
 *            int32_t.  A divisor (or low half) of zero is replaced by 1.
 *   Divides 6 fixed public dividends (none is INT32_MIN or INT64_MIN, so a
 *   signed divisor of -1 cannot overflow) with each of the four functions
 *   and prints a line with the divisor, then one line per function,
 *   "secret_div: <fn> q:r q:r ..." with the quotients and remainders in
 *   fixed-width hex (8 digits for 32 bits, 16 for 64; signed values as
 *   two's complement).
 *   Exit 0; a malformed argument prints a usage line on stderr and exits 2.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "secret_io.h"

__attribute__((noipa)) uint32_t divmod_u32(uint32_t x, uint32_t s, uint32_t *r)
{
    *r = x % s;
    return x / s;
}

__attribute__((noipa)) int32_t divmod_s32(int32_t x, int32_t s, int32_t *r)
{
    *r = x % s;
    return x / s;
}

__attribute__((noipa)) uint64_t divmod_u64(uint64_t x, uint64_t s, uint64_t *r)
{
    *r = x % s;
    return x / s;
}

__attribute__((noipa)) int64_t divmod_s64(int64_t x, int64_t s, int64_t *r)
{
    *r = x % s;
    return x / s;
}

static void usage(void)
{
    fputs("usage: secret_div DIVISOR(16 hex digits)\n", stderr);
    exit(2);
}

#define N 6

int main(int argc, char **argv)
{
    static const uint64_t dividends[N] = {
        0, 1, 1000000007, 0x7fffffffffffffffull, 0xfedcba9876543210ull, 0x8000000000000001ull,
    };
    uint8_t sb[8];
    char line[4][N * 34 + 1], hs[17];
    if (argc != 2 || parse_hex(argv[1], sb, 8) != 0)
        usage();
    uint64_t s = 0;
    for (int i = 0; i < 8; i++)
        s = s << 8 | sb[i];
    uint64_t s64 = s | (s == 0);                        /* 0 -> 1, without a branch */
    uint32_t s32 = (uint32_t)s | ((uint32_t)s == 0);
    for (int i = 0; i < N; i++) {
        uint64_t x = dividends[i];
        uint32_t ur32;
        int32_t sr32;
        uint64_t ur64;
        int64_t sr64;
        /* low halves for 32 bits: 0, 1, 1000000007, -1, 0x76543210, 1 -- never INT32_MIN */
        uint32_t uq32 = divmod_u32((uint32_t)x, s32, &ur32);
        int32_t sq32 = divmod_s32((int32_t)(uint32_t)x, (int32_t)s32, &sr32);
        uint64_t uq64 = divmod_u64(x, s64, &ur64);
        int64_t sq64 = divmod_s64((int64_t)x, (int64_t)s64, &sr64);
        char *p;
        p = line[0] + 18 * i; *p++ = ' '; p = put_hex(p, uq32, 8); *p++ = ':'; put_hex(p, ur32, 8);
        p = line[1] + 18 * i; *p++ = ' '; p = put_hex(p, (uint32_t)sq32, 8); *p++ = ':';
        put_hex(p, (uint32_t)sr32, 8);
        p = line[2] + 34 * i; *p++ = ' '; p = put_hex(p, uq64, 16); *p++ = ':'; put_hex(p, ur64, 16);
        p = line[3] + 34 * i; *p++ = ' '; p = put_hex(p, (uint64_t)sq64, 16); *p++ = ':';
        put_hex(p, (uint64_t)sr64, 16);
    }
    line[0][18 * N] = line[1][18 * N] = line[2][34 * N] = line[3][34 * N] = '\0';
    put_hex(hs, s, 16);
    hs[16] = '\0';
    printf("secret_div: divisor=%s\n", hs);
    printf("secret_div: divmod_u32%s\n", line[0]);
    printf("secret_div: divmod_s32%s\n", line[1]);
    printf("secret_div: divmod_u64%s\n", line[2]);
    printf("secret_div: divmod_s64%s\n", line[3]);
    return 0;
}
