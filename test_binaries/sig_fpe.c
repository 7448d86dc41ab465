/* sig_fpe: SIGFPE, SIGILL and SIGTRAP caught by handlers.
 *
 * Usage: sig_fpe
 *   Divides by zero three times (each caught, siglongjmp out), executes ud2 (SIGILL) and
 *   int3 (SIGTRAP; the handler returns and the program goes on).  Exit status 0.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

static sigjmp_buf env;
static volatile int caught;

__attribute__((noipa)) int divide(int a, int b)
{
    volatile int va = a, vb = b;
    return va / vb;
}

static void on_signal(int sig, siginfo_t *si, void *uc)
{
    (void)uc;
    caught++;
    printf("caught %s code %d\n", sig == SIGFPE ? "SIGFPE" : sig == SIGILL ? "SIGILL"
           : "SIGTRAP", si->si_code);
    if (sig != SIGTRAP)
        siglongjmp(env, 1);
}

int main(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_signal;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGFPE, &sa, NULL);
    sigaction(SIGILL, &sa, NULL);
    sigaction(SIGTRAP, &sa, NULL);
    for (volatile int i = 0; i < 3; i++)
        if (sigsetjmp(env, 1) == 0)
            printf("quotient %d\n", divide(7, 0));
    printf("after divisions: %d\n", divide(8, 2));
    if (sigsetjmp(env, 1) == 0)
        __asm__ volatile("ud2");
    __asm__ volatile("int3");
    printf("caught %d\n", caught);
    return 0;
}
