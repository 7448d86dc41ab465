/* poll, ppoll, select, pselect, epoll, eventfd and socketpair between a parent and a forked
 * child; timeouts that pass; a timer's signal interrupting a wait with EINTR; dup3. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t alarms;
static void on_alarm(int s) { (void)s; alarms++; }

static void later(int fd, const char *msg) {  /* a child that writes after 30 ms */
    if (fork() == 0) {
        usleep(30000);
        if (write(fd, msg, strlen(msg)) < 0) _exit(1);
        _exit(0);
    }
}

static void reap(void) { int st; while (wait(&st) > 0) ; }

int main(void) {
    int p[2];
    char buf[64];
    setvbuf(stdout, NULL, _IONBF, 0);
    if (pipe2(p, O_CLOEXEC)) return 1;

    struct pollfd pf = {p[0], POLLIN, 0};
    printf("poll empty, 20 ms: %d\n", poll(&pf, 1, 20));
    later(p[1], "via poll");
    int n = poll(&pf, 1, -1);
    ssize_t got = read(p[0], buf, sizeof buf);
    printf("poll: %d revents=%#x read %.*s\n", n, pf.revents, (int)got, buf);
    reap();

    fd_set rd;
    later(p[1], "via select");
    FD_ZERO(&rd); FD_SET(p[0], &rd);
    struct timeval tv = {5, 0};
    n = select(p[0] + 1, &rd, NULL, NULL, &tv);
    got = read(p[0], buf, sizeof buf);
    printf("select: %d isset=%d read %.*s time left<5s: %d\n", n, FD_ISSET(p[0], &rd),
           (int)got, buf, tv.tv_sec < 5);
    reap();

    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 0x1122334455667788ull}, out[4];
    epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &ev);
    printf("epoll empty, 20 ms: %d\n", epoll_wait(ep, out, 4, 20));
    later(p[1], "via epoll");
    n = epoll_wait(ep, out, 4, -1);
    got = read(p[0], buf, sizeof buf);
    printf("epoll: %d events=%#x data=%#llx read %.*s\n", n, out[0].events,
           (unsigned long long)out[0].data.u64, (int)got, buf);
    reap();

    int efd = eventfd(0, EFD_CLOEXEC);
    if (fork() == 0) { uint64_t one = 5; usleep(20000); if (write(efd, &one, 8) != 8) _exit(1); _exit(0); }
    struct pollfd ef = {efd, POLLIN, 0};
    uint64_t v = 0;
    n = poll(&ef, 1, -1);
    got = read(efd, &v, 8);
    printf("eventfd: poll %d read %zd value %llu\n", n, got, (unsigned long long)v);
    reap();

    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv)) return 2;
    if (fork() == 0) {
        close(sv[0]);
        got = recv(sv[1], buf, sizeof buf, 0);
        for (ssize_t i = 0; i < got; i++) buf[i] ^= 0x20;
        send(sv[1], buf, got, 0);
        _exit(0);
    }
    close(sv[1]);
    send(sv[0], "socket", 6, 0);
    struct pollfd sp = {sv[0], POLLIN, 0};
    n = poll(&sp, 1, -1);
    got = recv(sv[0], buf, sizeof buf, 0);
    printf("socketpair: poll %d echo %.*s\n", n, (int)got, buf);
    reap();
    got = read(sv[0], buf, sizeof buf);
    printf("socketpair after the peer's exit: read %zd\n", got);

    struct sigaction sa = {0};
    sa.sa_handler = on_alarm;
    sigaction(SIGALRM, &sa, NULL);
    /* plain poll: the timer is far enough away to be armed before poll blocks */
    struct itimerval slow = {{0, 0}, {0, 200000}}, it = {{0, 0}, {0, 20000}};
    setitimer(ITIMER_REAL, &slow, NULL);
    n = poll(&pf, 1, -1);
    printf("poll interrupted: %d %s alarms=%d\n", n, n < 0 ? strerror(errno) : "-", alarms);
    /* race-free: SIGALRM is blocked until the call's own mask lets it through */
    sigset_t none, alrm;
    sigemptyset(&none);
    sigemptyset(&alrm); sigaddset(&alrm, SIGALRM);
    sigprocmask(SIG_BLOCK, &alrm, NULL);
    setitimer(ITIMER_REAL, &it, NULL);
    FD_ZERO(&rd); FD_SET(p[0], &rd);
    n = pselect(p[0] + 1, &rd, NULL, NULL, NULL, &none);
    printf("pselect interrupted: %d %s alarms=%d\n", n, n < 0 ? strerror(errno) : "-", alarms);
    setitimer(ITIMER_REAL, &it, NULL);
    n = epoll_pwait(ep, out, 4, -1, &none);
    printf("epoll_pwait interrupted: %d %s alarms=%d\n", n, n < 0 ? strerror(errno) : "-",
           alarms);
    sigprocmask(SIG_UNBLOCK, &alrm, NULL);

    /* ppoll with SIGALRM blocked by its mask: the timer cannot interrupt; the timeout ends it
     * and the alarm is delivered once the mask is back. */
    sigset_t block;
    sigemptyset(&block); sigaddset(&block, SIGALRM);
    setitimer(ITIMER_REAL, &it, NULL);
    struct timespec ts = {0, 60000000};
    n = ppoll(&pf, 1, &ts, &block);
    printf("ppoll with SIGALRM masked: %d alarms=%d\n", n, alarms);

    int file = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
    FD_ZERO(&rd); FD_SET(file, &rd);
    fd_set wr; FD_ZERO(&wr); FD_SET(p[1], &wr);
    tv.tv_sec = 0; tv.tv_usec = 0;
    n = select((file > p[1] ? file : p[1]) + 1, &rd, &wr, NULL, &tv);
    printf("select on a file and a pipe's write end: %d %d %d\n", n, FD_ISSET(file, &rd),
           FD_ISSET(p[1], &wr));
    struct pollfd bad[2] = {{-1, POLLIN, 0}, {77, POLLIN, 0}};
    n = poll(bad, 2, 1000);
    printf("poll negative and closed fd: %d %#x %#x\n", n, bad[0].revents, bad[1].revents);
    int d = dup3(p[0], 50, O_CLOEXEC);
    printf("dup3: %d cloexec=%d same-fd=%d\n", d, fcntl(50, F_GETFD), dup3(50, 50, 0));
    close(p[1]);
    pf.fd = 50;
    n = poll(&pf, 1, -1);
    printf("write end closed: poll %d revents=%#x\n", n, pf.revents);
    return 0;
}
