/* shared_tail: a secret branch whose region gcc -O2 does not make single-entry.
 *
 * mix() is `if (pub == 0 || (key & 1)) { ... } else { ... }` with a public early
 * return inside the first arm.  gcc 12 -O2 compiles the public test `pub == 0` to a
 * jump straight into a tail of the first arm, and that tail is the block the arm's
 * inner (public) test also reaches: the secret branch's region (from `and esi, 1; je`
 * to the returns) holds a block that is also entered from outside it (a side entry into
 * a shared tail).  leakdbt forms such a region with its own duplicate of the block in
 * the hardened copy; the side entry keeps running the original (docs/translation.md).
 *
 * Usage: shared_tail KEY
 *   KEY  the secret: exactly 16 hexadecimal digits (8 bytes, big-endian, no 0x)
 *   Runs mix() 64 times on the key's bits (pub = i % 5, public) and prints
 *   "shared_tail: acc=<hex> tally=<hex>,<hex>".  Exit 0; a malformed argument prints
 *   a usage line on stderr and exits 2.
 */
#include <stdint.h>
#include <stdio.h>

#include "secret_io.h"

uint64_t tally[4];

__attribute__((noipa)) uint64_t mix(uint64_t acc, uint64_t key, uint64_t x, uint64_t pub)
{
    if (pub == 0 || (key & 1)) {        /* public || secret bit */
        acc = acc * 0x9e3779b97f4a7c15ull + x;
        if (pub & 1) {                  /* public: this path returns on its own */
            tally[2] += x;
            return acc;
        }
    } else {
        acc = (acc ^ x) >> 3;
    }
    tally[0] += acc;
    return acc + pub;
}

int main(int argc, char **argv)
{
    uint8_t kb[8];
    char line[64], *p = line;
    if (argc != 2 || parse_hex(argv[1], kb, 8) != 0) {
        fputs("usage: shared_tail KEY(16 hex digits)\n", stderr);
        return 2;
    }
    uint64_t key = 0;
    for (int i = 0; i < 8; i++)
        key = key << 8 | kb[i];
    uint64_t acc = 1;
    for (int i = 0; i < 64; i++)
        acc = mix(acc, key >> i, (uint64_t)i * 0x1234567u, (uint64_t)(i % 5));
    p = put_hex(p, acc, 16);
    *p++ = ' ';
    p = put_hex(p, tally[0], 16);
    *p++ = ',';
    p = put_hex(p, tally[2], 16);
    *p = '\0';
    printf("shared_tail: acc=%.16s tally=%s\n", line, line + 17);
    return 0;
}
