/* Thread synchronisation cases, one per argument, each with output that does not depend
 * on the interleaving:
 *   pc        two producers and two consumers through a bounded buffer (mutex, condvars)
 *   exit      a worker pthread_exit()s while others still run; main ends with pthread_exit
 *   timeout   pthread_cond_timedwait and sem_timedwait time out (futex waits with
 *             absolute timeouts), a pthread_mutex_timedlock too
 *   tls       __thread variables are per thread (FS base per thread), sched_yield, gettid
 *   pipe      a thread reads a pipe that main writes to, a little at a time
 *   cancel    pthread_cancel of a thread in a condvar wait (its cleanup handler runs) and
 *             of one spinning through pthread_testcancel (SIGCANCEL sent by tgkill)
 *   deadlock  main holds a mutex and joins a thread that wants it (never ends natively)
 *   badclone  a thread clone without CLONE_FS and CLONE_FILES, which leakdbt refuses
 *             (only for leakdbt: natively the child would run on the parent's stack)
 */
#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define SLOTS 8
#define ITEMS 5000

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t not_full = PTHREAD_COND_INITIALIZER;
static pthread_cond_t not_empty = PTHREAD_COND_INITIALIZER;
static int buffer[SLOTS], head, count, producers_left = 2;

static void *producer(void *arg)
{
    int base = (int)(intptr_t)arg;
    for (int i = 1; i <= ITEMS; i++) {
        pthread_mutex_lock(&lock);
        while (count == SLOTS)
            pthread_cond_wait(&not_full, &lock);
        buffer[(head + count++) % SLOTS] = base + i;
        pthread_cond_signal(&not_empty);
        pthread_mutex_unlock(&lock);
    }
    pthread_mutex_lock(&lock);
    producers_left--;
    pthread_cond_broadcast(&not_empty);
    pthread_mutex_unlock(&lock);
    return NULL;
}

static void *consumer(void *arg)
{
    long *sum = arg;
    for (;;) {
        pthread_mutex_lock(&lock);
        while (count == 0 && producers_left)
            pthread_cond_wait(&not_empty, &lock);
        if (count == 0) {
            pthread_mutex_unlock(&lock);
            return NULL;
        }
        int item = buffer[head];
        head = (head + 1) % SLOTS;
        count--;
        pthread_cond_signal(&not_full);
        pthread_mutex_unlock(&lock);
        *sum += item;
    }
}

static int producer_consumer(void)
{
    pthread_t p[2], c[2];
    long sums[2] = {0, 0};
    for (int i = 0; i < 2; i++) {
        pthread_create(&p[i], NULL, producer, (void *)(intptr_t)(i * 100000));
        pthread_create(&c[i], NULL, consumer, &sums[i]);
    }
    for (int i = 0; i < 2; i++) {
        pthread_join(p[i], NULL);
        pthread_join(c[i], NULL);
    }
    printf("consumed %ld (expected %ld)\n", sums[0] + sums[1],
           2L * ITEMS * (ITEMS + 1) / 2 + 100000L * ITEMS);
    return 0;
}

static volatile int spin_done, spinning;

static void *quitter(void *arg)
{
    (void)arg;
    pthread_exit((void *)7);
}

static void *spinner(void *arg)
{
    (void)arg;
    unsigned long n = 0;
    while (!spin_done) {
        n++;
        spinning = 1;  /* main ends the spin only after a round of it (natively, a loaded
                          host may not have run this thread at all before) */
    }
    return (void *)(intptr_t)(n > 0);
}

static int thread_exit(void)
{
    pthread_t q, s;
    void *rq, *rs;
    pthread_create(&s, NULL, spinner, NULL);
    pthread_create(&q, NULL, quitter, NULL);
    pthread_join(q, &rq);
    printf("quitter returned %ld while the spinner ran\n", (long)rq);
    while (!spinning)
        sched_yield();
    spin_done = 1;
    pthread_join(s, &rs);
    printf("spinner returned %ld\n", (long)rs);
    fflush(stdout);
    pthread_exit(NULL); /* the process ends with the last thread: status 0 */
}

static int timeouts(void)
{
    struct timespec ts;
    pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t c = PTHREAD_COND_INITIALIZER;
    sem_t sem;
    sem_init(&sem, 0, 0);
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += 20 * 1000 * 1000;
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    pthread_mutex_lock(&m);
    int r = pthread_cond_timedwait(&c, &m, &ts);
    printf("cond_timedwait: %s\n", strerror(r));
    r = sem_timedwait(&sem, &ts);
    printf("sem_timedwait: %d %s\n", r, strerror(errno));
    pthread_mutex_unlock(&m);
    return 0;
}

static __thread int mine;
static pthread_barrier_t barrier;

static void *tls_worker(void *arg)
{
    mine = (int)(intptr_t)arg;
    pthread_barrier_wait(&barrier);
    for (int i = 0; i < 100; i++)
        sched_yield();
    return (void *)(intptr_t)(mine * 2 + (syscall(SYS_gettid) != getpid()));
}

static int tls(void)
{
    pthread_t t[3];
    pthread_barrier_init(&barrier, NULL, 4);
    mine = 100;
    for (int i = 0; i < 3; i++)
        pthread_create(&t[i], NULL, tls_worker, (void *)(intptr_t)(i + 1));
    pthread_barrier_wait(&barrier);
    for (int i = 0; i < 3; i++) {
        void *r;
        pthread_join(t[i], &r);
        printf("worker %d: %ld\n", i, (long)r);
    }
    printf("main: %d, tid is pid: %d\n", mine, syscall(SYS_gettid) == getpid());
    return 0;
}

static void *want_lock(void *arg)
{
    pthread_mutex_lock(arg);
    return NULL;
}

static int deadlock(void)
{
    pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
    pthread_t t;
    pthread_mutex_lock(&m);
    pthread_create(&t, NULL, want_lock, &m);
    pthread_join(t, NULL);
    return 0;
}

static int pipefd[2];

static void *reader(void *arg)
{
    char buf[64];
    long total = 0;
    ssize_t n;
    (void)arg;
    while ((n = read(pipefd[0], buf, sizeof buf)) > 0)
        total += n;
    return (void *)total;
}

static int pipe_between_threads(void)
{
    pthread_t t;
    void *r;
    if (pipe(pipefd) != 0)
        return 1;
    pthread_create(&t, NULL, reader, NULL);
    for (int i = 0; i < 5; i++) {
        for (volatile int j = 0; j < 200000; j++)
            ; /* the reader finds the pipe empty */
        if (write(pipefd[1], "hello", 5) != 5)
            return 1;
    }
    close(pipefd[1]);
    pthread_join(t, &r);
    printf("reader got %ld bytes\n", (long)r);
    return 0;
}

static int cleaned;

static void cleanup(void *arg)
{
    cleaned = 1;
    pthread_mutex_unlock(arg);
}

static void *cond_waiter(void *arg)
{
    pthread_mutex_lock(&lock);
    pthread_cleanup_push(cleanup, &lock);
    for (;;)
        pthread_cond_wait(&not_empty, &lock);
    pthread_cleanup_pop(1);
    return arg;
}

static void *test_canceller(void *arg)
{
    for (;;)
        pthread_testcancel();
    return arg;
}

static int cancel(void)
{
    pthread_t t;
    void *r;
    pthread_create(&t, NULL, cond_waiter, NULL);
    for (int i = 0; i < 100; i++)
        sched_yield();
    pthread_cancel(t);
    pthread_join(t, &r);
    printf("waiter canceled: %d, cleanup ran: %d\n", r == PTHREAD_CANCELED, cleaned);
    pthread_create(&t, NULL, test_canceller, NULL);
    pthread_cancel(t);
    pthread_join(t, &r);
    printf("spinner canceled: %d\n", r == PTHREAD_CANCELED);
    return 0;
}

static int bad_clone(void)
{
    /* CLONE_VM | CLONE_SIGHAND | CLONE_THREAD, no stack */
    long r = syscall(SYS_clone, 0x10900L, 0L, 0L, 0L, 0L);
    printf("clone: %ld %s\n", r, strerror(errno));
    return 0;
}

int main(int argc, char **argv)
{
    const char *what = argc > 1 ? argv[1] : "";
    if (!strcmp(what, "pc"))
        return producer_consumer();
    if (!strcmp(what, "exit"))
        return thread_exit();
    if (!strcmp(what, "timeout"))
        return timeouts();
    if (!strcmp(what, "tls"))
        return tls();
    if (!strcmp(what, "pipe"))
        return pipe_between_threads();
    if (!strcmp(what, "cancel"))
        return cancel();
    if (!strcmp(what, "deadlock"))
        return deadlock();
    if (!strcmp(what, "badclone"))
        return bad_clone();
    fprintf(stderr, "usage: %s pc|exit|timeout|tls|pipe|cancel|deadlock|badclone\n", argv[0]);
    return 2;
}
