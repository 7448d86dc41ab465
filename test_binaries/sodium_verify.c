/* sodium_verify: a 32-byte MAC tag check with libsodium's constant-time
 * crypto_verify_32 or with glibc's memcmp (libsodium from Debian's
 * libsodium-dev, 1.0.18).
 *
 * Usage: sodium_verify TAG MODE
 *   TAG   the secret presented tag: exactly 64 hexadecimal digits (32 bytes)
 *   MODE  "ct": crypto_verify_32(tag, expected), which ORs the XOR of all 32
 *         bytes together (two SSE2 16-byte loads per operand) and decides
 *         once at the end;
 *         "memcmp": memcmp(tag, expected, 32) == 0, glibc's IFUNC-selected
 *         memcmp (called through a volatile function pointer so that gcc can
 *         neither inline nor drop it), which returns at the first 16-byte
 *         vector (and byte) where the tags differ.
 *   The expected tag is HMAC-SHA-256 (crypto_auth_hmacsha256) of the public
 *   message "leakdbt sodium_verify message" under a fixed public key:
 *   1fb7fdc7344b99c94856d3b4b1a7c38802c5115e494a3ae7cd7da237fca10f59.
 *   The program calls sodium_init() first, never prints the expected tag
 *   (it is only in this comment), nor where the tags differ: only
 *   "sodium_verify: mode=MODE tag=<hex> verified" or "... rejected".
 *   Exit 0 either way; a malformed argument prints a usage line on stderr
 *   and exits 2, a sodium_init failure exits 1.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "secret_io.h"

/* a real call to the C library's memcmp, never a builtin */
static int (*volatile memcmp_fn)(const void *, const void *, size_t) = memcmp;

static const uint8_t MAC_KEY[crypto_auth_hmacsha256_KEYBYTES] = {
    0x6c, 0x65, 0x61, 0x6b, 0x64, 0x62, 0x74, 0x20, 0x73, 0x6f, 0x64, 0x69, 0x75, 0x6d, 0x20, 0x6b,
    0x65, 0x79, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d,
};
static const char MESSAGE[] = "leakdbt sodium_verify message";

static void usage(void)
{
    fputs("usage: sodium_verify TAG(64 hex digits) ct|memcmp\n", stderr);
    exit(2);
}

int main(int argc, char **argv)
{
    static const char verdict[2][9] = {"rejected", "verified"};
    uint8_t tag[32], expected[crypto_auth_hmacsha256_BYTES];
    char hex[65];
    int ct, ok;

    if (argc != 3 || parse_hex(argv[1], tag, 32) != 0)
        usage();
    if (strcmp(argv[2], "ct") == 0)
        ct = 1;
    else if (strcmp(argv[2], "memcmp") == 0)
        ct = 0;
    else
        usage();
    if (sodium_init() < 0) {
        fputs("sodium_verify: sodium_init failed\n", stderr);
        return 1;
    }
    crypto_auth_hmacsha256(expected, (const unsigned char *)MESSAGE, sizeof MESSAGE - 1, MAC_KEY);

    if (ct)
        ok = crypto_verify_32(tag, expected) == 0;
    else
        ok = memcmp_fn(tag, expected, 32) == 0;

    for (int i = 0; i < 32; i++)
        put_hex(hex + 2 * i, tag[i], 2);
    hex[64] = '\0';
    printf("sodium_verify: mode=%s tag=%s %s\n", ct ? "ct" : "memcmp", hex, verdict[ok & 1]);
    return 0;
}
