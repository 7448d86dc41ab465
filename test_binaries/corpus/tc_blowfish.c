/* tc_blowfish: libtomcrypt 1.18's Blowfish (blowfish_ecb_encrypt) under a
 * secret key.
 *
 * Usage: tc_blowfish KEY      KEY: 32 hex digits (a 16-byte key)
 * Encrypts two public blocks and prints "tc_blowfish: ct=<16 hex>,<16 hex>".
 * The round function F indexes the four key-dependent S-boxes, which live in
 * the key schedule (here on main's stack, in a symmetric_key), with bytes of
 * the state: secret-indexed loads into tables that are no ELF data object. */
#include <tomcrypt.h>

#include "corpus_io.h"

int main(int argc, char **argv)
{
    static const unsigned char pt[2][8] = {{0x4e, 0x6f, 0x77, 0x20, 0x69, 0x73, 0x20, 0x74},
                                           {0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef}};
    uint8_t key[16], ct[8];
    char out[2][17];
    symmetric_key skey;
    if (argc != 2 || parse_hex(argv[1], key, sizeof key) != 0)
        corpus_usage("tc_blowfish KEY(32 hex digits)");
    if (blowfish_setup(key, 16, 0, &skey) != CRYPT_OK)
        return 1;
    for (int b = 0; b < 2; b++) {
        blowfish_ecb_encrypt(pt[b], ct, &skey);
        hex_bytes(ct, 8, out[b]);
    }
    printf("tc_blowfish: ct=%s,%s\n", out[0], out[1]);
    return 0;
}
