/* sig_altstack: handlers on an alternate signal stack (SA_ONSTACK), including the SIGSEGV of
 * a stack overflow.
 *
 * Usage: sig_altstack
 *   Prints where each handler ran; exit status 0.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ALT_SIZE (64 * 1024)
static char *alt;
static sigjmp_buf env;

static int on_alt(void *p) { return (char *)p >= alt && (char *)p < alt + ALT_SIZE; }

static void on_usr1(int sig)
{
    int local;
    stack_t now;
    sigaltstack(NULL, &now);
    printf("SIGUSR1 %d on altstack %d, SS_ONSTACK %d\n", sig, on_alt(&local),
           (now.ss_flags & SS_ONSTACK) != 0);
}

static void on_segv(int sig)
{
    int local;
    printf("SIGSEGV %d on altstack %d\n", sig, on_alt(&local));
    siglongjmp(env, 1);
}

__attribute__((noipa)) int recurse(int n)
{
    volatile char pad[4096];
    pad[0] = (char)n;
    if (n < 0)                                  /* never: the recursion ends in SIGSEGV */
        return 0;
    return recurse(n + 1) + pad[0];
}

int main(void)
{
    alt = malloc(ALT_SIZE);
    stack_t ss = {.ss_sp = alt, .ss_size = ALT_SIZE, .ss_flags = 0};
    sigaltstack(&ss, NULL);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sa.sa_flags = SA_ONSTACK;
    sigaction(SIGUSR1, &sa, NULL);
    raise(SIGUSR1);
    sa.sa_flags = 0;
    sigaction(SIGUSR1, &sa, NULL);
    raise(SIGUSR1);                             /* without SA_ONSTACK: on the main stack */
    sa.sa_handler = on_segv;
    sa.sa_flags = SA_ONSTACK;
    sigaction(SIGSEGV, &sa, NULL);
    if (sigsetjmp(env, 1) == 0)
        recurse(0);
    stack_t now;
    sigaltstack(NULL, &now);
    printf("after overflow: SS_ONSTACK %d, SS_DISABLE %d\n", (now.ss_flags & SS_ONSTACK) != 0,
           (now.ss_flags & SS_DISABLE) != 0);
    return 0;
}
