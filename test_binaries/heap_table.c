/* heap_table: a block-cipher round whose S-box is built at run time in
 * malloc'ed memory, indexed by secret-dependent bytes:
 * state[i] = sbox[state[i] ^ key[i]].  The table has no ELF symbol: its bounds
 * are those of the allocation that holds it (docs/passes.md, "Heap tables").
 *
 * Usage: heap_table KEY [BLOCK [WHERE]]
 *   KEY    the secret 128-bit key: exactly 32 hexadecimal digits (16 bytes)
 *   BLOCK  public 16-byte input: exactly 32 hex digits
 *          (default 00112233445566778899aabbccddeeff)
 *   WHERE  where the S-box is built: heap (default: a malloc'ed 256-byte
 *          block), mmap (its own anonymous page), big (inside a 128 KiB
 *          malloc'ed block: larger than leakdbt sweeps) or stack (main's frame:
 *          no allocation holds it)
 *   Computes the AES S-box into that table, then runs 10
 *   rounds of: sub_bytes_heap(state, round key, sbox) (16 lookups), a public
 *   diffusion step and a round-key update (no lookups).  The state and the
 *   round key live in malloc'ed buffers too.  Prints
 *   "heap_table: key=<hex> in=<hex> out=<hex>".  Exit 0; a malformed argument
 *   prints a usage line on stderr and exits 2; out of memory exits 3.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "secret_io.h"

#define ROTL8(x, s) ((uint8_t)((x) << (s) | (x) >> (8 - (s))))

static void *must_alloc(size_t n)
{
    void *p = malloc(n);
    if (p == NULL)
        exit(3);
    return p;
}

/* The AES S-box, computed: p walks the multiplicative group of GF(2^8) by
 * powers of 3, q by powers of 3^-1 (so q = p^-1), then the affine map. */
static uint8_t *build_sbox(uint8_t *s)
{
    uint8_t p = 1, q = 1;
    do {
        p = (uint8_t)(p ^ (p << 1) ^ ((p & 0x80) ? 0x1b : 0));
        q ^= (uint8_t)(q << 1);
        q ^= (uint8_t)(q << 2);
        q ^= (uint8_t)(q << 4);
        if (q & 0x80)
            q ^= 0x09;
        s[p] = (uint8_t)(q ^ ROTL8(q, 1) ^ ROTL8(q, 2) ^ ROTL8(q, 3) ^ ROTL8(q, 4) ^ 0x63);
    } while (p != 1);
    s[0] = 0x63;
    return s;
}

__attribute__((noipa)) void sub_bytes_heap(uint8_t *state, const uint8_t *key,
                                           const uint8_t *sbox)
{
    for (int i = 0; i < 16; i++)
        state[i] = sbox[state[i] ^ key[i]];     /* secret index */
}

/* public diffusion: each byte is xored with the rotated next byte */
static void diffuse(uint8_t *s)
{
    uint8_t t[16];
    memcpy(t, s, 16);
    for (int i = 0; i < 16; i++) {
        uint8_t n = t[(i + 5) % 16];
        s[i] = t[i] ^ (uint8_t)(n << 1 | n >> 7);
    }
}

static void usage(void)
{
    fputs("usage: heap_table KEY(32 hex digits) [BLOCK(32 hex digits) [heap|mmap|big|stack]]\n",
          stderr);
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
    uint8_t *key = must_alloc(16), *state = must_alloc(16), *rk = must_alloc(16);
    char hk[33], hin[33], hout[33];
    uint8_t on_stack[256], *block = NULL, *sbox;
    const char *where = argc > 3 ? argv[3] : "heap";
    if (argc < 2 || argc > 4 || parse_hex(argv[1], key, 16) != 0 ||
        parse_hex(argc > 2 ? argv[2] : "00112233445566778899aabbccddeeff", state, 16) != 0)
        usage();
    if (strcmp(where, "heap") == 0) {
        sbox = block = must_alloc(256);
    } else if (strcmp(where, "mmap") == 0) {
        sbox = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (sbox == MAP_FAILED)
            exit(3);
    } else if (strcmp(where, "big") == 0) {
        block = must_alloc(1 << 17);
        sbox = block + 4096;
    } else if (strcmp(where, "stack") == 0) {
        sbox = on_stack;
    } else {
        usage();
    }
    build_sbox(sbox);
    hex16(hk, key);
    hex16(hin, state);
    memcpy(rk, key, 16);
    for (int r = 0; r < 10; r++) {
        sub_bytes_heap(state, rk, sbox);
        diffuse(state);
        uint8_t first = rk[0];                  /* round key: rotate bytes, add rcon */
        memmove(rk, rk + 1, 15);
        rk[15] = first ^ (uint8_t)(0x1b * (r + 1));
    }
    hex16(hout, state);
    printf("heap_table: key=%s in=%s out=%s\n", hk, hin, hout);
    free(block);
    free(rk);
    free(state);
    free(key);
    return 0;
}
