/* plt_call: square-and-multiply whose secret arm calls a function of a
 * shared library (libmulmod.so, test_binaries/libmulmod.c), the shape of a
 * bignum library calling its multiply-and-reduce routine in another module.
 *
 * modexp_plt's secret arm calls mulmod through the PLT (lazily bound: the
 * first call goes through ld.so); modexp_got's calls mulmod_got through its
 * GOT slot (`call [rip + GOT]`, declared noplt, as -fno-plt compiles every
 * call; bound when the program is loaded).  The squarings, outside the
 * arms, are computed inline so that the arms' calls are the first calls of
 * their functions.  Dynamic build only (make build/dynamic/plt_call, which
 * builds build/dynamic/libmulmod.so first; the rpath is $ORIGIN).
 *
 * Usage: plt_call EXP
 *   EXP  the secret exponent: exactly 16 hexadecimal digits (8 bytes,
 *        big-endian), e.g. 0123456789abcdef
 *   Prints "plt_call: e=<hex> plt=<hex>,<hex> got=<hex>,<hex>": b^EXP mod m
 *   for 2 public bases, m = 2^64 - 59, computed by each function.  Exit 0;
 *   a malformed argument prints a usage line on stderr and exits 2.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "secret_io.h"

uint64_t mulmod(uint64_t a, uint64_t b, uint64_t m);
uint64_t mulmod_got(uint64_t a, uint64_t b, uint64_t m) __attribute__((noplt));

/* a * a mod m without a call or a division: shift-and-subtract over the
 * 128-bit square, branch-free (the squarings run on every bit) */
static inline uint64_t sqrmod(uint64_t a, uint64_t m)
{
    unsigned __int128 p = (unsigned __int128)a * a;
    uint64_t r = 0;
    for (int i = 127; i >= 0; i--) {
        unsigned __int128 t = ((unsigned __int128)r << 1) | (uint64_t)((p >> i) & 1);
        uint64_t ge = -(uint64_t)(t >= m);
        r = (uint64_t)(t - (m & ge));
    }
    return r;
}

__attribute__((noipa)) uint64_t modexp_plt(uint64_t b, uint64_t e, uint64_t m)
{
    uint64_t r = 1 % m;
    for (int i = 63; i >= 0; i--) {
        r = sqrmod(r, m);
        if ((e >> i) & 1)                       /* secret exponent bit */
            r = mulmod(r, b, m);                /* through the PLT */
    }
    return r;
}

__attribute__((noipa)) uint64_t modexp_got(uint64_t b, uint64_t e, uint64_t m)
{
    uint64_t r = 1 % m;
    for (int i = 63; i >= 0; i--) {
        r = sqrmod(r, m);
        if ((e >> i) & 1)                       /* secret exponent bit */
            r = mulmod_got(r, b, m);            /* call [rip + GOT] */
    }
    return r;
}

int main(int argc, char **argv)
{
    static const uint64_t bases[2] = {2, 0x9e3779b97f4a7c15ull};
    const uint64_t m = 18446744073709551557ull;
    uint8_t eb[8];
    char line[128], *p = line;
    if (argc != 2 || parse_hex(argv[1], eb, 8) != 0) {
        fputs("usage: plt_call EXP(16 hex digits)\n", stderr);
        return 2;
    }
    uint64_t e = 0;
    for (int i = 0; i < 8; i++)
        e = e << 8 | eb[i];
    p += sprintf(p, "plt_call: e=");
    p = put_hex(p, e, 16);
    p += sprintf(p, " plt=");
    for (int i = 0; i < 2; i++) {
        p = put_hex(p, modexp_plt(bases[i], e, m), 16);
        *p++ = i < 1 ? ',' : ' ';
    }
    p += sprintf(p, "got=");
    for (int i = 0; i < 2; i++) {
        p = put_hex(p, modexp_got(bases[i], e, m), 16);
        *p++ = i < 1 ? ',' : '\0';
    }
    puts(line);
    return 0;
}
