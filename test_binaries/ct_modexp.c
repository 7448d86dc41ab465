/* ct_modexp: square-and-multiply modular exponentiation with a secret
 * exponent and a 32-bit modulus, so that the modular multiplication is
 * inline: (uint64_t)r * b % m is a 64-bit mul followed by a 64-bit `div`.
 * modexp() branches on every exponent bit: the multiply (and its `div`)
 * runs only when the bit is set -- the classic exponent leak.
 *
 * Usage: ct_modexp EXP [MOD]
 *   EXP  the secret exponent: exactly 16 hexadecimal digits (8 bytes,
 *        big-endian, no 0x), e.g. 0123456789abcdef
 *   MOD  public modulus, decimal, 2..4294967295 (default 4294967291 =
 *        2^32 - 5, prime)
 *   Computes b^EXP mod MOD for 8 fixed public bases (8 x 64 squarings, one
 *   multiply per set exponent bit) and prints
 *   "ct_modexp: e=<hex> m=<dec> r=<hex>,<hex>,...".  Exit 0; a malformed
 *   argument prints a usage line on stderr and exits 2.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "secret_io.h"

__attribute__((noipa)) uint32_t modexp(uint32_t b, uint64_t e, uint32_t m)
{
    uint32_t r = 1 % m;
    for (int i = 63; i >= 0; i--) {
        r = (uint64_t)r * r % m;                /* square: always */
        if ((e >> i) & 1)                       /* secret exponent bit */
            r = (uint64_t)r * b % m;            /* multiply: only when set */
    }
    return r;
}

static void usage(void)
{
    fputs("usage: ct_modexp EXP(16 hex digits) [MOD(decimal, >= 2)]\n", stderr);
    exit(2);
}

int main(int argc, char **argv)
{
    static const uint32_t bases[8] = {
        2, 3, 65537, 0x12345678, 0x9e3779b9, 0xdeadbeef, 0x7fffffff, 0xfffffff0,
    };
    uint8_t eb[8];
    char line[128], *p = line;
    if (argc < 2 || argc > 3 || parse_hex(argv[1], eb, 8) != 0)
        usage();
    uint64_t e = 0;
    for (int i = 0; i < 8; i++)
        e = e << 8 | eb[i];
    uint32_t m = 4294967291u;
    if (argc > 2) {
        char *end;
        unsigned long long v = strtoull(argv[2], &end, 10);
        if (*argv[2] == '\0' || *end != '\0' || v < 2 || v > 0xffffffffull)
            usage();
        m = (uint32_t)v;
    }
    p = put_hex(p, e, 16);
    *p++ = ' ';
    for (int i = 0; i < 8; i++) {
        p = put_hex(p, modexp(bases[i] % m, e, m), 8);
        *p++ = i < 7 ? ',' : '\0';
    }
    /* line = "<e> <r0>,...,<r7>" */
    printf("ct_modexp: e=%.16s m=%u r=%s\n", line, m, line + 17);
    return 0;
}
