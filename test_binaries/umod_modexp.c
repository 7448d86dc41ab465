/* umod_modexp: square-and-multiply modular exponentiation with a secret
 * exponent and a 64-bit modulus.  The modular multiplication
 * (unsigned __int128)r * b % m is a 64x64->128 `mul` and a call to the
 * compiler helper __umodti3 (libgcc), so the secret arm of the exponent-bit
 * branch contains a call: the shape every bignum library has (a multiply or
 * a reduction routine called under a secret bit).
 *
 * Usage: umod_modexp EXP [MOD]
 *   EXP  the secret exponent: exactly 16 hexadecimal digits (8 bytes,
 *        big-endian, no 0x), e.g. 0123456789abcdef
 *   MOD  public modulus, decimal, 2..2^64-1 (default 2^64 - 59, prime)
 *   Computes b^EXP mod MOD for 4 fixed public bases and prints
 *   "umod_modexp: e=<hex> m=<dec> r=<hex>,<hex>,<hex>,<hex>".  Exit 0; a
 *   malformed argument prints a usage line on stderr and exits 2.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "secret_io.h"

__attribute__((noipa)) uint64_t modexp(uint64_t b, uint64_t e, uint64_t m)
{
    uint64_t r = 1 % m;
    for (int i = 63; i >= 0; i--) {
        r = (unsigned __int128)r * r % m;       /* square: always */
        if ((e >> i) & 1)                       /* secret exponent bit */
            r = (unsigned __int128)r * b % m;   /* multiply: a call to __umodti3 */
    }
    return r;
}

static void usage(void)
{
    fputs("usage: umod_modexp EXP(16 hex digits) [MOD(decimal, >= 2)]\n", stderr);
    exit(2);
}

int main(int argc, char **argv)
{
    static const uint64_t bases[4] = {2, 65537, 0x9e3779b97f4a7c15ull, 0xfffffffffffffff0ull};
    uint8_t eb[8];
    char line[128], *p = line;
    if (argc < 2 || argc > 3 || parse_hex(argv[1], eb, 8) != 0)
        usage();
    uint64_t e = 0;
    for (int i = 0; i < 8; i++)
        e = e << 8 | eb[i];
    uint64_t m = 18446744073709551557ull;
    if (argc > 2) {
        char *end;
        unsigned long long v = strtoull(argv[2], &end, 10);
        if (*argv[2] == '\0' || *end != '\0' || v < 2)
            usage();
        m = v;
    }
    for (int i = 0; i < 4; i++) {
        p = put_hex(p, modexp(bases[i] % m, e, m), 16);
        *p++ = i < 3 ? ',' : '\0';
    }
    printf("umod_modexp: e=%s m=%llu r=%s\n", argv[1], (unsigned long long)m, line);
    return 0;
}
