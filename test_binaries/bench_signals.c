/* Signal delivery cost, for bench/processes.py: `bench_signals N SIG` sends itself SIG
 * with kill(getpid(), SIG) N times; a SIGUSR1 handler counts the deliveries.  SIG 0 makes
 * the same N kill calls with nothing delivered (kill's permission check only), so the
 * difference between the two runs is N deliveries: handler frame, handler, rt_sigreturn. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static volatile sig_atomic_t delivered;

static void handler(int sig)
{
    (void)sig;
    delivered++;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fputs("usage: bench_signals N SIG\n", stderr);
        return 2;
    }
    long n = strtol(argv[1], NULL, 0);
    int sig = atoi(argv[2]);
    struct sigaction sa = {0};
    sa.sa_handler = handler;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGUSR1, &sa, NULL) != 0) {
        perror("sigaction");
        return 1;
    }
    pid_t self = getpid();
    for (long i = 0; i < n; i++)
        if (kill(self, sig) != 0) {
            perror("kill");
            return 1;
        }
    printf("%ld kills, %ld delivered\n", n, (long)delivered);
    return 0;
}
