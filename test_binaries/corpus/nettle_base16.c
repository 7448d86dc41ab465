/* nettle_base16: Nettle 3.8's hex decoder (nettle_base16_decode_update) on a
 * secret given in hex, as a key on a command line or in a configuration file.
 *
 * Usage: nettle_base16 SECRET      SECRET: 32 hex digits (16 bytes)
 * The argument goes to the decoder unparsed (only its length, which is public,
 * is checked first); prints "nettle_base16: n=16 data=<32 hex>".
 * base16_decode_single looks each character up in hex_decode_table (a load
 * indexed by the secret character) and branches on the digit it finds (-1
 * invalid, -2 whitespace) and on whether a half byte is pending. */
#include <string.h>

#include <nettle/base16.h>

#include "corpus_io.h"

int main(int argc, char **argv)
{
    uint8_t data[16];
    char out[33];
    size_t n = sizeof data;
    struct base16_decode_ctx ctx;
    if (argc != 2 || strlen(argv[1]) != 32)
        corpus_usage("nettle_base16 SECRET(32 hex digits)");
    base16_decode_init(&ctx);
    if (!base16_decode_update(&ctx, &n, data, 32, argv[1]) || !base16_decode_final(&ctx)
        || n != 16)
        corpus_usage("nettle_base16 SECRET(32 hex digits)");
    hex_bytes(data, 16, out);
    printf("nettle_base16: n=%zu data=%s\n", n, out);
    return 0;
}
