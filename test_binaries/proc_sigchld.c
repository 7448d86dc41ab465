/* SIGCHLD interrupts a parent that computes (no system call while it spins); process groups
 * and sessions as a shell sets them up for a job. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t chld, from, usr1;
static void on_usr1(int s) { (void)s; usr1++; }
static void on_chld(int s, siginfo_t *si, void *uc) {
    (void)s; (void)uc;
    chld++;
    from = si->si_pid;
}

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    struct sigaction sa = {0};
    sa.sa_sigaction = on_chld;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigaction(SIGCHLD, &sa, NULL);

    pid_t c = fork();
    if (c == 0) { usleep(20000); _exit(3); }
    unsigned long spins = 0;
    while (!chld) spins++;   /* only the child's end can stop this loop */
    int st;
    waitpid(c, &st, 0);
    printf("SIGCHLD while computing: %d from the child: %d status %d\n", chld, from == c,
           WEXITSTATUS(st));

    /* a job: the child leads its own group; both sides call setpgid, as shells do */
    int go[2];
    if (pipe(go)) return 1;
    c = fork();
    if (c == 0) {
        setpgid(0, 0);
        char x;
        if (read(go[0], &x, 1) != 1) _exit(9);
        printf("child: own group %d, group of the parent differs %d\n",
               getpgrp() == getpid(), getpgid(getppid()) != getpgrp());
        pid_t s = setsid();
        printf("child: setsid after leading a group: %d\n", s == -1);
        _exit(0);
    }
    setpgid(c, c);
    printf("parent: getpgid(child) is the child: %d\n", getpgid(c) == c);
    printf("parent: same session as the child: %d\n", getsid(c) == getsid(0));
    if (write(go[1], "g", 1) != 1) return 2;
    waitpid(c, &st, 0);
    printf("parent: setpgid of a stranger: %d\n", setpgid(1, 1) == -1);

    c = fork();
    if (c == 0) {
        pid_t s = setsid();
        printf("grandchild session: new %d leader %d\n", s == getpid(), getsid(0) == getpid());
        _exit(0);
    }
    waitpid(c, &st, 0);
    printf("chld signals: %d\n", chld);

    /* a job of two processes in their own group, ended by one kill of the group */
    pid_t a = fork();
    if (a == 0) { setpgid(0, 0); for (;;) usleep(100000); }
    setpgid(a, a);
    pid_t b = fork();
    if (b == 0) { setpgid(0, a); for (;;) usleep(100000); }
    setpgid(b, a);
    int s1, s2;
    printf("kill of the job's group: %d\n", kill(-a, SIGTERM));
    waitpid(a, &s1, 0);
    waitpid(b, &s2, 0);
    printf("both ended by SIGTERM: %d %d\n", WIFSIGNALED(s1) && WTERMSIG(s1) == SIGTERM,
           WIFSIGNALED(s2) && WTERMSIG(s2) == SIGTERM);

    /* signals from another process: a child that handles SIGUSR1 and ignores SIGTERM gets
     * the first SIGUSR1 while it computes, the second in sigsuspend (SIGUSR1 is blocked
     * until then, so the parent cannot send it too early) */
    int ready[2];
    char x;
    if (pipe(ready)) return 3;
    c = fork();
    if (c == 0) {
        signal(SIGUSR1, on_usr1);
        signal(SIGTERM, SIG_IGN);
        if (write(ready[1], "r", 1) != 1) _exit(9);
        while (!usr1) ;
        printf("child: SIGUSR1 while computing\n");
        sigset_t one, none;
        sigemptyset(&one); sigaddset(&one, SIGUSR1);
        sigemptyset(&none);
        sigprocmask(SIG_BLOCK, &one, NULL);
        if (write(ready[1], "s", 1) != 1) _exit(9);
        sigsuspend(&none);
        printf("child: sigsuspend ended by SIGUSR1: %d\n", usr1);
        _exit(4);
    }
    if (read(ready[0], &x, 1) != 1) return 4;
    kill(c, SIGUSR1);
    if (read(ready[0], &x, 1) != 1) return 5;
    kill(c, SIGTERM);
    kill(c, SIGUSR1);
    waitpid(c, &st, 0);
    printf("child ended: exited %d status %d\n", WIFEXITED(st), WEXITSTATUS(st));
    return 0;
}
