/* gmp_powm: GMP 6.2's mpz_powm with a secret exponent.  GMP documents
 * mpz_powm as not side-channel silent and offers mpz_powm_sec for secret
 * exponents ("Low-level functions for cryptography").
 *
 * Usage: gmp_powm EXP      EXP: 64 hex digits (32 bytes, big-endian)
 * The exponent is 2^256 + EXP (as in ../ossl_modexp.c: its length never
 * depends on the secret); base and modulus are public 256-bit numbers
 * (M = 2^256 - 189).  Prints "gmp_powm: r=<64 hex>".  mpn_powm's sliding
 * window branches on exponent bits and indexes its table of powers with the
 * window's value. */
#include <gmp.h>

#include "corpus_io.h"

static const uint8_t MODULUS[32] = {
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x43,
};
static const uint8_t BASE[32] = {
    0x24, 0x3f, 0x6a, 0x88, 0x85, 0xa3, 0x08, 0xd3, 0x13, 0x19, 0x8a, 0x2e, 0x03, 0x70, 0x73, 0x44,
    0xa4, 0x09, 0x38, 0x22, 0x29, 0x9f, 0x31, 0xd0, 0x08, 0x2e, 0xfa, 0x98, 0xec, 0x4e, 0x6c, 0x89,
};

int main(int argc, char **argv)
{
    uint8_t eb[33], rb[32] = {0};
    char out[65];
    size_t n;
    mpz_t b, e, m, r;
    if (argc != 2 || parse_hex(argv[1], eb + 1, 32) != 0)
        corpus_usage("gmp_powm EXP(64 hex digits)");
    eb[0] = 1;                                  /* the public bit 2^256 */
    mpz_inits(b, e, m, r, NULL);
    mpz_import(m, 32, 1, 1, 1, 0, MODULUS);
    mpz_import(b, 32, 1, 1, 1, 0, BASE);
    mpz_import(e, 33, 1, 1, 1, 0, eb);
    mpz_powm(r, b, e, m);
    /* r < M < 2^256: export into the low end of 32 bytes (public length: r's
     * size in limbs is 4 but for a 2^-64 chance) */
    size_t words = mpz_size(r);
    mpz_export(rb + 32 - 8 * words, &n, 1, 8, 1, 0, r);
    hex_bytes(rb, 32, out);
    printf("gmp_powm: r=%s\n", out);
    mpz_clears(b, e, m, r, NULL);
    return 0;
}
