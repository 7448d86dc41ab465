/* Threads that wait for each other through file descriptors and children: the blocking
 * read, write, readv, writev, wait4 and waitid that leakdbt makes cooperative.
 *
 *   pipe      a producer thread writes messages (and a few large writes that fill the pipe)
 *             that a consumer thread reads; main prints the count and a checksum
 *   socket    the same through a socketpair, with writev and readv
 *   send      the same through a socketpair, with send and recv (some with MSG_WAITALL);
 *             a receive with MSG_DONTWAIT or on an O_NONBLOCK socket still says EAGAIN
 *   wait      main waitpid()s a forked child that waits for data a worker thread sends it
 *             after computing; then the same with waitid
 *   block     one thread reads an empty pipe whose write end it holds
 *   recvblock one thread recv()s from a socketpair whose other end it holds
 *   fill      one thread writes more than a pipe holds into a pipe whose read end it holds
 *   waitblock one thread waits for a child that waits for it (ends once the parent dies)
 *             (block, recvblock, fill and waitblock never end: they are for leakdbt's --timeout)
 */
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#define MESSAGES 3000
#define MSG 50
#define BIG 100000
#define BIGS 4

static int fds[2];
static int use_vectors; /* 1: readv/writev; 2: send/recv */
static int again[2]; /* send mode: what the MSG_DONTWAIT and O_NONBLOCK receives said */

static uint32_t mix(uint32_t h, const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 16777619u;
    return h;
}

static int put(const void *data, size_t n)
{
    const char *p = data;
    while (n) { /* a blocking write writes everything; the loop is for safety natively */
        ssize_t w;
        if (use_vectors == 2) {
            w = send(fds[1], p, n, 0);
        } else if (use_vectors) {
            struct iovec v[2] = {{(void *)p, n / 2}, {(void *)(p + n / 2), n - n / 2}};
            w = writev(fds[1], v, 2);
        } else {
            w = write(fds[1], p, n);
        }
        if (w <= 0)
            return -1;
        if ((size_t)w != n)
            fprintf(stderr, "short write %zd of %zu\n", w, n);
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static void *producer(void *arg)
{
    char msg[MSG];
    static char big[BIG];
    (void)arg;
    for (int i = 0; i < MESSAGES; i++) {
        memset(msg, 'a' + i % 26, sizeof msg);
        snprintf(msg, sizeof msg, "message %d", i);
        if (put(msg, sizeof msg))
            return (void *)1;
        if (i % 1000 == 999) { /* a write larger than the pipe: it fills and waits */
            for (int j = 0; j < BIG; j++)
                big[j] = (char)(j * 7 + i);
            if (put(big, sizeof big))
                return (void *)1;
        }
    }
    close(fds[1]);
    return NULL;
}

static void *consumer(void *arg)
{
    static unsigned char buf[4096];
    long *total = arg;
    uint32_t h = 2166136261u;
    int early = 0; /* a MSG_WAITALL receive returned less, and more came after it */
    if (use_vectors == 2) { /* main lives too: a wait here would let others run */
        int spare[2], nb[2];
        char c;
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, spare)
            || socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, nb))
            return NULL;
        again[0] = recv(spare[0], &c, 1, MSG_DONTWAIT) < 0 && errno == EAGAIN;
        again[1] = recv(nb[0], &c, 1, 0) < 0 && errno == EAGAIN;
        close(spare[0]), close(spare[1]), close(nb[0]), close(nb[1]);
    }
    for (int i = 0;; i++) {
        ssize_t n;
        if (use_vectors == 2 && i % 5 == 4) {
            n = recv(fds[0], buf, sizeof buf, MSG_WAITALL); /* all 4096 until the end */
            if (n > 0 && n < (ssize_t)sizeof buf)
                early = 1;
        } else if (use_vectors == 2) {
            n = recv(fds[0], buf, 333, 0);
            if (n > 0 && early)
                fprintf(stderr, "MSG_WAITALL returned early\n");
        } else if (use_vectors) {
            struct iovec v[2] = {{buf, 100}, {buf + 100, sizeof buf - 100}};
            n = readv(fds[0], v, 2);
        } else {
            n = read(fds[0], buf, 333); /* not a message boundary: reads split them */
        }
        if (n <= 0)
            break;
        h = mix(h, buf, (size_t)n);
        total[0] += n;
    }
    total[1] = h;
    return NULL;
}

static int transfer(const char *what)
{
    pthread_t p, c;
    long total[2] = {0, 0};
    void *r;
    pthread_create(&c, NULL, consumer, total);
    pthread_create(&p, NULL, producer, NULL);
    pthread_join(p, &r);
    pthread_join(c, NULL);
    close(fds[0]);
    printf("%s: producer %s, %ld bytes, checksum %08lx\n", what, r ? "failed" : "done",
           total[0], (unsigned long)total[1]);
    if (use_vectors == 2)
        printf("MSG_DONTWAIT: %s, O_NONBLOCK: %s\n", again[0] ? "EAGAIN" : "other",
               again[1] ? "EAGAIN" : "other");
    return r != NULL;
}

static int to_child[2];
static volatile long work;

static void *worker(void *arg)
{
    long sum = 0;
    (void)arg;
    for (long i = 0; i < 300000; i++)
        sum += i % 7;
    work = sum;
    char byte = (char)(sum % 100);
    if (write(to_child[1], &byte, 1) != 1)
        return (void *)1;
    return NULL;
}

static int fork_reader(void)
{
    if (pipe(to_child))
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        char byte = 0;
        close(to_child[1]);
        if (read(to_child[0], &byte, 1) != 1)
            _exit(99);
        _exit(byte);
    }
    close(to_child[0]);
    return pid;
}

static int wait_for_child(void)
{
    pthread_t t;
    int status = 0;
    pid_t pid = fork_reader();
    pthread_create(&t, NULL, worker, NULL);
    pid_t got = waitpid(pid, &status, 0); /* the worker must run for the child to end */
    pthread_join(t, NULL);
    close(to_child[1]);
    printf("waitpid: %s, exit %d, work %ld\n", got == pid ? "our child" : "other",
           WIFEXITED(status) ? WEXITSTATUS(status) : -1, work);

    siginfo_t info;
    memset(&info, 0, sizeof info);
    work = 0;
    pid = fork_reader();
    pthread_create(&t, NULL, worker, NULL);
    int rc = waitid(P_ALL, 0, &info, WEXITED);
    pthread_join(t, NULL);
    close(to_child[1]);
    printf("waitid: rc %d, %s, code %d, status %d, work %ld\n", rc,
           info.si_pid == pid ? "our child" : "other", info.si_code, info.si_status, work);
    return 0;
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "pipe";
    if (!strcmp(mode, "pipe")) {
        if (pipe(fds))
            return 1;
        return transfer("pipe");
    }
    if (!strcmp(mode, "socket")) {
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds))
            return 1;
        use_vectors = 1;
        return transfer("socketpair");
    }
    if (!strcmp(mode, "send")) {
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds))
            return 1;
        use_vectors = 2;
        return transfer("send/recv");
    }
    if (!strcmp(mode, "wait"))
        return wait_for_child();
    if (!strcmp(mode, "block")) {
        char c;
        if (pipe(fds))
            return 1;
        return (int)read(fds[0], &c, 1);
    }
    if (!strcmp(mode, "recvblock")) {
        char c;
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds))
            return 1;
        return (int)recv(fds[0], &c, 1, 0);
    }
    if (!strcmp(mode, "fill")) {
        static char big[1 << 20];
        if (pipe(fds))
            return 1;
        return write(fds[1], big, sizeof big) < 0;
    }
    if (!strcmp(mode, "waitblock")) {
        int status;
        pid_t pid = fork_reader(); /* its read ends when our write end closes with us */
        return waitpid(pid, &status, 0) != pid;
    }
    fprintf(stderr, "usage: threads_pipe pipe|socket|send|wait|block|recvblock|fill|waitblock\n");
    return 2;
}
