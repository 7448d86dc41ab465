/* sig_segv: SIGSEGV handlers (siglongjmp out; fix the fault and return), then raise(3) of
 * SIGUSR1 into a handler.
 *
 * Usage: sig_segv
 *   Prints what each handler saw (si_code, whether si_addr is the faulting address) and
 *   "handled N" at the end; exit status 0.  A second fault after a handled one must be a
 *   fault again (not a double fault).
 */
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static sigjmp_buf env;
static volatile sig_atomic_t handled;
static char *volatile expected;
static char *page;

static void on_segv(int sig, siginfo_t *si, void *uc)
{
    (void)uc;
    handled++;
    printf("SIGSEGV %d code %d addr %s\n", sig, si->si_code,
           (char *)si->si_addr == expected ? "ok" : "wrong");
    siglongjmp(env, 1);
}

static void on_segv_fix(int sig, siginfo_t *si, void *uc)
{
    (void)sig; (void)uc;
    handled++;
    printf("fixing code %d addr %s\n", si->si_code,
           (char *)si->si_addr == expected ? "ok" : "wrong");
    mprotect(page, 4096, PROT_READ | PROT_WRITE);  /* the store is retried on return */
}

static void on_usr1(int sig)
{
    handled++;
    printf("SIGUSR1 %d\n", sig);
}

int main(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGSEGV, &sa, NULL);

    for (volatile int round = 0; round < 2; round++) {
        expected = (char *)16 + round * 4096;
        if (sigsetjmp(env, 1) == 0) {
            *expected = 1;                      /* SIGSEGV: unmapped */
            puts("not reached");
        }
    }
    page = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    expected = page + 100;
    if (sigsetjmp(env, 1) == 0) {
        *expected = 1;                          /* SIGSEGV: write to a read-only page */
        puts("not reached");
    }
    sa.sa_sigaction = on_segv_fix;
    sigaction(SIGSEGV, &sa, NULL);
    expected = page + 200;
    mprotect(page, 4096, PROT_READ);
    *expected = 42;
    printf("after fix: %d\n", page[200]);

    signal(SIGUSR1, on_usr1);
    raise(SIGUSR1);
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR1);
    sigprocmask(SIG_BLOCK, &block, &old);
    raise(SIGUSR1);
    sigset_t pending;
    sigpending(&pending);
    printf("pending while blocked: %d\n", sigismember(&pending, SIGUSR1));
    sigprocmask(SIG_SETMASK, &old, NULL);       /* delivered before this returns */
    printf("handled %d\n", handled);
    fflush(stdout);
    signal(SIGTERM, SIG_DFL);
    kill(getpid(), SIGTERM);                    /* default action: killed, status 143 */
    puts("not reached");
    return 1;
}
