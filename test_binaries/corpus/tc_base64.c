/* tc_base64: libtomcrypt 1.18's base64_decode of a secret (a key stored as
 * base64 text, as PEM and JSON key files store them).
 *
 * Usage: tc_base64 SECRET      SECRET: 48 hex digits (24 bytes)
 * The harness writes the 24 bytes as 32 base64 digits (branch-free,
 * corpus_io.h), decodes them with base64_decode and prints
 * "tc_base64: n=24 data=<48 hex>".  base64_decode looks each digit up in
 * map_base64 (a load indexed by the secret character) and branches on the
 * value it finds (255: invalid, 253: whitespace, 254: padding). */
#include <tomcrypt.h>

#include "corpus_io.h"

int main(int argc, char **argv)
{
    uint8_t secret[24], data[32];
    char text[33], out[49];
    unsigned long n = sizeof data;
    if (argc != 2 || parse_hex(argv[1], secret, sizeof secret) != 0)
        corpus_usage("tc_base64 SECRET(48 hex digits)");
    b64_encode(secret, sizeof secret, text);
    if (base64_decode((const unsigned char *)text, 32, data, &n) != CRYPT_OK || n != 24)
        return 1;
    hex_bytes(data, 24, out);
    printf("tc_base64: n=%lu data=%s\n", n, out);
    return 0;
}
