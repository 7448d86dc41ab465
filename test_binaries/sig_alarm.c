/* sig_alarm: SIGALRM from setitimer while spinning, a POSIX timer into sigsuspend, alarm(2)
 * into pause(2), and a nanosleep cut short by a signal.
 *
 * Usage: sig_alarm
 *   Prints what arrived; exit status 0.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t alarms, timer_value, timer_code;

static void on_alarm(int sig)
{
    struct itimerval off = {{0, 0}, {0, 0}};
    (void)sig;
    if (++alarms == 3)
        setitimer(ITIMER_REAL, &off, NULL);    /* the third one stops the timer itself */
}

static void on_timer(int sig, siginfo_t *si, void *uc)
{
    (void)sig; (void)uc;
    timer_value = si->si_value.sival_int;
    timer_code = si->si_code;
}

int main(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_alarm;
    sigaction(SIGALRM, &sa, NULL);
    struct itimerval it = {{0, 20000}, {0, 20000}};
    setitimer(ITIMER_REAL, &it, NULL);
    volatile unsigned long spins = 0;
    while (alarms < 3)
        spins++;
    struct itimerval old;
    getitimer(ITIMER_REAL, &old);
    /* A fourth SIGALRM may already be pending when the third handler stops the timer (the
     * timer fired again while that handler ran: a loaded machine, natively too); POSIX
     * still delivers it.  So 3 or 4 is right, and prints as 3; anything else prints. */
    int seen = alarms == 4 ? 3 : (int)alarms;
    printf("alarms %d, timer now %ld us\n", seen, (long)old.it_interval.tv_usec);

    sa.sa_sigaction = on_timer;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGUSR2, &sa, NULL);
    sigset_t usr2, old_mask, wait_mask;
    sigemptyset(&usr2);
    sigaddset(&usr2, SIGUSR2);
    sigprocmask(SIG_BLOCK, &usr2, &old_mask);
    struct sigevent ev;
    memset(&ev, 0, sizeof ev);
    ev.sigev_notify = SIGEV_SIGNAL;
    ev.sigev_signo = SIGUSR2;
    ev.sigev_value.sival_int = 42;
    timer_t t;
    timer_create(CLOCK_MONOTONIC, &ev, &t);
    struct itimerspec ts = {{0, 0}, {0, 3000000}};
    timer_settime(t, 0, &ts, NULL);
    wait_mask = old_mask;
    int r = sigsuspend(&wait_mask);
    printf("sigsuspend %d errno %s, timer value %d code %d\n", r,
           errno == EINTR ? "EINTR" : "?", (int)timer_value, (int)timer_code);
    timer_delete(t);

    alarms = 0;
    sa.sa_handler = on_alarm;
    sa.sa_flags = 0;
    sigaction(SIGALRM, &sa, NULL);
    alarm(1);
    printf("alarm left %u\n", alarm(1));
    pause();
    printf("after pause: alarms %d\n", (int)alarms);

    struct itimerval once = {{0, 0}, {0, 300000}};
    setitimer(ITIMER_REAL, &once, NULL);
    struct timespec req = {5, 0}, rem = {0, 0};
    r = nanosleep(&req, &rem);
    printf("nanosleep %d %s, rem < 5 s: %d, alarms %d\n", r, errno == EINTR ? "EINTR" : "?",
           rem.tv_sec < 5, (int)alarms);
    return 0;
}
