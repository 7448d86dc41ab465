/* nested_loop: nested loops over a secret hex key, the shapes of bignum parsing code.
 *
 * Usage: nested_loop KEY [LIMBS]
 *   KEY    the secret: exactly 64 hexadecimal digits, four 64-bit limbs of 16 digits
 *   LIMBS  public: how many limbs to look at, 1 to 4 (default 4)
 *   Prints "nested_loop: zeros=N match=M": N counts the leading '0' digits of each of
 *   the first LIMBS limbs (what a bignum parser skips before it sizes the number), M
 *   is 1 when those limbs are the expected key 00000000c0ffee00... (below), else 0.
 *   A malformed argument prints a usage line on stderr and exits 2.
 *
 * leading_zeros(): a public outer loop over the limbs; its inner loop skips a limb's
 * leading zeros, so its trip count depends on the secret.
 * same_limbs(): limb by limb, digit by digit; the first differing digit returns from
 * the inner loop, leaving both loops (a secret early exit).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "secret_io.h"

#define LIMB_DIGITS 16
#define MAX_LIMBS 4

static const char EXPECTED[] =
    "00000000c0ffee000000000000000042000000000000000000000000deadbeef";

__attribute__((noipa)) unsigned long leading_zeros(const char *hex, unsigned long limbs)
{
    unsigned long total = 0;
    for (unsigned long i = 0; i < limbs; i++) {
        const char *p = hex + LIMB_DIGITS * i;
        unsigned long j = 0;
        while (j < LIMB_DIGITS && p[j] == '0')
            j++;
        total += j;
    }
    return total;
}

__attribute__((noipa)) int same_limbs(const char *a, const char *b, unsigned long limbs)
{
    for (unsigned long i = 0; i < limbs; i++)
        for (unsigned long j = 0; j < LIMB_DIGITS; j++)
            if (a[LIMB_DIGITS * i + j] != b[LIMB_DIGITS * i + j])
                return 0;
    return 1;
}

int main(int argc, char **argv)
{
    unsigned char key[MAX_LIMBS * 8];
    unsigned long limbs = MAX_LIMBS;
    if (argc == 3) {
        char *end;
        limbs = strtoul(argv[2], &end, 10);
        if (*end || limbs < 1 || limbs > MAX_LIMBS)
            argc = 0;
    }
    if (argc < 2 || argc > 3 || parse_hex(argv[1], key, sizeof key) != 0) {
        fprintf(stderr, "usage: nested_loop KEY(64 hex digits) [LIMBS(1-4)]\n");
        return 2;
    }
    unsigned long n = leading_zeros(argv[1], limbs);
    int m = same_limbs(argv[1], EXPECTED, limbs);
    printf("nested_loop: zeros=%lu match=%d\n", n, m);
    return 0;
}
