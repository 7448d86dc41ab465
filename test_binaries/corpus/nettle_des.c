/* nettle_des: Nettle 3.8's DES (nettle_des_encrypt) under a secret key.
 *
 * Usage: nettle_des KEY      KEY: 16 hex digits (the 8-byte DES key)
 * Encrypts two public blocks and prints "nettle_des: ct=<32 hex>".  The
 * rounds (DesSmallFipsEncrypt in desCode.h) index the des_keymap S-box
 * table with key-mixed bytes.  des_set_key's parity and weak-key result is
 * ignored (its checks run before the scoped function). */
#include <nettle/des.h>

#include "corpus_io.h"

int main(int argc, char **argv)
{
    static const uint8_t pt[16] = {0x4e, 0x6f, 0x77, 0x20, 0x69, 0x73, 0x20, 0x74,
                                   0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef};
    uint8_t key[8], ct[16];
    char out[33];
    struct des_ctx ctx;
    if (argc != 2 || parse_hex(argv[1], key, sizeof key) != 0)
        corpus_usage("nettle_des KEY(16 hex digits)");
    des_set_key(&ctx, key);
    des_encrypt(&ctx, sizeof pt, ct, pt);
    hex_bytes(ct, 16, out);
    printf("nettle_des: ct=%s\n", out);
    return 0;
}
