/* avx: VEX-encoded AVX instructions on ymm registers, executed
 * unconditionally (no CPUID check).  Natively on an AVX host it prints the
 * result; leakdbt must reject the program (it does not support AVX).
 *
 * Usage: avx
 *   Prints "avx: start" (flushed), then "avx: sum = 72 xor = 0" and exits 0.
 */
#include <stdio.h>

/* out[i] = a[i] + b[i] (vaddps ymm); also xors ymm1 with itself (vxorps)
 * and the xmm halves with vpxor (AVX1 VEX.128) so *zero gets 0. */
__attribute__((noipa)) void avx_kernel(const float *a, const float *b, float *out,
                                       unsigned *zero)
{
    __asm__ volatile(
        "vmovups (%[a]), %%ymm0\n\t"
        "vmovups (%[b]), %%ymm1\n\t"
        "vaddps  %%ymm1, %%ymm0, %%ymm0\n\t"
        "vmovups %%ymm0, (%[out])\n\t"
        "vxorps  %%ymm1, %%ymm1, %%ymm1\n\t"
        "vpxor   %%xmm0, %%xmm0, %%xmm2\n\t"
        "vpor    %%xmm2, %%xmm1, %%xmm2\n\t"
        "vmovd   %%xmm2, (%[zero])\n\t"
        "vzeroupper\n\t"
        :
        : [a] "r"(a), [b] "r"(b), [out] "r"(out), [zero] "r"(zero)
        : "xmm0", "xmm1", "xmm2", "memory");
}

int main(void)
{
    float a[8] = { 1, 2, 3, 4, 5, 6, 7, 8 };
    float b[8] = { 8, 7, 6, 5, 4, 3, 2, 1 };
    float out[8];
    unsigned zero = 12345;

    printf("avx: start\n");
    fflush(stdout);
    avx_kernel(a, b, out, &zero);
    float sum = 0;
    for (int i = 0; i < 8; i++)
        sum += out[i];
    printf("avx: sum = %d xor = %u\n", (int)sum, zero);
    return 0;
}
