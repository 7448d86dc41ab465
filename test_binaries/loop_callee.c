/* loop_callee: a fold over a secret 64-bit key whose secret arm calls a function
 * with a loop.  For each key bit, from the top, r is rotated and salted (public
 * work); when the bit is set, r = scramble(r, 5): scramble runs a counted loop
 * (do ... while (--n), n = 5 set by the caller before the call) reading and
 * storing module data.  The shape of a secret-dependent call to a routine with
 * an inner loop (a block cipher round function, a reduction step).
 *
 * Usage: loop_callee KEY
 *   KEY  the secret: exactly 16 hexadecimal digits (8 bytes, big-endian)
 *   Folds 3 fixed public seeds and prints
 *   "loop_callee: r=<hex>,<hex>,<hex> last=<hex>".  Exit 0; a malformed
 *   argument prints a usage line on stderr and exits 2.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "secret_io.h"

uint64_t salt[4] = {0x243f6a8885a308d3ull, 0x13198a2e03707344ull, 0xa4093822299f31d0ull,
                    0x082efa98ec4e6c89ull};
uint64_t last_round;

__attribute__((noipa)) uint64_t scramble(uint64_t x, int n)
{
    do {
        x = x * 0x9e3779b97f4a7c15ull + (x >> 29) + salt[1];
        last_round = x;
    } while (--n);
    return x;
}

__attribute__((noipa)) uint64_t fold(uint64_t r, uint64_t key)
{
    for (int i = 63; i >= 0; i--) {
        r = (r << 1 | r >> 63) ^ salt[0];      /* public */
        if ((key >> i) & 1)                    /* secret key bit */
            r = scramble(r, 5);                /* a call to a function with a loop */
        r ^= r >> 17;                          /* public */
        r *= salt[2] | 1;
        r += r >> 31;
        r ^= salt[3] + (uint64_t)i;
    }
    return r;
}

static void usage(void)
{
    fputs("usage: loop_callee KEY(16 hex digits)\n", stderr);
    exit(2);
}

int main(int argc, char **argv)
{
    static const uint64_t seeds[3] = {1, 0x0123456789abcdefull, 0xfedcba9876543210ull};
    uint8_t kb[8];
    char line[128], *p = line;
    if (argc != 2 || parse_hex(argv[1], kb, 8) != 0)
        usage();
    uint64_t key = 0;
    for (int i = 0; i < 8; i++)
        key = key << 8 | kb[i];
    for (int i = 0; i < 3; i++) {
        p = put_hex(p, fold(seeds[i], key), 16);
        *p++ = ',';
    }
    p[-1] = '\0';
    char tail[20];
    *put_hex(tail, last_round, 16) = '\0';
    printf("loop_callee: r=%s last=%s\n", line, tail);
    return 0;
}
