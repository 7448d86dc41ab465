/* nettle_base64: Nettle 3.8's base64 decoder (nettle_base64_decode_update) on a
 * secret given as base64 text, as a key in a PEM-like file.
 *
 * Usage: nettle_base64 SECRET      SECRET: 48 hex digits (24 bytes)
 * The harness encodes the secret as 32 base64 digits without branches or
 * lookups (corpus_io.h), decodes them with Nettle and prints
 * "nettle_base64: n=24 data=<48 hex>".  base64_decode_single looks each
 * character up in its decode table (a load indexed by the secret character) and
 * branches on the value it finds (-1 invalid, -2 whitespace, -3 padding). */
#include <nettle/base64.h>

#include "corpus_io.h"

int main(int argc, char **argv)
{
    uint8_t key[24], data[24];
    char text[33], out[49];
    size_t n = sizeof data;
    struct base64_decode_ctx ctx;
    if (argc != 2 || parse_hex(argv[1], key, 24) != 0)
        corpus_usage("nettle_base64 SECRET(48 hex digits)");
    b64_encode(key, 24, text);
    base64_decode_init(&ctx);
    if (!base64_decode_update(&ctx, &n, data, 32, text) || !base64_decode_final(&ctx)
        || n != 24)
        corpus_usage("nettle_base64 SECRET(48 hex digits)");
    hex_bytes(data, 24, out);
    printf("nettle_base64: n=%zu data=%s\n", n, out);
    return 0;
}
