/* region_loop: a hot, tiny function -- the same few-instruction block with a
 * data-dependent branch entered a million times (translation-cache reuse,
 * block chaining, call/return).
 *
 * Usage: region_loop [COUNT]       COUNT calls, default 1000000
 *   Prints "region_loop: count=COUNT acc=<hex>".  Exit 0.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

__attribute__((noipa)) uint64_t tiny_region(uint64_t x)
{
    if (x & 1)
        return x * 3 + 1;
    return x >> 1;
}

int main(int argc, char **argv)
{
    long count = argc > 1 ? atol(argv[1]) : 1000000;
    uint64_t acc = 27;
    for (long i = 0; i < count; i++)
        acc = tiny_region(acc) + (uint64_t)i;
    printf("region_loop: count=%ld acc=%016llx\n", count, (unsigned long long)acc);
    return 0;
}
