/* b64_decode: libb64 1.2's base64_decode_block of a secret.
 *
 * Usage: b64_decode SECRET      SECRET: 48 hex digits (24 bytes)
 * The harness writes the 24 bytes as 32 base64 digits (branch-free,
 * corpus_io.h), decodes them with base64_decode_block and prints
 * "b64_decode: n=24 data=<48 hex>".  base64_decode_value indexes its
 * `decoding` table with the secret character (value_in - 43) and
 * base64_decode_block branches on the result (< 0: skip the character). */
#include <b64/cdecode.h>

#include "corpus_io.h"

int main(int argc, char **argv)
{
    uint8_t secret[24];
    char text[33], data[32], out[49];
    base64_decodestate state;
    if (argc != 2 || parse_hex(argv[1], secret, sizeof secret) != 0)
        corpus_usage("b64_decode SECRET(48 hex digits)");
    b64_encode(secret, sizeof secret, text);
    base64_init_decodestate(&state);
    int n = base64_decode_block(text, 32, data, &state);
    if (n != 24)
        return 1;
    hex_bytes((const uint8_t *)data, 24, out);
    printf("b64_decode: n=%d data=%s\n", n, out);
    return 0;
}
