/* mac_verify: a MAC tag check with an early exit.  verify() stops at the
 * first byte where the presented tag differs from the expected one, so its
 * running time tells how many leading bytes are right.
 *
 * Usage: mac_verify TAG [MESSAGE]
 *   TAG      the secret presented tag: exactly 32 hexadecimal digits (16 bytes)
 *   MESSAGE  public message (default "leakdbt mac_verify message")
 *   The expected tag is a fixed-key 128-bit keyed hash (two FNV-1a-64
 *   lanes with an xorshift-multiply finaliser) of MESSAGE.  For the default
 *   message it is bb72509640bec05a5283b4422cda9c97.  The program never
 *   prints the expected tag, nor where the tags first differ: only
 *   "mac_verify: tag=<hex> verified" or "mac_verify: tag=<hex> rejected".
 *   Exit 0 either way; a malformed argument
 *   prints a usage line on stderr and exits 2.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "secret_io.h"

__attribute__((noipa)) int verify(const uint8_t *a, const uint8_t *b)
{
    for (int i = 0; i < 16; i++)
        if (a[i] != b[i])
            return 0;                   /* early exit on the first difference */
    return 1;
}

static uint64_t mix64(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
}

/* the expected tag: two keyed FNV-1a lanes over the message, finalised */
static void compute_tag(const char *msg, uint8_t tag[16])
{
    uint64_t h0 = 0xcbf29ce484222325ull ^ 0x6c65616b64627431ull;   /* fixed MAC key */
    uint64_t h1 = 0xcbf29ce484222325ull ^ 0x0123456789abcdefull;
    size_t n = strlen(msg);
    for (size_t i = 0; i < n; i++) {
        h0 = (h0 ^ (uint8_t)msg[i]) * 0x100000001b3ull;
        h1 = (h1 ^ (uint8_t)msg[n - 1 - i]) * 0x100000001b3ull;
    }
    h0 = mix64(h0 ^ n);
    h1 = mix64(h1 ^ h0);
    for (int i = 0; i < 8; i++) {
        tag[i] = (uint8_t)(h0 >> (56 - 8 * i));
        tag[8 + i] = (uint8_t)(h1 >> (56 - 8 * i));
    }
}

static void usage(void)
{
    fputs("usage: mac_verify TAG(32 hex digits) [MESSAGE]\n", stderr);
    exit(2);
}

int main(int argc, char **argv)
{
    static const char verdict[2][9] = {"rejected", "verified"};
    uint8_t tag[16], expected[16];
    char hex[33];
    if (argc < 2 || argc > 3 || parse_hex(argv[1], tag, 16) != 0)
        usage();
    compute_tag(argc > 2 ? argv[2] : "leakdbt mac_verify message", expected);
    int ok = verify(tag, expected);
    for (int i = 0; i < 16; i++)
        put_hex(hex + 2 * i, tag[i], 2);
    hex[32] = '\0';
    printf("mac_verify: tag=%s %s\n", hex, verdict[ok & 1]);
    return 0;
}
