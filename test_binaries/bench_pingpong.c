/* Blocking thread switches, for bench/processes.py: `bench_pingpong N` passes one byte
 * back and forth N times between main and one thread through two pipes; each round trip
 * is two reads that block until the other thread writes (two thread switches, four
 * system calls). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static int ping[2], pong[2];
static long rounds;

static void *echo(void *arg)
{
    (void)arg;
    char c;
    for (long i = 0; i < rounds; i++)
        if (read(ping[0], &c, 1) != 1 || write(pong[1], &c, 1) != 1)
            return (void *)1;
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fputs("usage: bench_pingpong N\n", stderr);
        return 2;
    }
    rounds = strtol(argv[1], NULL, 0);
    if (pipe(ping) != 0 || pipe(pong) != 0) {
        perror("pipe");
        return 1;
    }
    pthread_t t;
    if (pthread_create(&t, NULL, echo, NULL) != 0) {
        puts("pthread_create failed");
        return 1;
    }
    char c = 'x';
    long done = 0;
    for (long i = 0; i < rounds; i++, done++)
        if (write(ping[1], &c, 1) != 1 || read(pong[0], &c, 1) != 1)
            break;
    void *ret;
    pthread_join(t, &ret);
    printf("%ld round trips%s\n", done, ret ? ", echo failed" : "");
    return 0;
}
