/* checksum_self: reads its own machine code as data.  A translator must let
 * the guest see its original code bytes (not patched or translated ones).
 *
 * Usage: checksum_self
 *   Prints FNV-1a-64 checksums of 256 bytes at &main and of 64 bytes at
 *   &fnv1a (bytes only, never addresses, so PIE runs agree).  Deterministic
 *   across runs of the same binary; differs between builds.  Exit 0.
 */
#include <stdint.h>
#include <stdio.h>

__attribute__((noipa)) uint64_t fnv1a(const volatile unsigned char *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3ull;
    return h;
}

int main(void)
{
    /* volatile reads: the bytes really come from the code pages */
    const volatile unsigned char *m = (const volatile unsigned char *)(uintptr_t)&main;
    const volatile unsigned char *f = (const volatile unsigned char *)(uintptr_t)&fnv1a;
    printf("main[0..256) fnv1a64 = %016llx\n", (unsigned long long)fnv1a(m, 256));
    printf("fnv1a[0..64) fnv1a64 = %016llx\n", (unsigned long long)fnv1a(f, 64));
    printf("first bytes of main: %02x %02x %02x %02x\n", m[0], m[1], m[2], m[3]);
    return 0;
}
