/* early_exit16: a 16-byte tag compared with an early-exit loop, without test
 * vectors in its contract: random tags differ from the expected one at the
 * first byte (255 times in 256), so only a directed trial reaches the loop's
 * second iteration.
 *
 * Usage: early_exit16 TAG
 *   TAG  the secret presented tag: exactly 32 hexadecimal digits (16 bytes).
 *   The expected tag is fixed: 5ea1c0de7b3f9e4d8a6c2b1f0e9d8c7b (no 00 or ff
 *   byte, so the all-zero and all-ones trials differ at the first byte too).
 *   Prints "early_exit16: equal" or "early_exit16: different", exit 0; a
 *   malformed argument prints a usage line on stderr and exits 2.
 */
#include <stdint.h>
#include <stdio.h>

#include "secret_io.h"

__attribute__((noipa)) int tag_equal(const uint8_t *a, const uint8_t *b)
{
    for (int i = 0; i < 16; i++)
        if (a[i] != b[i])
            return 0;                   /* early exit on the first difference */
    return 1;
}

int main(int argc, char **argv)
{
    static const uint8_t expected[16] = {
        0x5e, 0xa1, 0xc0, 0xde, 0x7b, 0x3f, 0x9e, 0x4d,
        0x8a, 0x6c, 0x2b, 0x1f, 0x0e, 0x9d, 0x8c, 0x7b,
    };
    uint8_t tag[16];
    if (argc != 2 || parse_hex(argv[1], tag, 16) != 0) {
        fputs("usage: early_exit16 TAG(32 hex digits)\n", stderr);
        return 2;
    }
    puts(tag_equal(tag, expected) ? "early_exit16: equal" : "early_exit16: different");
    return 0;
}
