/* ossl_modexp: OpenSSL's Montgomery modular exponentiation with a secret
 * exponent, in its leaky and its constant-time variant (libcrypto from
 * Debian's libssl-dev, OpenSSL 3.0).
 *
 * Usage: ossl_modexp EXP MODE
 *   EXP   the secret: exactly 64 hexadecimal digits (32 bytes, big-endian).
 *         The exponent is 2^256 + EXP (a 257-bit number whose top bit is a
 *         public 1), so that its length never depends on the secret: BN_bin2bn
 *         strips leading zero bytes and BN_num_bits counts significant bits,
 *         and both would otherwise leak the secret's leading zeros before
 *         the exponentiation starts.
 *   MODE  "leaky": BN_mod_exp_mont, sliding-window exponentiation (window 5
 *         for a 257-bit exponent) that branches on exponent bits
 *         (BN_is_bit_set) and picks the window's precomputed power by its
 *         value (val[wvalue >> 1]);
 *         "ct": BN_mod_exp_mont_consttime, fixed window 5 over all
 *         p->top * 64 = 320 exponent bits, the 32 powers scattered into one
 *         table and gathered with masks (bn_scatter5 / bn_gather5 /
 *         bn_mul_mont_gather5 on x86-64).
 *   Computes B^(2^256 + EXP) mod M with public B and M (256 bits, M =
 *   2^256 - 189, prime) and a BN_MONT_CTX set up from M before the secret
 *   is touched, and prints "ossl_modexp: mode=MODE e=<64 hex> r=<64 hex>".
 *   The exponent is never given the BN_FLG_CONSTTIME flag: with it,
 *   BN_mod_exp_mont would divert to BN_mod_exp_mont_consttime.
 *   Exit 0; a malformed argument prints a usage line on stderr and exits 2,
 *   an OpenSSL failure exits 1.
 *
 * Parsing and printing are branch-free (secret_io.h, BN_bn2binpad), so the
 * only secret-dependent work is inside the exponentiation.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>

#include "secret_io.h"

/* 2^256 - 189, the largest 256-bit prime */
static const uint8_t MODULUS[32] = {
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x43,
};

/* the first 256 fractional bits of pi */
static const uint8_t BASE[32] = {
    0x24, 0x3f, 0x6a, 0x88, 0x85, 0xa3, 0x08, 0xd3, 0x13, 0x19, 0x8a, 0x2e, 0x03, 0x70, 0x73, 0x44,
    0xa4, 0x09, 0x38, 0x22, 0x29, 0x9f, 0x31, 0xd0, 0x08, 0x2e, 0xfa, 0x98, 0xec, 0x4e, 0x6c, 0x89,
};

static void usage(void)
{
    fputs("usage: ossl_modexp EXP(64 hex digits) leaky|ct\n", stderr);
    exit(2);
}

static void fail(const char *what)
{
    fprintf(stderr, "ossl_modexp: %s failed\n", what);
    exit(1);
}

int main(int argc, char **argv)
{
    uint8_t eb[33], rb[32];
    char ehex[65], rhex[65];
    int ct;

    if (argc != 3 || parse_hex(argv[1], eb + 1, 32) != 0)
        usage();
    if (strcmp(argv[2], "leaky") == 0)
        ct = 0;
    else if (strcmp(argv[2], "ct") == 0)
        ct = 1;
    else
        usage();
    eb[0] = 1;                                  /* the public bit 2^256 */

    BN_CTX *bnctx = BN_CTX_new();
    BN_MONT_CTX *mont = BN_MONT_CTX_new();
    BIGNUM *m = BN_bin2bn(MODULUS, sizeof MODULUS, NULL);
    BIGNUM *b = BN_bin2bn(BASE, sizeof BASE, NULL);
    BIGNUM *r = BN_new();
    if (bnctx == NULL || mont == NULL || m == NULL || b == NULL || r == NULL)
        fail("allocation");
    if (!BN_MONT_CTX_set(mont, m, bnctx))       /* public set-up */
        fail("BN_MONT_CTX_set");

    BIGNUM *e = BN_bin2bn(eb, sizeof eb, NULL); /* eb[0] != 0: no byte skipped */
    if (e == NULL)
        fail("BN_bin2bn");

    int ok = ct ? BN_mod_exp_mont_consttime(r, b, e, m, bnctx, mont)
                : BN_mod_exp_mont(r, b, e, m, bnctx, mont);
    if (!ok)
        fail(ct ? "BN_mod_exp_mont_consttime" : "BN_mod_exp_mont");
    if (BN_bn2binpad(r, rb, sizeof rb) != (int)sizeof rb)
        fail("BN_bn2binpad");

    for (int i = 0; i < 32; i++) {
        put_hex(ehex + 2 * i, eb[i + 1], 2);
        put_hex(rhex + 2 * i, rb[i], 2);
    }
    ehex[64] = rhex[64] = '\0';
    printf("ossl_modexp: mode=%s e=%s r=%s\n", ct ? "ct" : "leaky", ehex, rhex);

    BN_clear_free(e);
    BN_free(r);
    BN_free(b);
    BN_free(m);
    BN_MONT_CTX_free(mont);
    BN_CTX_free(bnctx);
    return 0;
}
