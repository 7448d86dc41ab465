/* gcry_cmp: libgcrypt 1.10's gcry_mpi_cmp comparing a secret bignum with public
 * bounds (as a private scalar is range-checked).  do_mpi_cmp compares the limb
 * counts, then scans the limbs from the top (_gcry_mpih_cmp) and returns at the
 * first difference; libgcrypt's constant-time comparisons are internal
 * (mpih_cmp_ui and the ct helpers of 1.10), not this API.
 *
 * Usage: gcry_cmp X      X: 64 hex digits (32 bytes, big-endian)
 * The secret is 2^256 + X (its limb count never depends on it), compared with
 * three public 257-bit numbers; prints "gcry_cmp: cmp=<a>,<b>,<c>" (-1, 0 or 1
 * each). */
#include <gcrypt.h>

#include "corpus_io.h"

int main(int argc, char **argv)
{
    static const char *bounds[3] = {
        "18000000000000000000000000000000000000000000000000000000000000000",
        "1ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "10000000000000000000000000000000000000000000000000000000000000001",
    };
    uint8_t xb[33];
    int c[3];
    gcry_mpi_t x, y;
    if (argc != 2 || parse_hex(argv[1], xb + 1, 32) != 0)
        corpus_usage("gcry_cmp X(64 hex digits)");
    xb[0] = 1;
    gcry_check_version(NULL);
    if (gcry_mpi_scan(&x, GCRYMPI_FMT_USG, xb, sizeof xb, NULL) != 0)
        return 1;
    for (int i = 0; i < 3; i++) {
        if (gcry_mpi_scan(&y, GCRYMPI_FMT_HEX, bounds[i], 0, NULL) != 0)
            return 1;
        c[i] = gcry_mpi_cmp(x, y);
        c[i] = (c[i] > 0) - (c[i] < 0);
        gcry_mpi_release(y);
    }
    printf("gcry_cmp: cmp=%d,%d,%d\n", c[0], c[1], c[2]);
    gcry_mpi_release(x);
    return 0;
}
