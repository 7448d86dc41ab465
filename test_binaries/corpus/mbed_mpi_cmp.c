/* mbed_mpi_cmp: Mbed TLS 2.28's mbedtls_mpi_cmp_mpi comparing a secret
 * bignum with public bounds (as a private key is checked against the group
 * order).  Mbed TLS documents mbedtls_mpi_lt_mpi_ct as the constant-time
 * comparison; mbedtls_mpi_cmp_mpi scans limbs from the top and returns at
 * the first difference.
 *
 * Usage: mbed_mpi_cmp X      X: 64 hex digits (32 bytes, big-endian)
 * The secret is 2^256 + X (its limb count never depends on it), compared
 * with three public 257-bit numbers; prints "mbed_mpi_cmp: cmp=<a>,<b>,<c>"
 * (-1, 0 or 1 each). */
#include <mbedtls/bignum.h>

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
    mbedtls_mpi x, y;
    if (argc != 2 || parse_hex(argv[1], xb + 1, 32) != 0)
        corpus_usage("mbed_mpi_cmp X(64 hex digits)");
    xb[0] = 1;
    mbedtls_mpi_init(&x);
    mbedtls_mpi_init(&y);
    if (mbedtls_mpi_read_binary(&x, xb, sizeof xb) != 0)
        return 1;
    for (int i = 0; i < 3; i++) {
        if (mbedtls_mpi_read_string(&y, 16, bounds[i]) != 0)
            return 1;
        c[i] = mbedtls_mpi_cmp_mpi(&x, &y);
    }
    printf("mbed_mpi_cmp: cmp=%d,%d,%d\n", c[0], c[1], c[2]);
    mbedtls_mpi_free(&x);
    mbedtls_mpi_free(&y);
    return 0;
}
