/* ossl_powm1024: a long run of real library code — OpenSSL's BN_mod_exp_mont
 * (libcrypto from Debian's libssl-dev) with a secret 1024-bit exponent and a
 * public 1024-bit modulus: several million guest instructions per run, for
 * checking long scopes (issue 16; docs/benchmarks.md "Long scopes").
 *
 * Usage: ossl_powm1024 EXP
 *   EXP   the secret: exactly 256 hexadecimal digits (128 bytes, big-endian).
 *         The exponent is 2^1024 + EXP, so that its length never depends on
 *         the secret (as in ossl_modexp.c).
 *   Computes B^(2^1024 + EXP) mod M for public B and odd M (1024 bits each,
 *   derived from a fixed linear congruential sequence, top bits set), with a
 *   BN_MONT_CTX set up before the secret is touched, and prints
 *   "ossl_powm1024: r=<256 hex>".  BN_mod_exp_mont is a sliding-window
 *   exponentiation that branches on exponent bits and picks precomputed
 *   powers by the window's value: it leaks the exponent.
 *   Exit 0; a malformed argument prints a usage line on stderr and exits 2,
 *   an OpenSSL failure exits 1.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <openssl/bn.h>

#include "secret_io.h"

#define BYTES 128

static void fail(const char *what)
{
    fprintf(stderr, "ossl_powm1024: %s failed\n", what);
    exit(1);
}

/* Public constants: bytes of a fixed LCG, top bit set (and low bit for M). */
static void fill(uint8_t *out, uint32_t seed, int odd)
{
    for (int i = 0; i < BYTES; i++) {
        seed = seed * 1103515245u + 12345u;
        out[i] = (uint8_t)(seed >> 16);
    }
    out[0] |= 0x80;
    if (odd)
        out[BYTES - 1] |= 1;
}

int main(int argc, char **argv)
{
    uint8_t eb[BYTES + 1], mb[BYTES], bb[BYTES], rb[BYTES];
    char rhex[2 * BYTES + 1];

    if (argc != 2 || parse_hex(argv[1], eb + 1, BYTES) != 0) {
        fputs("usage: ossl_powm1024 EXP(256 hex digits)\n", stderr);
        return 2;
    }
    eb[0] = 1;                                  /* the public bit 2^1024 */
    fill(mb, 0x5eed1u, 1);
    fill(bb, 0xba5eu, 0);
    bb[0] &= 0x7f;                              /* B < M */

    BN_CTX *bnctx = BN_CTX_new();
    BN_MONT_CTX *mont = BN_MONT_CTX_new();
    BIGNUM *m = BN_bin2bn(mb, BYTES, NULL);
    BIGNUM *b = BN_bin2bn(bb, BYTES, NULL);
    BIGNUM *r = BN_new();
    if (bnctx == NULL || mont == NULL || m == NULL || b == NULL || r == NULL)
        fail("allocation");
    if (!BN_MONT_CTX_set(mont, m, bnctx))       /* public set-up */
        fail("BN_MONT_CTX_set");
    BIGNUM *e = BN_bin2bn(eb, sizeof eb, NULL); /* eb[0] != 0: no byte skipped */
    if (e == NULL)
        fail("BN_bin2bn");
    if (!BN_mod_exp_mont(r, b, e, m, bnctx, mont))
        fail("BN_mod_exp_mont");
    if (BN_bn2binpad(r, rb, BYTES) != BYTES)
        fail("BN_bn2binpad");
    for (int i = 0; i < BYTES; i++)
        put_hex(rhex + 2 * i, rb[i], 2);
    rhex[2 * BYTES] = '\0';
    printf("ossl_powm1024: r=%s\n", rhex);

    BN_clear_free(e);
    BN_free(r);
    BN_free(b);
    BN_free(m);
    BN_MONT_CTX_free(mont);
    BN_CTX_free(bnctx);
    return 0;
}
