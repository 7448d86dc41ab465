/* CPU-bound work split over threads, for bench/processes.py: `bench_threads THREADS TOTAL`
 * sums 0..TOTAL/THREADS-1 in each of THREADS pthread_create'd workers (THREADS = 0: the
 * whole sum in main, no thread created) and prints the grand total.  The loop is the one of
 * threads_sum.c (the asm barrier keeps gcc from a closed form), so the work per iteration
 * is the same in every configuration. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define MAX_THREADS 64

static uint64_t share;

static uint64_t sum(uint64_t n)
{
    uint64_t acc = 0;
    for (uint64_t i = 0; i < n; i++) {
        acc += i;
        __asm__ volatile("" : "+r"(acc));
    }
    return acc;
}

static void *work(void *out)
{
    *(uint64_t *)out = sum(share);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fputs("usage: bench_threads THREADS TOTAL\n", stderr);
        return 2;
    }
    long threads = strtol(argv[1], NULL, 0);
    uint64_t total = strtoull(argv[2], NULL, 0);
    if (threads < 0 || threads > MAX_THREADS) {
        fputs("bench_threads: THREADS must be 0 to 64\n", stderr);
        return 2;
    }
    uint64_t grand = 0;
    if (threads == 0) {
        grand = sum(total);
    } else {
        pthread_t t[MAX_THREADS];
        uint64_t part[MAX_THREADS];
        share = total / (uint64_t)threads;
        for (long i = 0; i < threads; i++)
            if (pthread_create(&t[i], NULL, work, &part[i]) != 0) {
                puts("pthread_create failed");
                return 1;
            }
        for (long i = 0; i < threads; i++) {
            pthread_join(t[i], NULL);
            grand += part[i];
        }
    }
    printf("%lu\n", (unsigned long)grand);
    return 0;
}
