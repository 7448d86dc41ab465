#include <stdint.h>
#include <stdio.h>
static const uint8_t NIBBLE[16] __attribute__((aligned(64))) =
    {3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3};
static const uint32_t WIDE[64] __attribute__((aligned(64))) = {
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24,
    25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46,
    47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64};
static const int FIRST[4] = {1, 2, 3, 4}, SECOND[4] = {5, 6, 7, 8};
static const int *const PTRS[2] __attribute__((aligned(16))) = {FIRST, SECOND};

__attribute__((noipa)) int nibble(const char *s) { return NIBBLE[(unsigned char)s[0] & 15]; }
__attribute__((noipa)) unsigned wide(const char *s) { return WIDE[(unsigned char)s[1] & 63]; }
__attribute__((noipa)) int odd(const char *s)
{
    if (NIBBLE[(unsigned char)s[2] & 15] & 1)  /* a branch on a value loaded at a secret index */
        puts("odd");
    return 0;
}
__attribute__((noipa)) int chase(const char *s)
{
    const int *p = PTRS[s[3] & 1];  /* a pointer from a secret-chosen slot */
    return p[2];
}
int main(int argc, char **argv)
{
    if (argc < 2) return 1;
    printf("%d %u %d %d\n", nibble(argv[1]), wide(argv[1]), odd(argv[1]), chase(argv[1]));
    return 0;
}
