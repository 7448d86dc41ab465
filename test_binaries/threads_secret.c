/* threads_secret: tag_check's early-exit comparison, run in a worker thread (or, with
 * "inline" as second argument, in main) while other threads do public work, so that
 * `leakdbt check` can be compared between the threaded and the single-threaded program.
 *
 * Usage: threads_secret TAG [inline]
 *   TAG  the secret presented tag: exactly 32 hexadecimal digits (16 bytes); the expected
 *        tag is 00112233445566778899aabbccddeeff.
 *   Prints the public workers' total and "verified" or "rejected"; exits 0 or 1
 *   accordingly; a malformed argument prints a usage line on stderr and exits 2.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "secret_io.h"

static const uint8_t expected[16] = {
    0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77,
    0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff,
};
static uint8_t tag[16];

__attribute__((noipa)) int verify(const uint8_t *a, const uint8_t *b)
{
    for (int i = 0; i < 16; i++)
        if (a[i] != b[i])
            return 0;                   /* early exit on the first difference */
    return 1;
}

static void *checker(void *arg)
{
    (void)arg;
    return (void *)(intptr_t)verify(tag, expected);
}

static void *public_work(void *arg)
{
    uint64_t acc = (uintptr_t)arg;
    for (int i = 0; i < 50000; i++) {
        acc = acc * 6364136223846793005u + 1442695040888963407u;
        __asm__ volatile("" : "+r"(acc));
    }
    return (void *)(uintptr_t)(acc & 0xff);
}

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 3 || parse_hex(argv[1], tag, 16) != 0) {
        fputs("usage: threads_secret TAG(32 hex digits) [inline]\n", stderr);
        return 2;
    }
    pthread_t workers[2], check;
    void *ret;
    long total = 0;
    int ok;
    for (uintptr_t i = 0; i < 2; i++)
        pthread_create(&workers[i], NULL, public_work, (void *)(i + 1));
    if (argc == 3 && !strcmp(argv[2], "inline")) {
        ok = verify(tag, expected);
    } else {
        pthread_create(&check, NULL, checker, NULL);
        pthread_join(check, &ret);
        ok = (int)(intptr_t)ret;
    }
    for (int i = 0; i < 2; i++) {
        pthread_join(workers[i], &ret);
        total += (long)(intptr_t)ret;
    }
    printf("workers: %ld\n%s\n", total, ok ? "verified" : "rejected");
    return !ok;
}
