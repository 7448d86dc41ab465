/* switch_loop: a region entered in phases separated by a system call -- the points where a
 * test switches the dispatcher between the fast and the hardened cache, deterministically.
 *
 * Usage: switch_loop PHASES CALLS
 *   Runs PHASES phases; each calls step() CALLS times and then makes one getppid system
 *   call.  Prints "switch_loop: phases=P calls=C acc=<hex>".  Exit 0.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

__attribute__((noipa)) uint64_t step(uint64_t x, uint64_t i)
{
    if ((x ^ i) & 1)
        return x * 5 + i;
    return (x >> 2) ^ i;
}

int main(int argc, char **argv)
{
    long phases = argc > 1 ? atol(argv[1]) : 10;
    long calls = argc > 2 ? atol(argv[2]) : 1000;
    uint64_t acc = 1;
    for (long p = 0; p < phases; p++) {
        for (long i = 0; i < calls; i++)
            acc = step(acc, (uint64_t)i);
        syscall(SYS_getppid);
    }
    printf("switch_loop: phases=%ld calls=%ld acc=%016llx\n", phases, calls,
           (unsigned long long)acc);
    return 0;
}
