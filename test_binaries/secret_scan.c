/* secret_scan: a loop whose only exit depends on the secret, for leakdbt analyze's loop
 * bounds.  scan() looks for a secret byte in a 64-byte ring (the index wraps, so it never
 * leaves the ring): with its exit suppressed, as analyze's bound-counting run does, it would
 * never end, so the bound must come out "unknown", in finite time.
 *
 * Usage: secret_scan KEY      KEY: exactly 2 hex digits
 * Prints "secret_scan: at=<position of ring byte KEY mod 64>".  Exit 0; a malformed
 * argument prints a usage line on stderr and exits 2. */
#include <stdint.h>
#include <stdio.h>

#include "secret_io.h"

uint8_t ring[64];

__attribute__((noipa)) unsigned scan(uint8_t want)
{
    unsigned i = 0;
    while (ring[i & 63] != want)
        i++;
    return i;
}

int main(int argc, char **argv)
{
    uint8_t key;
    if (argc != 2 || parse_hex(argv[1], &key, 1) != 0) {
        fputs("usage: secret_scan KEY(2 hex digits)\n", stderr);
        return 2;
    }
    for (unsigned i = 0; i < 64; i++)
        ring[i] = (uint8_t)(i * 37 + 11);
    printf("secret_scan: at=%u\n", scan(ring[key & 63]));
    return 0;
}
