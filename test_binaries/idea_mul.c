/* idea_mul: IDEA's multiplication modulo 2^16 + 1 (0 stands for 2^16),
 * written the textbook way with an early branch on a zero operand.  The
 * first operand of every mul() is a secret key word, so the a == 0 branch
 * depends on the key.
 *
 * Usage: idea_mul KEY [BLOCK]
 *   KEY    the secret 128-bit key: exactly 32 hexadecimal digits, read as
 *          8 big-endian 16-bit words k0..k7 (e.g. 0000... makes every
 *          key word zero and takes the a == 0 path everywhere)
 *   BLOCK  public 64-bit input: exactly 16 hex digits, four 16-bit words
 *          (default 0123456789abcdef)
 *   Runs 8 rounds of an IDEA-like round function (4 mul() per round with
 *   key words k[(4r+j) % 8] rotated by r, plus additions and xors) and
 *   prints "idea_mul: key=<hex> in=<hex> out=<hex>".  Exit 0; a malformed
 *   argument prints a usage line on stderr and exits 2.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "secret_io.h"

__attribute__((noipa)) uint16_t mul(uint16_t a, uint16_t b)
{
    if (a == 0)                         /* secret key word is 0 (= 2^16) */
        return 1 - b;
    if (b == 0)
        return 1 - a;
    uint32_t p = (uint32_t)a * b;
    uint16_t lo = p & 0xffff, hi = p >> 16;
    return lo - hi + (lo < hi);
}

static void usage(void)
{
    fputs("usage: idea_mul KEY(32 hex digits) [BLOCK(16 hex digits)]\n", stderr);
    exit(2);
}

/* n 16-bit big-endian words from exactly 4*n hex digits (n <= 8) */
static void parse_words(const char *s, uint16_t *w, int n)
{
    uint8_t b[16];
    if (parse_hex(s, b, 2 * (size_t)n) != 0)
        usage();
    for (int i = 0; i < n; i++)
        w[i] = (uint16_t)(b[2 * i] << 8 | b[2 * i + 1]);
}

int main(int argc, char **argv)
{
    uint16_t k[8], x[4] = {0x0123, 0x4567, 0x89ab, 0xcdef};
    char key[33], in[17], out[17];
    if (argc < 2 || argc > 3)
        usage();
    parse_words(argv[1], k, 8);
    if (argc > 2)
        parse_words(argv[2], x, 4);
    for (int i = 0; i < 8; i++)
        put_hex(key + 4 * i, k[i], 4);
    for (int i = 0; i < 4; i++)
        put_hex(in + 4 * i, x[i], 4);
    key[32] = in[16] = '\0';
    for (int r = 0; r < 8; r++) {
        uint16_t k0 = k[(4 * r) % 8], k1 = k[(4 * r + 1) % 8];
        uint16_t k2 = k[(4 * r + 2) % 8], k3 = k[(4 * r + 3) % 8];
        uint16_t a = mul(k0, x[0]);
        uint16_t b = (uint16_t)(x[1] + k1);
        uint16_t c = (uint16_t)(x[2] + k2);
        uint16_t d = mul(k3, x[3]);
        uint16_t t0 = mul((uint16_t)(k[(r + 4) % 8] ^ r), a ^ c);
        uint16_t t1 = mul((uint16_t)(k[(r + 5) % 8] + r), (uint16_t)((b ^ d) + t0));
        t0 = (uint16_t)(t0 + t1);
        x[0] = a ^ t1;
        x[1] = c ^ t1;
        x[2] = b ^ t0;
        x[3] = d ^ t0;
    }
    for (int i = 0; i < 4; i++)
        put_hex(out + 4 * i, x[i], 4);
    out[16] = '\0';
    printf("idea_mul: key=%s in=%s out=%s\n", key, in, out);
    return 0;
}
