/* modexp: a branchy, division-heavy benchmark -- square-and-multiply modular
 * exponentiation with a 64-bit modulus.  mulmod uses unsigned __int128
 * multiplication and %, which gcc compiles to mul + a call to libgcc's
 * __umodti3; with a 64-bit divisor that executes the 128/64 `div`
 * instruction.  Each exponent bit is a data-dependent branch.
 *
 * Usage: modexp [ITERS]        ITERS modpow calls, default 300000
 *   Prints "fermat check: ok" and "modexp(ITERS) = <hex>".  Exit 0
 *   (1 if the Fermat check fails).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define P 0xffffffffffffffc5ull         /* 2^64 - 59, the largest 64-bit prime */

__attribute__((noipa)) uint64_t mulmod(uint64_t a, uint64_t b, uint64_t m)
{
    return (uint64_t)((unsigned __int128)a * b % m);
}

static uint64_t modpow(uint64_t base, uint64_t exp, uint64_t m)
{
    uint64_t r = 1 % m;
    base %= m;
    while (exp) {
        if (exp & 1)                    /* branch on every exponent bit */
            r = mulmod(r, base, m);
        base = mulmod(base, base, m);
        exp >>= 1;
    }
    return r;
}

int main(int argc, char **argv)
{
    long iters = argc > 1 ? atol(argv[1]) : 300000;

    /* Fermat: a^(p-1) = 1 (mod p) for prime p */
    int fermat = modpow(2, P - 1, P) == 1 && modpow(0x123456789abcdefull, P - 1, P) == 1 &&
                 modpow(3, P - 2, P) * (unsigned __int128)3 % P == 1;
    printf("fermat check: %s\n", fermat ? "ok" : "FAILED");

    uint64_t acc = 0x243f6a8885a308d3ull, x = 0x13198a2e03707344ull;
    for (long i = 0; i < iters; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        acc ^= modpow(acc + (uint64_t)i, x, i & 1 ? P : x | 1);
    }
    printf("modexp(%ld) = %016llx\n", iters, (unsigned long long)acc);
    return fermat ? 0 : 1;
}
