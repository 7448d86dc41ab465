/* multi_table: one basic block that indexes several tables (as DES rounds index
 * SP1..SP8 and AES rounds TE0..TE3), for leakdbt analyze's table bounds.
 *
 *   mix(x)   = T0[x & 0xff] ^ T1[x >> 8 & 0xff] ^ T2[x >> 16 & 0xff] ^ T3[x >> 24]
 *              one block, four 1 KiB tables (global uint32_t[256], filled at
 *              startup: all in the writable segment);
 *   cross(x) = T0[x & 0xff] ^ S[x >> 8 & 0xff]
 *              one block, two tables in different segments (S is const: .rodata).
 *
 * Usage: multi_table KEY      KEY: exactly 16 hex digits (two big-endian words)
 * Runs 8 rounds of  a = mix(a ^ k0) + cross(b ^ k1); b = rotl(b, 7) ^ a  from a public
 * start and prints "multi_table: a=<8 hex> b=<8 hex>".  Exit 0; a malformed argument
 * prints a usage line on stderr and exits 2. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "secret_io.h"

uint32_t T0[256], T1[256], T2[256], T3[256];

#define S1(i) (uint8_t)((i) * 167u + 13u + ((i) >> 5))
#define S4(i) S1(i), S1((i) + 1), S1((i) + 2), S1((i) + 3)
#define S16(i) S4(i), S4((i) + 4), S4((i) + 8), S4((i) + 12)
#define S64(i) S16(i), S16((i) + 16), S16((i) + 32), S16((i) + 48)
const uint8_t S[256] = {S64(0), S64(64), S64(128), S64(192)};

__attribute__((noipa)) uint32_t mix(uint32_t x)
{
    return T0[x & 0xff] ^ T1[x >> 8 & 0xff] ^ T2[x >> 16 & 0xff] ^ T3[x >> 24];
}

__attribute__((noipa)) uint32_t cross(uint32_t x)
{
    return T0[x & 0xff] ^ S[x >> 8 & 0xff];
}

static uint32_t rotl32(uint32_t x, int n)
{
    return x << n | x >> (32 - n);
}

int main(int argc, char **argv)
{
    uint8_t key[8];
    char out[17];
    if (argc != 2 || parse_hex(argv[1], key, sizeof key) != 0) {
        fputs("usage: multi_table KEY(16 hex digits)\n", stderr);
        return 2;
    }
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t t = i * 0x9e3779b1u ^ 0x5bd1e995u;
        T0[i] = t;
        T1[i] = rotl32(t, 8);
        T2[i] = rotl32(t, 16);
        T3[i] = rotl32(t, 24);
    }
    uint32_t k0 = (uint32_t)key[0] << 24 | key[1] << 16 | key[2] << 8 | key[3];
    uint32_t k1 = (uint32_t)key[4] << 24 | key[5] << 16 | key[6] << 8 | key[7];
    uint32_t a = 0x01234567u, b = 0x89abcdefu;
    for (int r = 0; r < 8; r++) {
        a = mix(a ^ k0) + cross(b ^ k1);
        b = rotl32(b, 7) ^ a;
    }
    put_hex(out, a, 8);
    put_hex(out + 8, b, 8);
    out[16] = '\0';
    printf("multi_table: a=%.8s b=%.8s\n", out, out + 8);
    return 0;
}
