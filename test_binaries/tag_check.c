/* tag_check: a MAC check whose only output is the verdict.  verify() stops
 * at the first byte where the presented tag differs from the expected one.
 * Hardened with a bounded loop, it runs all 16 iterations whatever the tag;
 * what still differs is the verdict itself, which the program prints.
 *
 * Usage: tag_check TAG
 *   TAG  the secret presented tag: exactly 32 hexadecimal digits (16 bytes).
 *   The expected tag is fixed: 00112233445566778899aabbccddeeff.
 *   Prints "tag_check: verified" or "tag_check: rejected", exits 0 or 1
 *   accordingly; a malformed argument prints a usage line on stderr and
 *   exits 2.
 */
#include <stdint.h>
#include <stdio.h>

#include "secret_io.h"

__attribute__((noipa)) int verify(const uint8_t *a, const uint8_t *b)
{
    for (int i = 0; i < 16; i++)
        if (a[i] != b[i])
            return 0;                   /* early exit on the first difference */
    return 1;
}

int main(int argc, char **argv)
{
    static const uint8_t expected[16] = {
        0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77,
        0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff,
    };
    uint8_t tag[16];
    if (argc != 2 || parse_hex(argv[1], tag, 16) != 0) {
        fputs("usage: tag_check TAG(32 hex digits)\n", stderr);
        return 2;
    }
    int ok = verify(tag, expected);
    puts(ok ? "tag_check: verified" : "tag_check: rejected");
    return !ok;
}
