/* secret_io.h: reading and printing secret values in constant time, shared by
 * the hardening test programs (ct_modexp, idea_mul, mac_verify, sbox_round,
 * ttable_round, secret_div, fp_secret).
 *
 * Input and output of secret-dependent values take the same instructions
 * whatever the value: branch-free hex digits in both directions, checked
 * once at the end (only a malformed argument takes another path). */
#ifndef SECRET_IO_H
#define SECRET_IO_H
#include <stdint.h>
#include <string.h>

static inline unsigned hexval(unsigned c, unsigned *bad)
{
    unsigned d = c - '0', l = (c | 0x20) - 'a';
    *bad |= (d >= 10) & (l >= 6);
    return ((c & 0xf) + 9 * (c >> 6)) & 0xf;
}

/* exactly 2*n hex digits -> n bytes; 0, or -1 if malformed */
static inline int parse_hex(const char *s, uint8_t *out, size_t n)
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
static inline char *put_hex(char *p, uint64_t v, int digits)
{
    for (int i = digits - 1; i >= 0; i--) {
        unsigned n = (unsigned)(v >> (4 * i)) & 0xf;
        *p++ = (char)('0' + n + (((9 - n) >> 8) & 39));
    }
    return p;
}

#endif
