/* tc_aes: libtomcrypt 1.18's AES (rijndael_ecb_encrypt, the portable C
 * implementation: libtomcrypt 1.18 has no AES-NI code) under a secret key.
 *
 * Usage: tc_aes KEY      KEY: 32 hex digits (AES-128 key)
 * Encrypts one public block and prints "tc_aes: ct=<32 hex>".  The rounds
 * index the 1 KiB tables TE0..TE3 (and Te4 in the last round) with bytes of
 * the key-mixed state: the T-table cache-timing leak. */
#include <tomcrypt.h>

#include "corpus_io.h"

int main(int argc, char **argv)
{
    static const unsigned char pt[16] = {0x32, 0x43, 0xf6, 0xa8, 0x88, 0x5a, 0x30, 0x8d,
                                         0x31, 0x31, 0x98, 0xa2, 0xe0, 0x37, 0x07, 0x34};
    uint8_t key[16], ct[16];
    char out[33];
    symmetric_key skey;
    if (argc != 2 || parse_hex(argv[1], key, sizeof key) != 0)
        corpus_usage("tc_aes KEY(32 hex digits)");
    if (rijndael_setup(key, 16, 0, &skey) != CRYPT_OK)
        return 1;
    rijndael_ecb_encrypt(pt, ct, &skey);
    hex_bytes(ct, 16, out);
    printf("tc_aes: ct=%s\n", out);
    return 0;
}
