/* loop_order: two loops that secret branches leave, run one after the other, for leakdbt
 * analyze's loop-bound counting.
 *
 * tail_hash() hashes the secret argument's characters up to its NUL: its exit depends on the
 * secret's bytes.  With that exit suppressed (as analyze's counting run does) it walks on
 * past the NUL, through the strings above argv on the stack, and faults at the top of the
 * stack: the run ends there.  match() compares the secret with a public 16-byte reference
 * and returns at the first difference; with that exit suppressed it runs 16 iterations.  A
 * counting run that suppresses both exits at once ends in tail_hash before match runs.
 *
 * Usage: loop_order KEY      KEY: exactly 32 hex digits
 * Prints "loop_order: hash=<8 hex digits> match=<0|1>".  Exit 0; a malformed argument
 * prints a usage line on stderr and exits 2. */
#include <stdint.h>
#include <stdio.h>

#include "secret_io.h"

static const uint8_t reference[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};

__attribute__((noipa)) uint32_t tail_hash(const char *s)
{
    uint32_t h = 2166136261u;
    for (size_t n = 0; s[n]; n++)
        h = (h ^ (uint8_t)s[n]) * 16777619u;
    return h;
}

__attribute__((noipa)) int match(const uint8_t *a, const uint8_t *b)
{
    for (size_t i = 0; i < 16; i++)
        if (a[i] != b[i])
            return 0;
    return 1;
}

int main(int argc, char **argv)
{
    uint8_t key[16];
    if (argc != 2 || parse_hex(argv[1], key, 16) != 0) {
        fputs("usage: loop_order KEY(32 hex digits)\n", stderr);
        return 2;
    }
    uint32_t h = tail_hash(argv[1]);
    printf("loop_order: hash=%08x match=%d\n", h, match(key, reference));
    return 0;
}
