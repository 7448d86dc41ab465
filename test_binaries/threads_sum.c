/* Four pthread_create'd threads each sum 0..999999 and add their part to a shared total
 * under a mutex; main joins them and prints the total (1999998000000) and each worker's
 * return value.  The work is a real loop (the asm barrier keeps gcc from a closed form),
 * long enough to be preempted by leakdbt's scheduling quantum many times. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>

#define THREADS 4
#define N 1000000

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t total;

static void *work(void *arg)
{
    uint64_t acc = 0;
    for (uint64_t i = 0; i < N; i++) {
        acc += i;
        __asm__ volatile("" : "+r"(acc));
    }
    pthread_mutex_lock(&lock);
    total += acc;
    pthread_mutex_unlock(&lock);
    return (void *)((uintptr_t)arg * 10);
}

int main(void)
{
    pthread_t t[THREADS];
    for (uintptr_t i = 0; i < THREADS; i++)
        if (pthread_create(&t[i], NULL, work, (void *)i) != 0) {
            puts("pthread_create failed");
            return 1;
        }
    for (int i = 0; i < THREADS; i++) {
        void *ret;
        pthread_join(t[i], &ret);
        printf("thread %d returned %lu\n", i, (unsigned long)(uintptr_t)ret);
    }
    printf("%lu\n", (unsigned long)total);
    return 0;
}
