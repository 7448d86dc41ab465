/* Threads that wait for each other in poll, epoll_wait, select and sigsuspend: the waits
 * leakdbt parks (the other threads run meanwhile).
 *
 *   poll     an event-loop thread polls an eventfd and a pipe (10 s timeout) that a worker
 *            writes after computing, ROUNDS times; main prints what the loop received
 *   epoll    the same with epoll_wait
 *   select   the same with select
 *   timeout  poll, ppoll and select with a 50 ms timeout on a pipe nobody writes while
 *            another thread computes: each returns 0, with revents and the sets all zero
 *            and no time left written back
 *   pause    a thread in sigsuspend is woken by pthread_kill from main, ROUNDS times
 *   pausehang a thread pauses and main joins it: nothing ends it (for leakdbt's --timeout)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/select.h>
#include <time.h>
#include <unistd.h>

#define ROUNDS 20

static int efd, pfd[2];
static volatile uint32_t sink;

static void compute(unsigned n)
{
    uint32_t h = 2166136261u;
    for (unsigned i = 0; i < n; i++)
        h = (h ^ i) * 16777619u;
    sink = h;
}

static void *worker(void *arg)
{
    (void)arg;
    for (int r = 1; r <= ROUNDS; r++) {
        compute(20000u * (unsigned)(r % 5 + 1));
        uint64_t v = (uint64_t)r;
        if (write(efd, &v, sizeof v) != sizeof v)
            return (void *)1;
        char c = (char)('a' + r % 26);
        if (write(pfd[1], &c, 1) != 1)
            return (void *)1;
    }
    return NULL;
}

struct got {
    uint64_t events; /* sum of the eventfd counts read */
    unsigned bytes;  /* bytes read from the pipe */
    uint32_t hash;   /* of those bytes */
    int bad;         /* a wait that returned what it should not */
};

static void take(int fd, struct got *g)
{
    if (fd == efd) {
        uint64_t v;
        if (read(efd, &v, sizeof v) == sizeof v)
            g->events += v;
        else
            g->bad++;
    } else {
        char buf[64];
        ssize_t n = read(pfd[0], buf, sizeof buf);
        if (n <= 0)
            g->bad++;
        for (ssize_t i = 0; i < n; i++)
            g->hash = (g->hash ^ (unsigned char)buf[i]) * 16777619u;
        g->bytes += n > 0 ? (unsigned)n : 0;
    }
}

static int done(const struct got *g)
{
    return g->events == (uint64_t)ROUNDS * (ROUNDS + 1) / 2 && g->bytes == ROUNDS;
}

static void *loop_poll(void *arg)
{
    struct got *g = arg;
    while (!done(g) && !g->bad) {
        struct pollfd p[3] = {{efd, POLLIN, 0}, {-1, POLLIN, 0}, {pfd[0], POLLIN, 0}};
        int n = poll(p, 3, 10000);
        int seen = 0;
        for (int i = 0; i < 3; i++)
            seen += p[i].revents != 0;
        if (n <= 0 || n != seen || p[1].revents)
            g->bad++;
        if (p[0].revents & POLLIN)
            take(efd, g);
        if (p[2].revents & POLLIN)
            take(pfd[0], g);
    }
    return NULL;
}

static void *loop_epoll(void *arg)
{
    struct got *g = arg;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event e = {.events = EPOLLIN, .data.u64 = 1};
    epoll_ctl(ep, EPOLL_CTL_ADD, efd, &e);
    e.data.u64 = 2;
    epoll_ctl(ep, EPOLL_CTL_ADD, pfd[0], &e);
    while (!done(g) && !g->bad) {
        struct epoll_event out[4];
        int n = epoll_wait(ep, out, 4, 10000);
        if (n <= 0)
            g->bad++;
        for (int i = 0; i < n; i++)
            take(out[i].data.u64 == 1 ? efd : pfd[0], g);
    }
    close(ep);
    return NULL;
}

static void *loop_select(void *arg)
{
    struct got *g = arg;
    while (!done(g) && !g->bad) {
        fd_set rd;
        FD_ZERO(&rd);
        FD_SET(efd, &rd);
        FD_SET(pfd[0], &rd);
        struct timeval tv = {10, 0};
        int top = (efd > pfd[0] ? efd : pfd[0]) + 1;
        int n = select(top, &rd, NULL, NULL, &tv);
        int seen = FD_ISSET(efd, &rd) + FD_ISSET(pfd[0], &rd);
        if (n <= 0 || n != seen || tv.tv_sec > 10)
            g->bad++;
        if (FD_ISSET(efd, &rd))
            take(efd, g);
        if (FD_ISSET(pfd[0], &rd))
            take(pfd[0], g);
    }
    return NULL;
}

static int event_loop(void *(*loop)(void *), const char *name)
{
    struct got g = {0, 0, 2166136261u, 0};
    pthread_t tl, tw;
    void *wres;
    efd = eventfd(0, EFD_CLOEXEC);
    if (efd < 0 || pipe(pfd) != 0)
        return 1;
    pthread_create(&tl, NULL, loop, &g);
    pthread_create(&tw, NULL, worker, NULL);
    pthread_join(tw, &wres);
    pthread_join(tl, NULL);
    printf("%s: rounds=%d events=%llu bytes=%u hash=%08x bad=%d worker=%s\n", name, ROUNDS,
           (unsigned long long)g.events, g.bytes, g.hash, g.bad, wres ? "failed" : "ok");
    return g.bad || wres || !done(&g);
}

static void *computer(void *arg)
{
    compute(*(unsigned *)arg);
    return NULL;
}

static int timeouts(void)
{
    unsigned work = 3000000;
    pthread_t t;
    if (pipe(pfd) != 0)
        return 1;
    pthread_create(&t, NULL, computer, &work);

    struct pollfd p[2] = {{pfd[0], POLLIN, 0x7777}, {pfd[0], POLLIN | POLLPRI, 0x7777}};
    int n = poll(p, 2, 50);
    printf("poll: ret=%d revents=%d,%d\n", n, p[0].revents, p[1].revents);

    struct timespec ts = {0, 50 * 1000 * 1000};
    sigset_t none;
    sigemptyset(&none);
    p[0].revents = 0x7777;
    n = ppoll(p, 1, &ts, &none);
    printf("ppoll: ret=%d revents=%d left=%ld.%09ld\n", n, p[0].revents, (long)ts.tv_sec,
           ts.tv_nsec);

    fd_set rd;
    FD_ZERO(&rd);
    FD_SET(pfd[0], &rd);
    struct timeval tv = {0, 50000};
    n = select(pfd[0] + 1, &rd, NULL, NULL, &tv);
    printf("select: ret=%d set=%d left=%ld.%06ld\n", n, FD_ISSET(pfd[0], &rd),
           (long)tv.tv_sec, (long)tv.tv_usec);

    pthread_join(t, NULL);
    return 0;
}

static volatile sig_atomic_t handled;
static volatile int ready;

static void on_usr1(int sig)
{
    (void)sig;
    handled++;
}

static void *sleeper(void *arg)
{
    int *woken = arg;
    sigset_t usr1, old, empty;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigemptyset(&empty);
    pthread_sigmask(SIG_BLOCK, &usr1, &old);
    for (int r = 1; r <= ROUNDS; r++) {
        __atomic_store_n(&ready, r, __ATOMIC_SEQ_CST);
        while (handled < r) {
            if (sigsuspend(&empty) == -1 && errno == EINTR)
                (*woken)++;
        }
        compute(10000);
    }
    sigset_t now;
    pthread_sigmask(SIG_SETMASK, &old, &now);
    if (!sigismember(&now, SIGUSR1)) /* the mask was restored after each handler */
        *woken = -1;
    return NULL;
}

/* Runs `waiter` in a thread that waits ROUNDS times for SIGUSR1 (counting its wake-ups in
   *count, -1 when its mask was not restored) and sends it each round once it is ready. */
static int signalled_rounds(void *(*waiter)(void *), const char *mode, const char *counted)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    int count = 0;
    pthread_t t;
    pthread_create(&t, NULL, waiter, &count);
    for (int r = 1; r <= ROUNDS; r++) {
        while (__atomic_load_n(&ready, __ATOMIC_SEQ_CST) < r)
            sched_yield();
        compute(30000);
        pthread_kill(t, SIGUSR1);
    }
    pthread_join(t, NULL);
    printf("%s: rounds=%d handled=%d %s=%d\n", mode, ROUNDS, (int)handled, counted, count);
    return handled != ROUNDS || count != ROUNDS;
}

/* ppoll and epoll_pwait with SIGUSR1 let through by their temporary mask only: each round,
   pthread_kill ends the wait with EINTR, the handler runs, and the thread's own mask (with
   SIGUSR1 blocked) is back afterwards. */
static void *ppoller(void *arg)
{
    int *eintr = arg;
    sigset_t usr1, old, empty;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigemptyset(&empty);
    pthread_sigmask(SIG_BLOCK, &usr1, &old);
    int p[2];
    if (pipe(p) != 0)
        return NULL;
    struct pollfd pf = { .fd = p[0], .events = POLLIN };
    int ep = epoll_create1(0);
    struct epoll_event ev = { .events = EPOLLIN, .data.fd = p[0] }, got;
    epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &ev);
    for (int r = 1; r <= ROUNDS; r++) {
        __atomic_store_n(&ready, r, __ATOMIC_SEQ_CST);
        while (handled < r) {
            int rc = r & 1 ? ppoll(&pf, 1, NULL, &empty) : epoll_pwait(ep, &got, 1, -1, &empty);
            if (rc == -1 && errno == EINTR)
                (*eintr)++;
        }
    }
    sigset_t now;
    pthread_sigmask(SIG_SETMASK, &old, &now);
    if (!sigismember(&now, SIGUSR1))
        *eintr = -1;
    return NULL;
}

static void *pauser(void *arg)
{
    (void)arg;
    pause();
    return NULL;
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "poll";
    if (!strcmp(mode, "poll"))
        return event_loop(loop_poll, mode);
    if (!strcmp(mode, "epoll"))
        return event_loop(loop_epoll, mode);
    if (!strcmp(mode, "select"))
        return event_loop(loop_select, mode);
    if (!strcmp(mode, "timeout"))
        return timeouts();
    if (!strcmp(mode, "pause"))
        return signalled_rounds(sleeper, "pause", "woken");
    if (!strcmp(mode, "ppintr"))
        return signalled_rounds(ppoller, "ppintr", "eintr");
    if (!strcmp(mode, "pausehang")) {
        pthread_t t;
        pthread_create(&t, NULL, pauser, NULL);
        pthread_join(t, NULL);
        return 0;
    }
    fprintf(stderr, "usage: threads_poll poll|epoll|select|timeout|pause|ppintr|pausehang\n");
    return 2;
}
