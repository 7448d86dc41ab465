/* entry_div: the secret is used two calls below the function a contract names.
 * main calls process(), which calls scale(), which divides by the secret; a
 * contract that protects the entry function `process` must see the division in
 * its callee.
 *
 * Usage: entry_div DIVISOR
 *   DIVISOR  the secret: exactly 8 hexadecimal digits (4 bytes, big-endian).
 *            A divisor of zero is replaced by 1.
 *   Prints "entry_div: <q>" with q, in 16 hex digits, the sum of two fixed
 *   public 64-bit dividends divided by the divisor.  Exit 0; a malformed argument
 *   prints a usage line on stderr and exits 2.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "secret_io.h"

__attribute__((noipa)) uint64_t scale(uint64_t x, uint64_t s)
{
    return x / s;
}

__attribute__((noipa)) uint64_t process(const uint8_t sb[4])
{
    uint64_t s = 0;
    for (int i = 0; i < 4; i++)
        s = s << 8 | sb[i];
    s |= (s == 0);                              /* 0 -> 1, without a branch */
    return scale(0x7edcba9876543210ull, s) + scale(0x7fffffffffffffffull, s);
}

int main(int argc, char **argv)
{
    uint8_t sb[4];
    char out[17];
    if (argc != 2 || parse_hex(argv[1], sb, 4) != 0) {
        fputs("usage: entry_div DIVISOR(8 hex digits)\n", stderr);
        return 2;
    }
    put_hex(out, process(sb), 16);
    out[16] = '\0';
    printf("entry_div: %s\n", out);
    return 0;
}
