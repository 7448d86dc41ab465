/* sbox_round: a block-cipher round built on the AES S-box, indexed by
 * secret-dependent bytes: state[i] = SBOX[state[i] ^ key[i]].  Which cache
 * line (and which part of it) of SBOX each lookup touches depends on the key.
 *
 * Usage: sbox_round KEY [BLOCK]
 *   KEY    the secret 128-bit key: exactly 32 hexadecimal digits (16 bytes)
 *   BLOCK  public 16-byte input: exactly 32 hex digits
 *          (default 00112233445566778899aabbccddeeff)
 *   Runs 10 rounds of: sub_bytes_key(state, round key) (16 S-box lookups),
 *   a public ShiftRows-and-xor diffusion step, and a round-key update
 *   (byte rotation and a round constant, no lookups).  Prints
 *   "sbox_round: key=<hex> in=<hex> out=<hex>".  Exit 0; a malformed
 *   argument prints a usage line on stderr and exits 2.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* the AES S-box (FIPS-197, figure 7) */
static const uint8_t SBOX[256] = {
    0x63, 0x7c, 0x77, 0x7b, 0xf2, 0x6b, 0x6f, 0xc5, 0x30, 0x01, 0x67, 0x2b, 0xfe, 0xd7, 0xab, 0x76,
    0xca, 0x82, 0xc9, 0x7d, 0xfa, 0x59, 0x47, 0xf0, 0xad, 0xd4, 0xa2, 0xaf, 0x9c, 0xa4, 0x72, 0xc0,
    0xb7, 0xfd, 0x93, 0x26, 0x36, 0x3f, 0xf7, 0xcc, 0x34, 0xa5, 0xe5, 0xf1, 0x71, 0xd8, 0x31, 0x15,
    0x04, 0xc7, 0x23, 0xc3, 0x18, 0x96, 0x05, 0x9a, 0x07, 0x12, 0x80, 0xe2, 0xeb, 0x27, 0xb2, 0x75,
    0x09, 0x83, 0x2c, 0x1a, 0x1b, 0x6e, 0x5a, 0xa0, 0x52, 0x3b, 0xd6, 0xb3, 0x29, 0xe3, 0x2f, 0x84,
    0x53, 0xd1, 0x00, 0xed, 0x20, 0xfc, 0xb1, 0x5b, 0x6a, 0xcb, 0xbe, 0x39, 0x4a, 0x4c, 0x58, 0xcf,
    0xd0, 0xef, 0xaa, 0xfb, 0x43, 0x4d, 0x33, 0x85, 0x45, 0xf9, 0x02, 0x7f, 0x50, 0x3c, 0x9f, 0xa8,
    0x51, 0xa3, 0x40, 0x8f, 0x92, 0x9d, 0x38, 0xf5, 0xbc, 0xb6, 0xda, 0x21, 0x10, 0xff, 0xf3, 0xd2,
    0xcd, 0x0c, 0x13, 0xec, 0x5f, 0x97, 0x44, 0x17, 0xc4, 0xa7, 0x7e, 0x3d, 0x64, 0x5d, 0x19, 0x73,
    0x60, 0x81, 0x4f, 0xdc, 0x22, 0x2a, 0x90, 0x88, 0x46, 0xee, 0xb8, 0x14, 0xde, 0x5e, 0x0b, 0xdb,
    0xe0, 0x32, 0x3a, 0x0a, 0x49, 0x06, 0x24, 0x5c, 0xc2, 0xd3, 0xac, 0x62, 0x91, 0x95, 0xe4, 0x79,
    0xe7, 0xc8, 0x37, 0x6d, 0x8d, 0xd5, 0x4e, 0xa9, 0x6c, 0x56, 0xf4, 0xea, 0x65, 0x7a, 0xae, 0x08,
    0xba, 0x78, 0x25, 0x2e, 0x1c, 0xa6, 0xb4, 0xc6, 0xe8, 0xdd, 0x74, 0x1f, 0x4b, 0xbd, 0x8b, 0x8a,
    0x70, 0x3e, 0xb5, 0x66, 0x48, 0x03, 0xf6, 0x0e, 0x61, 0x35, 0x57, 0xb9, 0x86, 0xc1, 0x1d, 0x9e,
    0xe1, 0xf8, 0x98, 0x11, 0x69, 0xd9, 0x8e, 0x94, 0x9b, 0x1e, 0x87, 0xe9, 0xce, 0x55, 0x28, 0xdf,
    0x8c, 0xa1, 0x89, 0x0d, 0xbf, 0xe6, 0x42, 0x68, 0x41, 0x99, 0x2d, 0x0f, 0xb0, 0x54, 0xbb, 0x16,
};

__attribute__((noipa)) void sub_bytes_key(uint8_t *state, const uint8_t *key)
{
    for (int i = 0; i < 16; i++)
        state[i] = SBOX[state[i] ^ key[i]];     /* secret index */
}

/* public diffusion: AES ShiftRows (column-major state), then each byte is
 * xored with the rotated next byte of its column */
static void diffuse(uint8_t *s)
{
    uint8_t t[16];
    for (int c = 0; c < 4; c++)
        for (int r = 0; r < 4; r++)
            t[4 * c + r] = s[4 * ((c + r) % 4) + r];
    for (int c = 0; c < 4; c++)
        for (int r = 0; r < 4; r++) {
            uint8_t n = t[4 * c + (r + 1) % 4];
            s[4 * c + r] = t[4 * c + r] ^ (uint8_t)(n << 1 | n >> 7);
        }
}

/* Input and output of secret-dependent values take the same instructions
 * whatever the value: branch-free hex digits in both directions, checked
 * once at the end (only a malformed argument takes another path). */
static unsigned hexval(unsigned c, unsigned *bad)
{
    unsigned d = c - '0', l = (c | 0x20) - 'a';
    *bad |= (d >= 10) & (l >= 6);
    return ((c & 0xf) + 9 * (c >> 6)) & 0xf;
}

/* exactly 2*n hex digits -> n bytes; 0, or -1 if malformed */
static int parse_hex(const char *s, uint8_t *out, size_t n)
{
    unsigned bad = 0;
    if (strlen(s) != 2 * n)
        return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned hi = hexval((unsigned char)s[2 * i], &bad);
        unsigned lo = hexval((unsigned char)s[2 * i + 1], &bad);
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return bad ? -1 : 0;
}

/* the low 4*digits bits of v as lowercase hex at p; returns the end */
static char *put_hex(char *p, uint64_t v, int digits)
{
    for (int i = digits - 1; i >= 0; i--) {
        unsigned n = (unsigned)(v >> (4 * i)) & 0xf;
        *p++ = (char)('0' + n + (((9 - n) >> 8) & 39));
    }
    return p;
}

static void usage(void)
{
    fputs("usage: sbox_round KEY(32 hex digits) [BLOCK(32 hex digits)]\n", stderr);
    exit(2);
}

static void hex16(char *out, const uint8_t *b)
{
    for (int i = 0; i < 16; i++)
        put_hex(out + 2 * i, b[i], 2);
    out[32] = '\0';
}

int main(int argc, char **argv)
{
    uint8_t key[16], state[16], rk[16];
    char hk[33], hin[33], hout[33];
    if (argc < 2 || argc > 3 || parse_hex(argv[1], key, 16) != 0 ||
        parse_hex(argc > 2 ? argv[2] : "00112233445566778899aabbccddeeff", state, 16) != 0)
        usage();
    hex16(hk, key);
    hex16(hin, state);
    memcpy(rk, key, 16);
    for (int r = 0; r < 10; r++) {
        sub_bytes_key(state, rk);
        diffuse(state);
        uint8_t first = rk[0];                  /* round key: rotate bytes, add rcon */
        memmove(rk, rk + 1, 15);
        rk[15] = first ^ (uint8_t)(0x1b * (r + 1));
    }
    hex16(hout, state);
    printf("sbox_round: key=%s in=%s out=%s\n", hk, hin, hout);
    return 0;
}
