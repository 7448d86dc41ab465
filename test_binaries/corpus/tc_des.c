/* tc_des: libtomcrypt 1.18's DES (des_ecb_encrypt) under a secret key.
 *
 * Usage: tc_des KEY      KEY: 16 hex digits (the 8-byte DES key)
 * Encrypts two public blocks and prints "tc_des: ct=<16 hex>,<16 hex>".
 * des_ecb_encrypt's rounds (desfunc) index the SP1..SP8 tables with bytes of
 * (block ^ round key): secret-indexed loads (libtomcrypt documents its
 * ciphers as table based, with no claim of constant time). */
#include <tomcrypt.h>

#include "corpus_io.h"

int main(int argc, char **argv)
{
    static const unsigned char pt[2][8] = {{0x4e, 0x6f, 0x77, 0x20, 0x69, 0x73, 0x20, 0x74},
                                           {0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef}};
    uint8_t key[8], ct[8];
    char out[2][17];
    symmetric_key skey;
    if (argc != 2 || parse_hex(argv[1], key, sizeof key) != 0)
        corpus_usage("tc_des KEY(16 hex digits)");
    if (des_setup(key, 8, 0, &skey) != CRYPT_OK)
        return 1;
    for (int b = 0; b < 2; b++) {
        des_ecb_encrypt(pt[b], ct, &skey);
        hex_bytes(ct, 8, out[b]);
    }
    printf("tc_des: ct=%s,%s\n", out[0], out[1]);
    return 0;
}
