/* ttable_round: an AES-style T-table round.  The four tables T0..T3 (1 KiB
 * each: AES's SubBytes+MixColumns tables, generated at startup from the
 * S-box, which is itself computed in GF(2^8)) are global objects with
 * symbol sizes.  Each output column is
 *     y[c] = T0[x[c] & 0xff] ^ T1[(x[c+1] >> 8) & 0xff]
 *          ^ T2[(x[c+2] >> 16) & 0xff] ^ T3[x[c+3] >> 24] ^ rk[c]
 * with x = state ^ key, so every lookup index depends on the key.
 * ttable_round() computes the four columns table by table (one loop per
 * table), so each table is read in its own basic block: one contract region
 * per lookup block and table.
 *
 * Usage: ttable_round KEY [BLOCK]
 *   KEY    the secret 128-bit key: exactly 32 hexadecimal digits, read as
 *          four big-endian 32-bit words
 *   BLOCK  public input: exactly 32 hex digits (default
 *          00112233445566778899aabbccddeeff)
 *   Runs 10 rounds; the round key is updated with rotations and a round
 *   constant (no lookups).  Prints "ttable_round: key=<hex> in=<hex>
 *   out=<hex>" (the words, big-endian).  Exit 0; a malformed argument prints
 *   a usage line on stderr and exits 2.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "secret_io.h"

uint32_t T0[256], T1[256], T2[256], T3[256];

static uint8_t xtime(uint8_t a)
{
    return (uint8_t)(a << 1) ^ (a & 0x80 ? 0x1b : 0);
}

static uint32_t rotl32(uint32_t x, int n)
{
    return x << n | x >> (32 - n);
}

/* AES S-box by walking the multiplicative group with generator 3 (p) and
 * its inverse (q), then the T-tables: T0[i] = (2s, s, s, 3s) as little-endian
 * bytes, T1..T3 its byte rotations. */
static void make_tables(void)
{
    uint8_t sbox[256];
    uint8_t p = 1, q = 1;
    do {
        p = p ^ xtime(p);                              /* p *= 3 */
        q ^= (uint8_t)(q << 1);                        /* q /= 3 */
        q ^= (uint8_t)(q << 2);
        q ^= (uint8_t)(q << 4);
        if (q & 0x80)
            q ^= 0x09;
        uint8_t x = q ^ (uint8_t)(q << 1 | q >> 7) ^ (uint8_t)(q << 2 | q >> 6)
                      ^ (uint8_t)(q << 3 | q >> 5) ^ (uint8_t)(q << 4 | q >> 4);
        sbox[p] = x ^ 0x63;
    } while (p != 1);
    sbox[0] = 0x63;
    for (int i = 0; i < 256; i++) {
        uint8_t s = sbox[i], s2 = xtime(s), s3 = s2 ^ s;
        uint32_t t = (uint32_t)s2 | (uint32_t)s << 8 | (uint32_t)s << 16 | (uint32_t)s3 << 24;
        T0[i] = t;
        T1[i] = rotl32(t, 8);
        T2[i] = rotl32(t, 16);
        T3[i] = rotl32(t, 24);
    }
}

__attribute__((noipa)) void ttable_round(uint32_t *y, const uint32_t *x, const uint32_t *rk)
{
#pragma GCC unroll 1
    for (int c = 0; c < 4; c++)
        y[c] = rk[c] ^ T0[x[c] & 0xff];
#pragma GCC unroll 1
    for (int c = 0; c < 4; c++)
        y[c] ^= T1[(x[(c + 1) & 3] >> 8) & 0xff];
#pragma GCC unroll 1
    for (int c = 0; c < 4; c++)
        y[c] ^= T2[(x[(c + 2) & 3] >> 16) & 0xff];
#pragma GCC unroll 1
    for (int c = 0; c < 4; c++)
        y[c] ^= T3[x[(c + 3) & 3] >> 24];
}

static void usage(void)
{
    fputs("usage: ttable_round KEY(32 hex digits) [BLOCK(32 hex digits)]\n", stderr);
    exit(2);
}

/* four big-endian 32-bit words from exactly 32 hex digits */
static void parse4(const char *s, uint32_t *w)
{
    uint8_t b[16];
    if (parse_hex(s, b, 16) != 0)
        usage();
    for (int i = 0; i < 4; i++)
        w[i] = (uint32_t)b[4 * i] << 24 | (uint32_t)b[4 * i + 1] << 16 |
               (uint32_t)b[4 * i + 2] << 8 | b[4 * i + 3];
}

static void hex4(char *out, const uint32_t *w)
{
    for (int i = 0; i < 4; i++)
        put_hex(out + 8 * i, w[i], 8);
    out[32] = '\0';
}

int main(int argc, char **argv)
{
    uint32_t key[4], state[4], x[4], rk[4];
    char hk[33], hin[33], hout[33];
    if (argc < 2 || argc > 3)
        usage();
    parse4(argv[1], key);
    parse4(argc > 2 ? argv[2] : "00112233445566778899aabbccddeeff", state);
    make_tables();
    hex4(hk, key);
    hex4(hin, state);
    memcpy(rk, key, sizeof rk);
    for (int r = 0; r < 10; r++) {
        for (int c = 0; c < 4; c++)
            x[c] = state[c] ^ rk[c];                   /* key-dependent indices */
        for (int c = 0; c < 4; c++)                    /* next round key */
            rk[c] = rotl32(rk[(c + 1) & 3], 8) ^ (0x01000193u * (uint32_t)(r + c + 1));
        ttable_round(state, x, rk);
    }
    hex4(hout, state);
    printf("ttable_round: key=%s in=%s out=%s\n", hk, hin, hout);
    return 0;
}
