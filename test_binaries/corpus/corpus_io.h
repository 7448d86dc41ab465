/* corpus_io.h: what the corpus harnesses share besides ../secret_io.h (constant-time hex
 * in and out): a usage exit and a branch-free base64 encoder, so that a secret reaches a
 * library's base64 decoder as text without the harness itself leaking it. */
#ifndef CORPUS_IO_H
#define CORPUS_IO_H
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "../secret_io.h"

static inline void corpus_usage(const char *line)
{
    fprintf(stderr, "usage: %s\n", line);
    exit(2);
}

/* the base64 digit of a 6-bit value v, without branches or table lookups */
static inline char b64_digit(unsigned v)
{
    unsigned c = v + 'A';
    c += ((25 - v) >> 8) & 6;       /* v >= 26: 'a' + v - 26 */
    c -= ((51 - v) >> 8) & 75;      /* v >= 52: '0' + v - 52 */
    c -= ((61 - v) >> 8) & 15;      /* v == 62: '+' */
    c += ((62 - v) >> 8) & 3;       /* v == 63: '/' */
    return (char)c;
}

/* n bytes (n a multiple of 3) as 4n/3 base64 digits at out, NUL-terminated */
static inline void b64_encode(const uint8_t *in, size_t n, char *out)
{
    for (size_t i = 0; i < n; i += 3) {
        uint32_t w = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        for (int j = 0; j < 4; j++)
            *out++ = b64_digit((w >> (18 - 6 * j)) & 63);
    }
    *out = '\0';
}

/* n bytes as 2n lowercase hex digits at out, NUL-terminated */
static inline void hex_bytes(const uint8_t *in, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        put_hex(out + 2 * i, in[i], 2);
    out[2 * n] = '\0';
}

#endif
