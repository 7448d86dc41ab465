/* fp_secret: floating-point arithmetic on a secret that goes subnormal for
 * some values.  fp_dot(x, scale, w, n) = sum of x * w[i] * scale, with the
 * secret x = k (a 16-bit integer, as a double), public weights w[i] in
 * [0.5, 2) and scale = 2^-1036: each product k * w[i] * 2^-1036 is
 * subnormal (below 2^-1022 = DBL_MIN) exactly when k * w[i] < 2^14, so for
 * small k the products and the partial sums are subnormal, which is slow on
 * many processors (microcode assists).  All subnormal arithmetic happens in
 * fp_dot's loop; main only converts k to double (exact, normal).
 *
 * Usage: fp_secret K
 *   K  the secret: exactly 4 hexadecimal digits (2 bytes, big-endian)
 *   Prints "fp_secret: k=<hex> scaled=<%a> unscaled=<%a>", where
 *   scaled = fp_dot(k, 2^-1036, w, 8) and unscaled = fp_dot(k, 1.0, w, 8)
 *   (only normal numbers, or zero).  %a formatting is exact, and every
 *   product and partial sum is exact (at most 24 significant bits, lowest
 *   bit at or above 2^-1040), so both values are deterministic and do not
 *   depend on rounding.  Subnormal intermediates occur exactly when
 *   0 < k < 0x8000 (the first product, k * 0.5 * 2^-1036, is subnormal
 *   then); for k <= 0x60f the result itself is subnormal too.  Under
 *   flush-to-zero / denormals-are-zero (MXCSR FTZ|DAZ, e.g. leakdbt's
 *   fp-ftz-daz pass) `scaled` therefore changes for 0 < k < 0x8000 and is
 *   unchanged for k >= 0x8000; `unscaled` never changes.
 *   Exit 0; a malformed argument prints a usage line on stderr and exits 2.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "secret_io.h"

__attribute__((noipa)) double fp_dot(double x, double scale, const double *w, int n)
{
    double acc = 0.0;
    for (int i = 0; i < n; i++)
        acc += x * w[i] * scale;        /* subnormal product and sum for small x */
    return acc;
}

static void usage(void)
{
    fputs("usage: fp_secret K(4 hex digits)\n", stderr);
    exit(2);
}

int main(int argc, char **argv)
{
    static const double w[8] = {
        0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 1.875, 1.9375,
    };
    uint8_t kb[2];
    char hk[5];
    if (argc != 2 || parse_hex(argv[1], kb, 2) != 0)
        usage();
    unsigned k = (unsigned)kb[0] << 8 | kb[1];
    double scaled = fp_dot((double)k, 0x1p-1036, w, 8);
    double unscaled = fp_dot((double)k, 1.0, w, 8);
    put_hex(hk, k, 4);
    hk[4] = '\0';
    printf("fp_secret: k=%s scaled=%a unscaled=%a\n", hk, scaled, unscaled);
    return 0;
}
